"""Benchmark a training step of seed 004's trained baselines (the table classifiers of §4.4)
at their paper configuration (Appendix B.1/B.3: two transformer layers over the event
embeddings, 24 heads, batch 128), on random event embeddings of the task's width.

    python bench/bench_cxr_models.py                       # batch 128, 200 events (padded), 384-d events
    python bench/bench_cxr_models.py --events 1024         # the paper's max_events

Reports seconds per optimiser step (median of `--steps` after one warm-up) for the plain and
the previous-label classifier, at 24 heads (B.1) and at 4, to show what the head count costs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from ehrlab.models.cxr.baselines import (
    TableClassifier,
    TableClassifierPrevLabel,
    masked_binary_cross_entropy,
)

FINDINGS = [f"imagenome:finding {i}" for i in range(11)]


def batch(size: int, events: int, width: int) -> dict[str, torch.Tensor]:
    """Pairs with between 20 and `events` real events, the rest padding (as a batch is)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, events + 1, (size,), generator=generator)
    return {"events": torch.randn(size, events, width, generator=generator),
            "event_mask": torch.arange(events)[None, :] < lengths[:, None],
            "prev_labels": torch.randint(0, 2, (size, len(FINDINGS)), generator=generator).float(),
            "target_labels": torch.randint(0, 2, (size, len(FINDINGS)), generator=generator).float(),
            "pair_id": torch.arange(size)}


def seconds_per_step(model_class, heads: int, data: dict, steps: int) -> float:
    model = model_class(findings=FINDINGS, event_dim=data["events"].shape[-1], image_size=64, max_events=1024,
                        optimizer=partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.01), n_heads=heads)
    optimizer = model.configure_optimizers()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = masked_binary_cross_entropy(model(data), data["target_labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    data = batch(args.batch, args.events, args.width)
    print(f"batch {args.batch}, {args.events} event slots, {args.width}-d events, {torch.get_num_threads()} threads")
    print("| model | heads | s / step |")
    print("|---|---:|---:|")
    for model_class in (TableClassifier, TableClassifierPrevLabel):
        for heads in (24, 4):
            print(f"| {model_class.__name__} | {heads} | {seconds_per_step(model_class, heads, data, args.steps):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
