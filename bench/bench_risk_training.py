"""Training throughput of the risk models (seed 000) at §4.1's dimensions, each relative to the LSTM.

One training step = forward, loss, backward, gradient clipping (norm 1.0) and an Adam step,
exactly what ``RiskPredictor.training_step`` does under Lightning minus the trainer's own
overhead. Batches are synthetic with the shape of the paper's data: vocabulary 4,894 (MIMIC
column of Table 1), up to ``--visits`` visits per patient and ``--codes`` codes per visit.
The number of real visits per patient is drawn uniformly from 1..visits, codes per visit
from 1..codes (padding after them, as the DataModules produce).

Prints patients per second (median over ``--repeats`` timed blocks of ``--steps`` steps)
for each model and its step-time ratio to the LSTM, measured in the same run: every
backbone of Table 2 plain and with ``augment=diffusion`` (Figure 3), and MedDiffusion's
ablation AS-3. Usage: ``python bench/bench_risk_training.py [--threads 2] [--models lstm retain]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
VOCAB_SIZE = 4894
TABLE2_BACKBONES = ("lstm", "lstm_plain", "dipole", "retain", "sand", "adacare", "lsan", "retainex", "timeline",
                    "tlstm", "hitanet", "medskim")


def synthetic_batch(batch_size: int, max_visits: int, max_codes: int, generator: torch.Generator) -> dict:
    n_visits = torch.randint(1, max_visits + 1, (batch_size,), generator=generator)
    visit_mask = torch.arange(max_visits)[None] < n_visits[:, None]
    n_codes = torch.randint(1, max_codes + 1, (batch_size, max_visits), generator=generator)
    code_mask = (torch.arange(max_codes)[None, None] < n_codes[..., None]) & visit_mask[..., None]
    codes = torch.randint(1, VOCAB_SIZE, (batch_size, max_visits, max_codes), generator=generator) * code_mask
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
    vocabulary = ["[PAD]"] + [f"DIAGNOSIS//ICD//9//{i:05d}" for i in range(1, VOCAB_SIZE)]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=[f"model={model_name}", f"augment={augment}", *overrides])
    model = instantiate(cfg.model, vocabulary=vocabulary)
    model.train()
    return model


def seconds_per_step(model, batches: list[dict], steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds per training step, one value per timed block.

    CPU time is reported beside wall time because other jobs on a shared machine inflate
    wall time unevenly between models; CPU-time ratios stay comparable."""
    optimizer = model.hparams.optimizer(params=model.parameters())

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        model.training_loss(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for batch in batches[:2]:  # warm-up
        step(batch)
    wall, cpu = [], []
    for repeat in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(steps):
            step(batches[(repeat * steps + i) % len(batches)])
        wall.append((time.perf_counter() - wall_start) / steps)
        cpu.append((time.process_time() - cpu_start) / steps)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--visits", type=int, default=20)
    parser.add_argument("--codes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(TABLE2_BACKBONES),
                        help="risk backbones (conf/model names), the first is the reference (default: %(default)s)")
    parser.add_argument(
        "--unet", action="store_true", help="also time the authors'-size UNet denoiser (very slow on CPU: 1 × 2 steps)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(args.batch_size, args.visits, args.codes, generator) for _ in range(8)]

    variants = {}
    for name in args.models:
        variants[name] = (name, "none", [])
        variants[f"{name}+diffusion"] = (name, "diffusion", [])
    variants["meddiffusion AS-3 (λ_S = 0)"] = ("meddiffusion_as3", "none", [])
    unet_label = "meddiffusion (UNet1dDenoiser 128×(1,2,4,8))"
    if args.unet:
        variants[unet_label] = (
            "meddiffusion", "none",
            ["model.denoiser._target_=ehrlab.models.risk.denoiser.UNet1dDenoiser", "~model.denoiser.n_blocks"],
        )

    print(
        f"batch {args.batch_size}, ≤{args.visits} visits × ≤{args.codes} codes, vocab {VOCAB_SIZE}, "
        f"d_e = d_h = 256, torch threads {args.threads}; median of {args.repeats} × {args.steps} steps"
    )
    print(
        f"{'model':<32} {'params':>10} {'wall ms/step':>13} {'patients/s':>11} {'× lstm':>7} "
        f"{'CPU ms/step':>12} {'CPU × lstm':>11}"
    )
    lstm_wall = lstm_cpu = None
    for label, (name, augment, overrides) in variants.items():
        model = build(name, augment, overrides)
        steps, repeats = (2, 1) if label == unet_label else (args.steps, args.repeats)
        wall, cpu = (statistics.median(t) for t in seconds_per_step(model, batches, steps, repeats))
        lstm_wall, lstm_cpu = lstm_wall or wall, lstm_cpu or cpu
        n_parameters = sum(p.numel() for p in model.parameters())
        print(
            f"{label:<32} {n_parameters:>10,} {1000 * wall:>13.1f} {args.batch_size / wall:>11.1f} "
            f"{wall / lstm_wall:>7.2f} {1000 * cpu:>12.1f} {cpu / lstm_cpu:>11.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
