"""Benchmark seed 004's evaluation instruments: training the project's CXR evaluator, reading
images through it, and FID on its features.

    python bench/bench_cxr_evaluation.py                          # 2,000 + 200 images of 64², default evaluator
    python bench/bench_cxr_evaluation.py --train 2000 --size 64 --densenet121

Images are drawn, not phantoms: noise with a bright square, a bottom bar and a mid-field haze
(three findings), a right-edge stripe (male) and a top band whose brightness follows age. The
numbers are costs (seconds, images per second) and the evaluator's validation AUROCs on
these easy cues; how well it reads the phantom's findings is in each run's report.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ehrlab.data.cxr.contract import RACE_GROUPS, ImageSet
from ehrlab.evaluation.cxr.evaluators import train_evaluator
from ehrlab.evaluation.cxr.fid import feature_network, frechet_distance


def drawn(n: int, size: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < 0.4).astype(np.float32)
    sex = rng.integers(0, 2, n)
    age = rng.uniform(20, 90, n).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(60, 15, (n, size, size))
    images += (age * 0.8)[:, None, None] * (yy < size // 6)[None]
    images[labels[:, 0] == 1] += 90 * ((abs(yy - size // 2) < size // 8) & (abs(xx - size // 3) < size // 8))[None]
    images[labels[:, 1] == 1] += 70 * (yy > 5 * size // 6)[None]
    images[labels[:, 2] == 1] += 25 * ((yy > size // 3) & (xx > size // 2))[None]
    images[sex == 1] += 60 * (xx >= size - size // 12)[None]
    race = np.array([*RACE_GROUPS, "OTHER"])[rng.integers(0, 4, n)]
    return ImageSet(np.clip(images, 0, 255).astype(np.uint8), labels, ["label:square", "label:bar", "label:haze"],
                    age, sex, race)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--densenet121", action="store_true", help="DenseNet-121 sizes instead of the default")
    args = parser.parse_args()
    config = {"epochs": args.epochs}
    if args.densenet121:
        config["densenet"] = {"init_features": 64, "growth_rate": 32, "block_config": [6, 12, 24, 16], "bn_size": 4}
    train, val = drawn(args.train, args.size, 0), drawn(args.val, args.size, 1)
    started = time.perf_counter()
    evaluator = train_evaluator(train, val, config)
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    evaluator.predict(train.images)
    read_rate = len(train.images) / (time.perf_counter() - started)
    features, _ = feature_network(evaluator)
    started = time.perf_counter()
    fid = frechet_distance(train.images, val.images, features, args.size)
    fid_rate = (len(train.images) + len(val.images)) / (time.perf_counter() - started)
    print(json.dumps({
        "images": f"{args.train} + {args.val} of {args.size}²", "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in evaluator.network.parameters()),
        "features": evaluator.network.num_features,
        "train_seconds": round(train_seconds, 1), "epochs_run": evaluator.training["epochs_run"],
        "seconds_per_epoch": round(train_seconds / evaluator.training["epochs_run"], 2),
        "validation_auroc": {k: round(v, 3) for k, v in evaluator.validation["auroc"].items()},
        "validation_sex_auroc": round(evaluator.validation["sex_auroc"], 3),
        "validation_age_pearson": round(evaluator.validation["age_pearson"], 3),
        "read_images_per_second": round(read_rate), "fid_images_per_second": round(fid_rate),
        "fid_train_vs_val": round(fid, 3)}, indent=2))


if __name__ == "__main__":
    main()
