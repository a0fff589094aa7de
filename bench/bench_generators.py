"""Training step time and generation throughput of the generators (HALO small, GPT baseline).

Data: MIMIC-III-like synthetic records (1-4 visits, about 11 codes per visit, Zipf-distributed
codes over ``--codes`` codes), in the DataModule's batch layout. Each model is built from its
real config (conf/model/*.yaml), trained ``--train-steps`` steps so that generation lengths are
those of a model that has seen data (an untrained one emits far too many codes), then timed:

- training step: forward + backward + optimiser step on one batch of the config's batch size,
  median of ``--repeats`` x 10 steps;
- generation: ``generate(--patients-to-generate, seed, batch_size=256)``, median of
  ``--repeats`` runs, in patients per second.

Run: ``python bench/bench_generators.py [--codes 2000] [--threads 2]``. Prints a Markdown table.

``--halo-fine-head`` benchmarks every HALO model of ``--models`` twice, from the same seed:
``dense`` = the fine head's dense masked product (``weight * mask`` over the full square)
and generation re-running the coarse transformer over all earlier rows for each new row
(HALO before issue item 8), and ``blocked`` = the blocked lower-triangular product and the
key/value cache (HALO now). The paper size is ``--models halo`` with ``--codes 6955``
(MIMIC-III's ICD-9 vocabulary); there ``--train-steps 0`` keeps the run short and the table's
codes/visit says what the untrained model emitted (the prior bias starts it at ~10).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"


def synthetic_records(n_patients: int, n_codes: int, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, n_codes + 1)
    zipf /= zipf.sum()
    records = []
    for _ in range(n_patients):
        n_visits = min(rng.geometric(0.7), 4)
        records.append([
            rng.choice(n_codes, size=min(rng.poisson(10) + 1, 39), replace=False, p=zipf) + 1
            for _ in range(n_visits)
        ])  # fmt: skip
    return records


def to_batch(records: list[list[np.ndarray]]) -> dict[str, torch.Tensor]:
    n_visits = max(len(r) for r in records)
    n_codes = max(len(v) for r in records for v in r)
    codes = torch.zeros(len(records), n_visits, n_codes, dtype=torch.long)
    for p, record in enumerate(records):
        for v, visit in enumerate(record):
            codes[p, v, : len(visit)] = torch.from_numpy(visit)
    lengths = torch.tensor([len(r) for r in records])
    return {"codes": codes, "n_visits": lengths, "visit_mask": torch.arange(n_visits)[None, :] < lengths[:, None]}


def load_model(name: str, vocabulary: list[str]) -> tuple[torch.nn.Module, int]:
    with tempfile.TemporaryDirectory() as config_dir:
        shutil.copytree(CONF_MODEL, Path(config_dir) / "model")
        (Path(config_dir) / "config.yaml").write_text(f"defaults:\n  - model: {name}\n  - _self_\n")
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name="config")
    # The model yamls are global packages: the training batch is data.batch_size.
    return instantiate(cfg.model, vocabulary=vocabulary), int(cfg.data.batch_size)


def train_steps(model, optimizer, batches, n_steps: int) -> list[float]:
    model.train()
    seconds = []
    for step in range(n_steps):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def use_halo_variant(model, variant: str | None) -> None:
    """``dense``: dense masked fine head, no key/value cache; ``blocked``: HALO as it is."""
    from ehrlab.models.generative.halo import HALO, MaskedLinear

    if variant is None or not isinstance(model, HALO):
        return
    for module in model.modules():
        if isinstance(module, MaskedLinear):
            module._dense = variant == "dense"
    model._kv_cache = variant != "dense"


def bench(name: str, vocabulary: list[str], records, args, variant: str | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    model, batch_size = load_model(name, vocabulary)
    use_halo_variant(model, variant)
    batches = [to_batch(records[i : i + batch_size]) for i in range(0, len(records) - batch_size + 1, batch_size)]
    optimizer = model.optimizer_factory(params=model.parameters())
    train_steps(model, optimizer, batches, args.train_steps)
    step_seconds = statistics.median(train_steps(model, optimizer, batches, 10 * args.repeats))
    loss = float(np.mean([model.training_loss(b).item() for b in batches[:5]]))

    generation_seconds, tables = [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        tables.append(model.generate(args.patients_to_generate, seed=repeat, batch_size=256, progress=False))
        generation_seconds.append(time.perf_counter() - start)
    table = tables[0]
    n_visits = table.drop_duplicates(["subject_id", "visit_id"]).shape[0]
    return {
        "parameters (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch size": batch_size,
        "train step (ms, median)": 1000 * step_seconds,
        "train loss after warm-up": loss,
        "generation (patients/s, median)": args.patients_to_generate / statistics.median(generation_seconds),
        "synthetic visits/patient": n_visits / max(table["subject_id"].nunique(), 1),
        "synthetic codes/visit": len(table) / max(n_visits, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=2000, help="vocabulary size (MIMIC-III full ICD-9: 6955)")
    parser.add_argument("--patients", type=int, default=2048, help="training records")
    parser.add_argument("--train-steps", type=int, default=150, help="warm-up training steps before timing")
    parser.add_argument("--patients-to-generate", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", nargs="+", default=["halo_small", "gpt"])
    parser.add_argument("--halo-fine-head", action="store_true",
                        help="compare HALO's dense masked fine head without key/value cache to the blocked one with it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vocabulary = ["[PAD]"] + [f"DIAGNOSIS//ICD//9//C{i}" for i in range(args.codes)]
    records = synthetic_records(args.patients, args.codes, seed=0)
    results = {}
    runs = [(name, None) for name in args.models]
    if args.halo_fine_head:
        runs = [(name, variant) for name in args.models
                for variant in (("dense", "blocked") if name.startswith("halo") else (None,))]
    for name, variant in runs:
        label = name if variant is None else f"{name} ({variant})"
        start = time.perf_counter()
        results[label] = bench(name, vocabulary, records, args, variant)
        print(f"{label}: done in {time.perf_counter() - start:.0f} s", flush=True)

    print(f"\n{args.codes} codes, {args.patients} training records, {args.threads} torch threads, "
          f"{args.train_steps} warm-up steps, {args.patients_to_generate} patients generated (batch 256)\n")  # fmt: skip
    print("| metric | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for metric in next(iter(results.values())):
        print(f"| {metric} | " + " | ".join(f"{r[metric]:.4g}" for r in results.values()) + " |")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of the process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
