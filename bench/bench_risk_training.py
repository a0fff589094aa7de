"""Training cost per step of the risk models (seed 000) at §4.1's dimensions, each relative to the LSTM.

One step is what Lightning runs for a training batch: the model's ``training_step`` with its
optimiser steps and gradient clipping (the trainer's for automatically optimised models, the
model's own for the manually optimised GAN and augmentation baselines, which also generate
their synthetic patients inside the step). Each model is fitted for one epoch of ``--warmup``
+ ``--steps`` batches by a Lightning Trainer on the CPU; a callback times every batch after
the warm-up (wall clock and process CPU time), and the table shows medians.

Batches are synthetic with the shape of the paper's data: vocabulary 4,894 (MIMIC column of
Table 1), up to ``--visits`` visits per patient and ``--codes`` codes per visit, the numbers
of visits and codes drawn uniformly, padding after them as the DataModules produce.

The models: every backbone of Table 2 plain and with ``augment=diffusion`` (Figure 3),
MedDiffusion's ablation AS-3, the LSTM with each GAN member of Table 4 (± step-wise
attention) and the three augmentation baselines of Table 2. CPU time is reported beside wall
time because other jobs on a shared machine inflate wall time unevenly between models.
Usage: ``python bench/bench_risk_training.py [--threads 1] [--only lstm lstm+medgan_att]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
VOCAB_SIZE = 4894
TABLE2_BACKBONES = ("lstm", "lstm_plain", "dipole", "retain", "sand", "adacare", "lsan", "retainex", "timeline",
                    "tlstm", "hitanet", "medskim")
GAN_MEMBERS = ("ehrgan", "ehrgan_att", "gcgan", "gcgan_att", "actgan", "actgan_att", "medgan", "medgan_att")


# The augmentation baselines' steps after their warm-up epochs (the ones that generate).
NO_WARMUP = ["model.warmup_epochs=0"]


def variants() -> dict[str, tuple[str, str, list[str]]]:
    """label → (model, augment, overrides), the LSTM first (the reference)."""
    table = {}
    for backbone in TABLE2_BACKBONES:
        table[backbone] = (backbone, "none", [])
        table[f"{backbone}+diffusion"] = (backbone, "diffusion", [])
    table["meddiffusion_as3"] = ("meddiffusion_as3", "none", [])
    table.update({f"lstm+{member}": ("lstm", member, []) for member in GAN_MEMBERS})
    table["ehrgan_aug"] = ("ehrgan_aug", "none", NO_WARMUP)
    table["tabddpm_aug"] = ("tabddpm_aug", "none", NO_WARMUP)  # all 100 reverse steps (TabDDPM's)
    table["tabddpm_aug, 10 sampling steps"] = ("tabddpm_aug", "none", [*NO_WARMUP, "model.sampling_steps=10"])
    table["maskehr_aug"] = ("maskehr_aug", "none", [])
    return table


def synthetic_batch(batch_size: int, max_visits: int, max_codes: int, generator: torch.Generator) -> dict:
    n_visits = torch.randint(1, max_visits + 1, (batch_size,), generator=generator)
    visit_mask = torch.arange(max_visits)[None] < n_visits[:, None]
    n_codes = torch.randint(1, max_codes + 1, (batch_size, max_visits), generator=generator)
    code_mask = (torch.arange(max_codes)[None, None] < n_codes[..., None]) & visit_mask[..., None]
    codes = torch.randint(2, VOCAB_SIZE, (batch_size, max_visits, max_codes), generator=generator) * code_mask
    gaps = torch.rand(batch_size, max_visits, generator=generator) * 90 * visit_mask
    gaps[:, 0] = 0.0
    days = gaps.cumsum(dim=1)
    time_to_end = (days.gather(1, (n_visits - 1)[:, None]) - days) * visit_mask
    return {
        "codes": codes,
        "visit_mask": visit_mask,
        "n_visits": n_visits,
        "time_delta": gaps,
        "time_to_end": time_to_end,
        "age": torch.full((batch_size,), 60.0),
        "gender": torch.zeros(batch_size, dtype=torch.long),
        "subject_id": torch.arange(batch_size),
        "label": torch.randint(0, 2, (batch_size,), generator=generator),
    }


def build(model_name: str, augment: str, overrides: list[str]):
    vocabulary = ["[PAD]", "[UNK]"] + [f"DIAGNOSIS//ICD//9//{i:05d}" for i in range(2, VOCAB_SIZE)]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=[f"model={model_name}", f"augment={augment}", *overrides])
    return instantiate(cfg.model, vocabulary=vocabulary), cfg.trainer.gradient_clip_val


class StepTimer(pl.Callback):
    """Wall and process-CPU seconds of every training batch after the first ``warmup``."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._started = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.wall.append(time.perf_counter() - self._started[0])
            self.cpu.append(time.process_time() - self._started[1])


def seconds_per_step(model, gradient_clip_val, batches: list[dict], warmup: int) -> tuple[float, float]:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         gradient_clip_val=gradient_clip_val, callbacks=[timer])
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    validation = torch.utils.data.DataLoader(batches[:1], batch_size=None)  # the models' schedulers read val/f1
    trainer.fit(model, loader, validation)
    return statistics.median(timer.wall), statistics.median(timer.cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--visits", type=int, default=20)
    parser.add_argument("--codes", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", help="labels to time (default: all; lstm is always first)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(args.batch_size, args.visits, args.codes, generator)
               for _ in range(args.warmup + args.steps)]
    table = variants()
    labels = ["lstm", *[label for label in (args.only or table) if label != "lstm"]]

    print(f"batch {args.batch_size}, ≤{args.visits} visits × ≤{args.codes} codes, vocab {VOCAB_SIZE}, "
          f"torch threads {args.threads}; median of {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'model':<32} {'params':>10} {'wall ms/step':>13} {'× lstm':>7} {'CPU ms/step':>12} {'CPU × lstm':>11}")
    reference = None
    for label in labels:
        torch.manual_seed(0)
        model, clip = build(*table[label])
        wall, cpu = seconds_per_step(model, clip, batches, args.warmup)
        reference = reference or (wall, cpu)
        n_parameters = sum(p.numel() for p in model.parameters())
        print(f"{label:<32} {n_parameters:>10,} {1000 * wall:>13.1f} {wall / reference[0]:>7.2f} "
              f"{1000 * cpu:>12.1f} {cpu / reference[1]:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
