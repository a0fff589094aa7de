"""Benchmark seed 004's CXR-EHR CLIP (Appendix B.1; model=cxr_clip / cxr_clip_small) on this machine.

    python bench/bench_cxr_clip.py                   # small (64², batch 128) and paper (256², batch 8) sizes
    python bench/bench_cxr_clip.py --sizes small --events 1024

For each size, on random images and events (pairs with 20 to `--events` real events, padded to
`--events`, as a batch is padded to its longest list; the default phantom's longest lists are
about 250): seconds per optimiser step (median of `--steps` after one warm-up) and the cost per
pair, the image encoder's forward per image (the part EHRXDiff runs per training step and per
forecast), the table encoder's forward per pair, and the peak resident memory. The model is
built from the size's yaml, so the numbers follow the config.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ehrlab.models.cxr.clip import subsample_events, symmetric_contrastive_loss

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
FINDINGS = [f"imagenome:finding {i}" for i in range(10)]


def config(name: str):
    node = OmegaConf.load(CONF / f"{name}.yaml")
    if "defaults" in node:
        node = OmegaConf.merge(*[OmegaConf.load(CONF / f"{p}.yaml") for p in node.defaults if p != "_self_"], node)
    return node


def batch(size: int, image_size: int, events: int, width: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(min(20, events), events + 1, (size,), generator=generator)
    return {"prev_image": torch.rand(size, 1, image_size, image_size, generator=generator),
            "events": torch.randn(size, events, width, generator=generator),
            "event_mask": torch.arange(events)[None, :] < lengths[:, None],
            "pair_id": torch.arange(size)}


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def bench(name: str, batch_size: int | None, events: int, width: int, steps: int) -> None:
    node = config(name)
    image_size = int(node.data.image_size)
    batch_size = batch_size or int(node.data.batch_size)
    torch.manual_seed(0)
    model = instantiate(node.model, findings=FINDINGS, event_dim=width, image_size=image_size, max_events=1024)
    optimizer = model.configure_optimizers()
    data = batch(batch_size, image_size, events, width)

    def step():  # CXRCLIP.training_step without the logging
        events, event_mask = data["events"], data["event_mask"]
        if model.train_max_events is not None:
            events, event_mask = subsample_events(events, event_mask, model.train_max_events)
        symmetric_contrastive_loss(model(dict(data, events=events, event_mask=event_mask))).backward()
        optimizer.step()
        optimizer.zero_grad()

    train = median_seconds(step, steps)
    model.eval()
    with torch.no_grad():
        image = median_seconds(lambda: model.image_encoder(data["prev_image"]), steps)
        table = median_seconds(lambda: model.table_encoder(data["events"], data["event_mask"]), steps)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{name}: {parameters / 1e6:.1f} M parameters, {image_size}², batch {batch_size}, {events} events padded "
          f"(training on at most {model.train_max_events or events}), {torch.get_num_threads()} threads")
    print(f"  train step            {train:8.3f} s   ({1e3 * train / batch_size:7.2f} ms per pair)")
    print(f"  image encoder forward {image:8.3f} s   ({1e3 * image / batch_size:7.2f} ms per image, "
          f"{model.image_encoder.n_tokens} tokens of {model.image_encoder.width})")
    print(f"  table encoder forward {table:8.3f} s   ({1e3 * table / batch_size:7.2f} ms per pair)")
    print(f"  peak resident memory  {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB (process so far)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    parser.add_argument("--events", type=int, default=250)
    parser.add_argument("--width", type=int, default=384, help="event embedding width (384: all-MiniLM-L6-v2)")
    parser.add_argument("--paper-batch", type=int, default=8, help="the paper size's batch here (B.1: 1,024)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    for size in args.sizes:
        if size == "small":
            bench("cxr_clip_small", None, args.events, args.width, args.steps)
        else:
            bench("cxr_clip", args.paper_batch, args.events, args.width, args.steps)


if __name__ == "__main__":
    main()
