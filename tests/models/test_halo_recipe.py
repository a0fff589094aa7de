"""experiment=halo_mimic3 follows seed 002 F.4: 80 epochs, validation every 500 training
batches, best checkpoint on validation loss, and a task that fits HALO's context; an optional
early-stopping patience ends training after the best check without changing best.ckpt."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import torch
import yaml
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ehrlab.config import CONFIG_DIR
from ehrlab.models.generative.halo import HALO
from ehrlab.pipeline import build_trainer

VOCABULARY = ["[PAD]", "[UNK]", "DIAGNOSIS//ICD//9//401.9", "DIAGNOSIS//ICD//9//428.0"]


def read(group: str, name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / group / f"{name}.yaml").read_text())


def test_halo_mimic3_sets_the_f4_recipe_and_the_task_fills_the_context():
    experiment = read("experiment", "halo_mimic3")
    assert experiment["trainer"]["max_epochs"] == 80
    assert experiment["trainer"]["val_check_interval"] == 500
    assert experiment["trainer"]["check_val_every_n_epoch"] is None  # every 500 batches, across epochs
    model = read("model", "halo")["model"]
    halo = HALO(VOCABULARY, n_layer=1, n_embd=8, n_head=2, n_ctx=model["n_ctx"], n_positions=model["n_positions"],
                n_labels=model["n_labels"])
    assert experiment["task"]["max_visits"] == halo.max_visits == 47
    assert experiment["task"]["keep_visits"] == "first"
    # The GPT baseline reuses halo_mimic3's data but trains as F.5 does.
    gpt = read("experiment", "gpt_mimic3")
    assert gpt["trainer"] == {"max_epochs": 50, "val_check_interval": 1.0, "check_val_every_n_epoch": 1}


BATCH = {"codes": torch.tensor([[[2, 3], [2, 0]], [[3, 0], [0, 0]]]), "n_visits": torch.tensor([2, 1])}


def fit_scripted(model_class, trainer_config: dict, run_dir, train_batches: int, **model_options):
    """A one-layer HALO of ``model_class`` fitted by the runner's Trainer on repeats of BATCH."""
    torch.manual_seed(0)
    model = model_class(VOCABULARY, n_layer=1, n_embd=8, n_head=2, n_ctx=4, n_positions=4,
                        optimizer=functools.partial(torch.optim.Adam, lr=1e-3), **model_options)
    trainer = build_trainer(OmegaConf.create({"trainer": trainer_config}), model, None, run_dir)
    trainer.fit(model, train_dataloaders=DataLoader([BATCH] * train_batches, batch_size=None),
                val_dataloaders=DataLoader([BATCH], batch_size=None))
    return trainer, model


class ScriptedValidationHALO(HALO):
    """HALO whose validation loss at the k-th check is VAL_LOSSES[k] (training is real)."""

    VAL_LOSSES = [3.0, 1.0, 2.0]

    def on_validation_epoch_start(self):
        if not self.trainer.sanity_checking:
            self.checks = getattr(self, "checks", 0) + 1

    def validation_step(self, batch, batch_idx):
        if self.trainer.sanity_checking:
            return None
        loss = torch.tensor(self.VAL_LOSSES[self.checks - 1])
        self.log("val/loss", loss, batch_size=batch["codes"].shape[0])
        self.checked_at = [*getattr(self, "checked_at", []), self.trainer.global_step]
        return loss


def test_validation_every_n_batches_across_epochs_and_best_checkpoint_tracks_val_loss(tmp_path):
    trainer_config = {**read("trainer", "cpu"), **read("experiment", "halo_mimic3")["trainer"]}
    # Shrunk: validate every 3 batches over two epochs of 5 batches: after batches 3, 6 and 9.
    trainer_config |= {"val_check_interval": 3, "max_epochs": 2, "enable_progress_bar": False,
                       "log_every_n_steps": 1, "enable_model_summary": False}
    trainer, model = fit_scripted(ScriptedValidationHALO, trainer_config, tmp_path, train_batches=5)
    assert trainer.global_step == 10
    assert model.checked_at == [3, 6, 9]  # the second check falls in the second epoch
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == 6  # the check with the lowest val/loss, not the last one
    assert float(trainer.checkpoint_callback.best_model_score) == min(ScriptedValidationHALO.VAL_LOSSES)


class NeverImprovingHALO(ScriptedValidationHALO):
    """Lowest val/loss at the second check, never lower after it."""

    VAL_LOSSES = [3.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def ten_epochs(run_dir, **model_options) -> tuple[pl.Trainer, NeverImprovingHALO]:
    """Ten epochs of two batches, one validation check per epoch."""
    trainer_config = {**read("trainer", "cpu"), "max_epochs": 10, "enable_progress_bar": False,
                      "enable_model_summary": False, "log_every_n_steps": 1}
    return fit_scripted(NeverImprovingHALO, trainer_config, run_dir, train_batches=2, **model_options)


def test_early_stopping_patience_stops_after_that_many_checks_without_a_lower_val_loss(tmp_path):
    trainer, model = ten_epochs(tmp_path / "patient", early_stopping_patience=3)
    assert model.checked_at == [2, 4, 6, 8, 10]  # best at the second check, then three without gain
    best = torch.load(tmp_path / "patient" / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == 4
    # Without patience (HALO's recipe, the default) every epoch trains; best.ckpt is the same.
    trainer, model = ten_epochs(tmp_path / "default")
    assert trainer.global_step == 20 and len(model.checked_at) == 10
    assert torch.load(tmp_path / "default" / "checkpoints" / "best.ckpt", weights_only=False)["global_step"] == 4

