"""Training step time and generation throughput of seed 002's generators.

Data: MIMIC-III-like synthetic patients (1-4 visits, about 11 codes per visit, Zipf-distributed
codes over ``--codes`` codes, ages 18-90, both sexes) as a PatientSequences, batched by the
DataModule's own ``pad_batch``. Each model is built from its real config (conf/model/*.yaml) and
trained by a Lightning Trainer, as the runner trains it (the adversarial models' manual
optimisation needs one), on epochs of ``10 x --repeats`` steps:

- warm-up: ``--train-steps`` steps (rounded up to whole epochs) so that generation lengths are
  those of a model that has seen data (an untrained sequence model emits far too many codes);
  for MedGAN and CorGAN the warm-up epochs are their autoencoder pretraining;
- training step: forward + backward + optimiser step(s) of one batch of the config's batch size,
  median over the last epoch (for the GANs: one adversarial step, i.e. the critic steps and the
  generator step of a batch; their autoencoder step is reported on its own row);
- generation: ``generate(--patients-to-generate, seed, batch_size=256)``, median of
  ``--repeats`` runs, in patients per second.

Run: ``python bench/bench_generators.py [--codes 2000] [--threads 2] [--models halo_small gpt
medgan_small corgan_small promptehr_small]``. Prints a Markdown table.

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
import math
import resource
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from ehrlab.data.datamodules import pad_batch
from ehrlab.data.sequences import PatientSequences
from ehrlab.models.generative.flat import AutoencoderGAN

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"


def synthetic_sequences(n_patients: int, n_codes: int, seed: int) -> PatientSequences:
    """Code ids 1..n_codes (0 is [PAD]), Zipf-distributed, distinct within a visit."""
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, n_codes + 1)
    zipf /= zipf.sum()
    visits_per_patient = np.minimum(rng.geometric(0.7, size=n_patients), 4)
    codes_per_visit = np.minimum(rng.poisson(10, size=int(visits_per_patient.sum())) + 1, 39)
    codes = [rng.choice(n_codes, size=k, replace=False, p=zipf) + 1 for k in codes_per_visit]
    return PatientSequences(
        subject_id=np.arange(n_patients, dtype=np.int64),
        visit_offsets=np.concatenate([[0], np.cumsum(visits_per_patient)]).astype(np.int64),
        code_offsets=np.concatenate([[0], np.cumsum(codes_per_visit)]).astype(np.int64),
        codes=np.concatenate(codes).astype(np.int32),
        visit_days=np.zeros(len(codes_per_visit)),
        age=rng.uniform(18, 90, size=n_patients).astype(np.float32),
        gender=rng.integers(0, 2, size=n_patients),
        label=np.full(n_patients, -1, dtype=np.int64),
    )


class StepTimes(pl.Callback):
    """Wall seconds of every training step, by epoch."""

    def __init__(self):
        self.by_epoch: dict[int, list[float]] = defaultdict(list)

    def on_train_batch_start(self, trainer, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        self.by_epoch[trainer.current_epoch].append(time.perf_counter() - self._start)


def load_model(name: str, vocabulary: list[str]) -> tuple[torch.nn.Module, int]:
    with tempfile.TemporaryDirectory() as config_dir:
        shutil.copytree(CONF_MODEL, Path(config_dir) / "model")
        (Path(config_dir) / "config.yaml").write_text(f"defaults:\n  - model: {name}\n  - _self_\n")
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name="config")
    # The model yamls are global packages: the training batch is data.batch_size.
    return instantiate(cfg.model, vocabulary=vocabulary), int(cfg.data.batch_size)


def use_halo_variant(model, variant: str | None) -> None:
    """``dense``: dense masked fine head, no key/value cache; ``blocked``: HALO as it is."""
    from ehrlab.models.generative.halo import HALO, MaskedLinear

    if variant is None or not isinstance(model, HALO):
        return
    for module in model.modules():
        if isinstance(module, MaskedLinear):
            module._dense = variant == "dense"
    model._kv_cache = variant != "dense"


def bench(name: str, sequences: PatientSequences, vocabulary: list[str], args, variant: str | None = None) -> dict:
    torch.manual_seed(0)
    model, batch_size = load_model(name, vocabulary)
    use_halo_variant(model, variant)
    if hasattr(model, "fit_statistics"):  # PromptEHR: the runner's setup() does this from the task
        model.fit_statistics(sequences)
    starts = range(0, sequences.n_patients - batch_size + 1, batch_size)
    batches = [pad_batch(sequences, np.arange(i, i + batch_size)) for i in starts]
    steps_per_epoch = 10 * args.repeats
    warm_up_epochs = math.ceil(args.train_steps / steps_per_epoch)
    is_gan = isinstance(model, AutoencoderGAN)
    if is_gan:  # the warm-up is the autoencoder pretraining; the last epoch is adversarial
        warm_up_epochs = max(warm_up_epochs, 1)
        model.autoencoder_epochs = warm_up_epochs
    timer = StepTimes()
    trainer = pl.Trainer(
        max_epochs=warm_up_epochs + 1, accelerator="cpu", logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    epoch = [batches[i % len(batches)] for i in range(steps_per_epoch)]
    trainer.fit(model, train_dataloaders=DataLoader(epoch, batch_size=None))
    model.eval()
    with torch.no_grad():
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
        "train step (ms, median)": 1000 * statistics.median(timer.by_epoch[warm_up_epochs]),
        "GAN autoencoder step (ms, median)": (
            1000 * statistics.median(timer.by_epoch[warm_up_epochs - 1]) if is_gan else float("nan")),
        "loss after warm-up (GANs: reconstruction)": loss,
        "generation (patients/s, median)": args.patients_to_generate / statistics.median(generation_seconds),
        "synthetic visits/patient": n_visits / max(table["subject_id"].nunique(), 1),
        "synthetic codes/visit": len(table) / max(n_visits, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=2000, help="vocabulary size (MIMIC-III full ICD-9: 6955)")
    parser.add_argument("--patients", type=int, default=2048, help="training patients")
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
    sequences = synthetic_sequences(args.patients, args.codes, seed=0)
    results = {}
    runs = [(name, None) for name in args.models]
    if args.halo_fine_head:
        runs = [(name, variant) for name in args.models
                for variant in (("dense", "blocked") if name.startswith("halo") else (None,))]
    for name, variant in runs:
        label = name if variant is None else f"{name} ({variant})"
        start = time.perf_counter()
        results[label] = bench(name, sequences, vocabulary, args, variant)
        print(f"{label}: done in {time.perf_counter() - start:.0f} s", flush=True)

    print(f"\n{args.codes} codes, {args.patients} training patients, {args.threads} torch threads, "
          f"{args.train_steps} warm-up steps, {args.patients_to_generate} patients generated (batch 256)\n")  # fmt: skip
    print("| metric | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for metric in next(iter(results.values())):
        cells = ("—" if math.isnan(r[metric]) else f"{r[metric]:.4g}" for r in results.values())
        print(f"| {metric} | " + " | ".join(cells) + " |")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of the process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
