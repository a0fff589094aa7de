"""Benchmark EHRXDiff's autoencoder (seed 004 §3.3.1, §4.5; ehrlab.models.cxr.autoencoder) at the
small size (conf/model/cxr_vae_small.yaml: 64² → 3×16×16) and the paper's (conf/model/cxr_vae.yaml,
Cheff's architecture: 256² → 3×64×64), on random images.

    python bench/bench_cxr_vae.py                        # both sizes, the machine's threads
    python bench/bench_cxr_vae.py --sizes small --threads 2

Reports per image (median of `--steps` after one warm-up): a training step (encode, sample,
decode, L1 + KL + SSIM, backward, Adam) at the yaml's batch (small; 2 × data.batch_size images)
or at `--paper-images` images (paper), the encoder's posterior mode and the decoder, both without
gradients (what EHRXDiff's training and sampling pay); and the peak resident memory so far.
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

from ehrlab.models.cxr.autoencoder import CXRAutoencoder

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
FINDINGS = ["imagenome:finding"]


def median_seconds(step, steps: int) -> float:
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(name: str, n_images: int | None, steps: int) -> dict:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    size = int(cfg.data.image_size)
    n_images = n_images or 2 * int(cfg.data.batch_size)  # a step sees each pair's two images
    model: CXRAutoencoder = instantiate(cfg.model, findings=FINDINGS, event_dim=8, image_size=size, max_events=1)
    optimizer = model.configure_optimizers()
    images = torch.rand(n_images, 1, size, size, generator=torch.Generator().manual_seed(0))

    def train_step():
        loss, _, _ = model.loss(images, sample=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    train = median_seconds(train_step, steps)
    model.eval()
    with torch.no_grad():
        latents = model.encode(images)
        encode = median_seconds(lambda: model.encode(images), steps)
        decode = median_seconds(lambda: model.decode(latents), steps)
    return {"model": name, "image": f"{size}²", "latent": "×".join(map(str, model.latent_shape)),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "batch_images": n_images,
            "train_ms_per_image": 1e3 * train / n_images, "encode_ms_per_image": 1e3 * encode / n_images,
            "decode_ms_per_image": 1e3 * decode / n_images, "peak_rss_MiB": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=["small", "paper"], default=["small", "paper"])
    parser.add_argument("--paper-images", type=int, default=4, help="images per step at the paper's size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for size in args.sizes:
        row = bench("cxr_vae_small" if size == "small" else "cxr_vae",
                    None if size == "small" else args.paper_images, args.steps)
        print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
