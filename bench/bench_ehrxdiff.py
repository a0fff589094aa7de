"""Benchmark EHRXDiff (seed 004 §3) on this machine: a training step of ``ehrxdiff_small`` (and
its w_null variant) at the configured batch, DDIM sampling images per second, and a training step
of the paper-size model (``ehrxdiff``, 256², 600 M trained parameters) at batch 1.

    python bench/bench_ehrxdiff.py                  # small, small_wnull, sampling, paper
    python bench/bench_ehrxdiff.py --skip-paper     # without the paper-size step (≈ 14 GB of memory)
    python bench/bench_ehrxdiff.py --threads 2
    python bench/bench_ehrxdiff.py --skip-paper --override model.table_context=mixed   # any config override
    python bench/bench_ehrxdiff.py --device cuda --precision bf16 --paper-batch 32 128   # on a GPU

The models are built from the project's configs (``model=ehrxdiff_small`` etc., composed as
``run.py`` would), with untrained parts. Batches have the default phantom's shapes: images of
the config's size, a number of events per pair drawn like the phantom's training pairs (mean
≈ 100, sd ≈ 48, 11 to 257), padded to the batch's longest list, 384-d (the packaged text
encoder). Each measurement runs in a child process so that its peak resident memory
(``resource.getrusage``) is its own. A training step is forward, backward, AdamW and the EMA
update; reported is the median of ``--steps`` steps of new pairs after one warm-up step (the
first epoch), and of the same steps again (later epochs, where ``cache_conditions`` reads the
frozen parts' outputs back; equal to the first for a model without it).

On a GPU (``--device cuda``) the clock is read after ``torch.cuda.synchronize()`` and the peak is
the GPU memory the process allocated (``torch.cuda.max_memory_allocated``); ``--precision bf16``
runs the step and the sampler under ``torch.autocast`` as ``trainer=gpu`` (``bf16-mixed``) does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

EVENT_DIM = 384
FINDINGS = [f"imagenome:finding {i}" for i in range(7)]


def model_config(name: str, overrides: list[str]):
    """conf/model/<name>.yaml composed with the rest of the config and `overrides`, as run.py would
    (the config folder: $EHRLAB_BENCH_CONFIG_DIR, else the project's conf/)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ehrlab.config import CONFIG_DIR, register_sweeps

    register_sweeps()
    with initialize_config_dir(config_dir=os.environ.get("EHRLAB_BENCH_CONFIG_DIR", str(CONFIG_DIR)),
                               version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", "data=synthetic_cxr", "task=cxr_forecast",
                                           "run_dir=/tmp/bench_ehrxdiff", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True), int(cfg.data.batch_size), int(cfg.data.image_size)


def build(name: str, overrides: list[str]):
    from hydra.utils import instantiate

    node, batch_size, image_size = model_config(name, overrides)
    model = instantiate(node, findings=FINDINGS, event_dim=EVENT_DIM, image_size=image_size, max_events=1024)
    return model, batch_size, image_size


def phantom_batch(size: int, image_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    n_events = (100 + 48 * torch.randn(size, generator=generator)).round().clamp(11, 257).long()
    width = int(n_events.max())
    mask = torch.arange(width) < n_events[:, None]
    return {"prev_image": torch.rand(size, 1, image_size, image_size, generator=generator),
            "target_image": torch.rand(size, 1, image_size, image_size, generator=generator),
            "events": torch.randn(size, width, EVENT_DIM, generator=generator) * mask.unsqueeze(-1),
            "event_mask": mask,
            "prev_labels": torch.zeros(size, len(FINDINGS)), "target_labels": torch.zeros(size, len(FINDINGS)),
            "age": torch.full((size,), 60.0), "sex": torch.zeros(size, dtype=torch.long),
            "pair_id": torch.arange(size), "subject_id": torch.arange(size)}


DEVICE = torch.device("cpu")
PRECISION = "32"


def peak_gib() -> float:
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated(DEVICE) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def clock() -> float:
    """Seconds, after the device has finished what was queued."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def autocast():
    if PRECISION == "bf16":
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def on_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.to(DEVICE) for key, value in batch.items()}


def train_steps(name: str, steps: int, batch_size: int | None, overrides: list[str]) -> dict:
    """`steps` batches of new pairs (the first epoch), then the same batches again (the later
    epochs: with ``cache_conditions`` the frozen parts' outputs are read back); one warm-up step."""
    model, configured, image_size = build(name, overrides)
    batch_size = batch_size or configured
    model.to(DEVICE)
    optimizer = model.configure_optimizers()
    model.train()
    batches = [on_device(phantom_batch(batch_size, image_size, seed=step)) for step in range(steps + 1)]
    for index, batch in enumerate(batches):
        batch["pair_id"] = batch["pair_id"] + index * batch_size  # every pair once per epoch

    def step(batch) -> float:
        start = clock()
        optimizer.zero_grad()
        with autocast():
            loss = model.diffusion_loss(*_training_inputs(model, batch))
        loss.backward()
        optimizer.step()
        model.update_ema()
        return clock() - start

    first = statistics.median([step(batch) for batch in batches][1:])
    later = statistics.median([step(batch) for batch in batches[1:]])
    return {"measure": f"train {name}", "batch": batch_size, "image_size": image_size,
            "trained_parameters": model.parameter_counts()["trained"], "s_per_step": first,
            "s_per_step_later": later, "ms_per_pair": 1000 * first / batch_size,
            "ms_per_pair_later": 1000 * later / batch_size, "peak_gib": peak_gib()}


def _training_inputs(model, batch):
    """What training_step hands diffusion_loss (w_null extension included), without Lightning's logging."""
    from ehrlab.models.cxr.ehrxdiff import add_null_samples

    if model.null_share > 0:
        batch, source = add_null_samples(batch, model.null_share, model.hparams.null_rotation_degrees,
                                         model.null_scale)
        return batch, model.networks(ema=False), source
    return batch, model.networks(ema=False)


def sampling(name: str, batches: int, batch_size: int | None, overrides: list[str]) -> dict:
    model, configured, image_size = build(name, overrides)
    model.to(DEVICE).eval()
    batch_size = batch_size or configured
    inputs = [on_device(phantom_batch(batch_size, image_size, seed=100 + index)) for index in range(batches)]
    with autocast():
        model.forecast(on_device(phantom_batch(2, image_size)), seed=0)  # warm-up
        start = clock()
        for batch in inputs:
            model.forecast(batch, seed=0)
        seconds = clock() - start
    images = batches * batch_size
    return {"measure": f"sample {name}", "batch": batch_size, "sampling_steps": model.sampling_steps,
            "images_per_s": images / seconds, "ms_per_image_and_step": 1000 * seconds / images / model.sampling_steps,
            "peak_gib": peak_gib()}


def child(args: list[str]) -> dict:
    """One measurement in its own process (its own peak memory)."""
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                            check=False, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        return {"measure": " ".join(args), "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--sample-batches", type=int, default=2, help="timed sampling batches")
    parser.add_argument("--skip-paper", action="store_true", help="leave out the paper-size training step")
    parser.add_argument("--skip-small", action="store_true", help="leave out ehrxdiff_small and its w_null variant")
    parser.add_argument("--paper-batch", type=int, nargs="+", default=[1],
                        help="batch sizes of the paper-size training step (default 1; the paper's is 128)")
    parser.add_argument("--paper-sample-batch", type=int, default=0,
                        help="also time paper-size DDIM sampling at this batch (0: not)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the first GPU")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32",
                        help="bf16: autocast as trainer=gpu's bf16-mixed")
    parser.add_argument("--override", action="append", default=[],
                        help="a config override for every model measured (repeatable), e.g. model.table_context=mixed")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE, PRECISION
    DEVICE, PRECISION = torch.device(args.device), args.precision
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no GPU (torch {torch.__version__})")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        kind, name, batch = args.child[0], args.child[1], int(args.child[2]) or None
        result = (train_steps(name, args.steps, batch, args.override) if kind == "train" else
                  sampling(name, args.sample_batches, batch, args.override))
        print(json.dumps(result))
        return
    common = [f"--threads={args.threads or torch.get_num_threads()}", f"--steps={args.steps}",
              f"--sample-batches={args.sample_batches}", f"--device={args.device}", f"--precision={args.precision}",
              *(f"--override={o}" for o in args.override)]
    jobs = [] if args.skip_small else [["train", "ehrxdiff_small", "0"], ["train", "ehrxdiff_small_wnull", "0"],
                                       ["sample", "ehrxdiff_small", "0"]]
    if not args.skip_paper:
        jobs += [["train", "ehrxdiff", str(batch)] for batch in args.paper_batch]
    if args.paper_sample_batch:
        jobs.append(["sample", "ehrxdiff", str(args.paper_sample_batch)])
    where = (torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda"
             else f"{args.threads or torch.get_num_threads()} threads")
    print(f"{where}, precision {args.precision}" + (f"; overrides {' '.join(args.override)}" if args.override else ""))
    print(f"| measure | batch | result | peak {'GPU memory' if DEVICE.type == 'cuda' else 'RSS'} (GiB) |")
    print("|---|---:|---|---:|")
    for job in jobs:
        result = child(job + common)
        if "error" in result:
            print(f"| {result['measure']} | | error: {result['error']} | |", flush=True)
        elif result["measure"].startswith("train"):
            print(f"| {result['measure']} ({result['image_size']}², {result['trained_parameters'] / 1e6:.1f} M trained) "
                  f"| {result['batch']} | first epoch {result['s_per_step']:.2f} s / step ({result['ms_per_pair']:.0f} "
                  f"ms / pair), later {result['s_per_step_later']:.2f} s / step ({result['ms_per_pair_later']:.0f} "
                  f"ms / pair) | {result['peak_gib']:.2f} |", flush=True)
        else:
            print(f"| {result['measure']} (DDIM {result['sampling_steps']} steps) | {result['batch']} "
                  f"| {result['images_per_s']:.2f} images / s ({result['ms_per_image_and_step']:.1f} ms per image "
                  f"and step) | {result['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
