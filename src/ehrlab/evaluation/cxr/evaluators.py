"""The image readers of seed 004's evaluation: findings, sex, age and race from a chest X-ray,
and the features its FID compares.

The paper reads predicted images with four networks (§4.3, Appendix C): a DINO ViT-S/16
fine-tuned per Chest ImaGenome attribute (C.1.1), TorchXRayVision's DenseNet-121 for CheXpert
(C.1.2), TorchXRayVision's age and race models and a fine-tuned DenseNet-121 for sex (C.2).
Their weights are downloads that do not load offline (and TorchXRayVision needs torchvision,
which does not import here), so the project trains its own evaluator on the task's training
images and selects it on the validation images: one network, one shared backbone, with a
head per finding (masked BCE: a NaN label is not evaluable), sex (binary cross-entropy,
P(male)), age (squared error on the age standardised by the training images' mean and
standard deviation) and race (cross-entropy over RACE_GROUPS + "other"). One backbone keeps
the cost to one training; its pooled penultimate layer is the FID feature (§4.3.3 uses a
DenseNet-121's 1,024-d features).

The backbone is MONAI's DenseNet (`spatial_dims=2`, one input channel); the default is a
small one (32 initial features, growth 16, blocks 3-3-3: 92-d features, 0.13 M weights) that
trains in about a minute on two CPU cores on ~2,000 images of 64² (BENCHMARKS.md); DenseNet-121 is
``densenet: {init_features: 64, growth_rate: 32, block_config: [6, 12, 24, 16]}``.
``architecture: vit`` builds a ViT from `transformers.ViTConfig` (the authors' classifier
family; their ViT-S/16 is ``vit: {patch_size: 16, hidden_size: 384, num_hidden_layers: 12,
num_attention_heads: 6, intermediate_size: 1536}`` at 224²).

It is trained with a plain torch loop, not Lightning: it is a measuring instrument of the
evaluation, not a model of the runner, and must not appear in the run's checkpoints, loggers,
callbacks or sweeps; a short seeded loop with early stopping on the validation loss is all it
needs. Trained evaluators are cached under ``<cache>/cxr_evaluators/<key>/evaluator.pt``
(key: the caller's data key + the evaluator's options), so every model evaluated on one task
is read by the same evaluator. A user can point ``weights`` to such a file (copied from
another machine, or trained larger); files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ehrlab.data.cache import default_cache_dir, staged_folder
from ehrlab.data.cxr.contract import RACE_GROUPS, SEX_IDS, ImageSet
from ehrlab.errors import UserInputError
from ehrlab.evaluation.cxr import metrics
from ehrlab.serialization import json_safe

log = logging.getLogger(__name__)

FILE_FORMAT = "ehrlab-cxr-evaluator"
FILE_VERSION = 1
WEIGHTS_FILE = "evaluator.pt"
# The race head's classes: the three groups Table 3 scores, then everything else.
RACE_CLASSES = (*RACE_GROUPS, "OTHER")
ARCHITECTURES = ("densenet", "vit")


@dataclass
class EvaluatorConfig:
    """What builds and trains the evaluator (``cxr_evaluation.evaluator`` in the config).

    densenet / vit: keyword arguments of `monai.networks.nets.DenseNet` (besides spatial_dims,
    in_channels, out_channels) or of `transformers.ViTConfig` (besides image_size,
    num_channels); only the chosen architecture's entry is used. epochs is the most; training
    stops after `patience` epochs without a lower validation loss and keeps the best epoch.
    weights: a path to an evaluator file; when set nothing is trained. device: where it trains
    and reads ("auto": the GPU when there is one; bit-for-bit repeatable only on the CPU).
    """

    architecture: str = "densenet"
    densenet: dict = field(default_factory=lambda: {"init_features": 32, "growth_rate": 16,
                                                    "block_config": [3, 3, 3], "bn_size": 4})
    vit: dict = field(default_factory=lambda: {"patch_size": 8, "hidden_size": 96, "num_hidden_layers": 4,
                                               "num_attention_heads": 4, "intermediate_size": 192})
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    weights: str | None = None
    device: str = "auto"

    @classmethod
    def from_settings(cls, settings: dict | EvaluatorConfig | None) -> EvaluatorConfig:
        if isinstance(settings, cls):
            return settings
        settings = dict(settings or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise UserInputError(f"cxr_evaluation.evaluator: unknown option(s) {unknown}; known: {sorted(known)}")
        config = cls(**settings)
        if config.architecture not in ARCHITECTURES:
            raise UserInputError(f"cxr_evaluation.evaluator.architecture={config.architecture!r}: "
                                 f"use one of {list(ARCHITECTURES)}")
        return config

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except RuntimeError as error:
            raise UserInputError(f"cxr_evaluation.evaluator.device={self.device!r}: {error}") from error

    def backbone_options(self) -> dict:
        return dict(self.densenet if self.architecture == "densenet" else self.vit)

    def identity(self) -> dict:
        """What decides the trained weights (the cache key's part): not `weights` nor `device`."""
        return {"architecture": self.architecture, "backbone": self.backbone_options(), "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "patience": self.patience, "seed": self.seed}


class EvaluatorNetwork(nn.Module):
    """Backbone → pooled features [B, K] → one linear layer giving, in this order, a logit per
    finding, the sex logit (male), the standardised age and the race logits (RACE_CLASSES)."""

    def __init__(self, architecture: str, backbone: dict, image_size: int, n_findings: int):
        super().__init__()
        self.n_findings = n_findings
        n_outputs = n_findings + 2 + len(RACE_CLASSES)
        try:
            if architecture == "densenet":
                from monai.networks.nets import DenseNet

                self.backbone = DenseNet(spatial_dims=2, in_channels=1, out_channels=n_outputs, **backbone)
                self.num_features = self.backbone.class_layers.out.in_features
            else:
                from transformers import ViTConfig, ViTModel

                self.backbone = ViTModel(ViTConfig(image_size=image_size, num_channels=1, **backbone),
                                         add_pooling_layer=False)
                self.num_features = self.backbone.config.hidden_size
                self.head = nn.Linear(self.num_features, n_outputs)
        except (TypeError, ValueError) as error:
            raise UserInputError(f"cxr_evaluation.evaluator.{architecture}={backbone}: cannot build the "
                                 f"{architecture} evaluator at {image_size}² ({error})") from error
        self.architecture = architecture

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 1, S, S] in [0, 1] → the pooled penultimate layer [B, K]."""
        x = images.to(self.device) * 2.0 - 1.0
        if self.architecture == "densenet":
            layers = self.backbone.class_layers
            return layers.flatten(layers.pool(layers.relu(self.backbone.features(x))))
        return self.backbone(pixel_values=x).last_hidden_state[:, 0]

    def head_layer(self) -> nn.Linear:
        return self.backbone.class_layers.out if self.architecture == "densenet" else self.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_layer()(self.features(images))


class FeatureExtractor(nn.Module):
    """The evaluator's features as the `nn.Module` torchmetrics' FID takes (`num_features` set
    so that torchmetrics does not probe it with a 299² RGB dummy)."""

    def __init__(self, network: EvaluatorNetwork):
        super().__init__()
        self.network = network
        self.num_features = network.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.features(images)


def as_float_images(images: np.ndarray | torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """uint8 [N, S, S] (0–255) or float [N, S, S] / [N, 1, S, S] (0–1) → float32 [N, 1, S', S']
    in [0, 1], resized (bilinear, antialiased) to `image_size` when given and different."""
    # A copy when needed: reversed views and read-only memmaps (the task's images.npy) are not tensors.
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, copy=True))
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise ValueError(f"expected grey images [N, S, S] or [N, 1, S, S], got {tuple(tensor.shape)}")
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float().clamp(0.0, 1.0)
    if image_size is not None and tensor.shape[-1] != image_size:
        tensor = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    return tensor


@dataclass
class CXREvaluator:
    """A trained evaluator and what it needs to read images: its findings (label column
    names), input size, the training ages' mean and standard deviation, its validation
    metrics and where it came from (trained / cached / a user's file)."""

    network: EvaluatorNetwork
    findings: list[str]
    image_size: int
    age_mean: float
    age_std: float
    config: dict
    validation: dict
    training: dict
    origin: str = "trained"

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
        """images uint8 [N, S, S] (or float in [0, 1]) → label_probs [N, F], sex_prob [N]
        (P(male)), age [N] (years), race_probs [N, len(RACE_CLASSES)], features [N, K]."""
        self.network.eval()
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("label_probs", "sex_prob", "age", "race_probs",
                                                              "features")}
        f = len(self.findings)
        for start in range(0, len(images), batch_size):
            x = as_float_images(images[start:start + batch_size], self.image_size)
            features = self.network.features(x)
            out = self.network.head_layer()(features).cpu()
            features = features.cpu()
            parts["label_probs"].append(torch.sigmoid(out[:, :f]).numpy())
            parts["sex_prob"].append(torch.sigmoid(out[:, f]).numpy())
            parts["age"].append((out[:, f + 1] * self.age_std + self.age_mean).numpy())
            parts["race_probs"].append(torch.softmax(out[:, f + 2:], dim=1).numpy())
            parts["features"].append(features.numpy())
        if not len(images):
            k = self.network.num_features
            empty = {"label_probs": (0, f), "sex_prob": (0,), "age": (0,), "race_probs": (0, len(RACE_CLASSES)),
                     "features": (0, k)}
            return {key: np.zeros(shape, np.float32) for key, shape in empty.items()}
        return {key: np.concatenate(value).astype(np.float32) for key, value in parts.items()}

    def feature_module(self) -> FeatureExtractor:
        return FeatureExtractor(self.network).eval()

    def meta(self) -> dict:
        return {"format": FILE_FORMAT, "version": FILE_VERSION, "config": self.config, "findings": self.findings,
                "image_size": self.image_size, "age_mean": self.age_mean, "age_std": self.age_std,
                "race_classes": list(RACE_CLASSES), "validation": self.validation, "training": self.training}

    def save(self, folder: Path) -> Path:
        """`folder`/evaluator.pt (the state dict and the metadata as a JSON string, all that
        `torch.load(weights_only=True)` accepts) and evaluator.json (the metadata, for people)."""
        folder.mkdir(parents=True, exist_ok=True)
        meta = self.meta()
        torch.save({"format": FILE_FORMAT, "meta": json.dumps(meta), "state_dict": self.network.state_dict()},
                   folder / WEIGHTS_FILE)
        (folder / "evaluator.json").write_text(json.dumps(json_safe(meta), indent=2))
        return folder / WEIGHTS_FILE

    @classmethod
    def load(cls, path: str | Path, origin: str = "file") -> CXREvaluator:
        """Read an evaluator file; a UserInputError says why a file is not one."""
        path = Path(path).expanduser()
        prefix = f"cxr_evaluation.evaluator.weights={path}: this file is not an ehrlab CXR evaluator"
        if not path.is_file():
            raise UserInputError(f"cxr_evaluation.evaluator.weights={path}: no such file; point it to an "
                                 f"{WEIGHTS_FILE} that ehrlab wrote (under <cache>/cxr_evaluators/) or leave it "
                                 "empty to train one")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated, foreign or pickled-object files all land here
            raise UserInputError(f"{prefix}: it does not load as plain tensors ({type(error).__name__}: "
                                 f"{str(error)[:200]})") from error
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            keys = sorted(map(str, payload))[:8] if isinstance(payload, dict) else type(payload).__name__
            raise UserInputError(f"{prefix}: expected a dict with format={FILE_FORMAT!r}, 'meta' and "
                                 f"'state_dict', found {keys}")
        try:
            meta = json.loads(payload["meta"])
            state = payload["state_dict"]
            architecture = meta["config"]["architecture"]
            if architecture not in ARCHITECTURES:
                raise ValueError(f"architecture {architecture!r}")
            network = EvaluatorNetwork(architecture, dict(meta["config"]["backbone"]), int(meta["image_size"]),
                                       len(meta["findings"]))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            raise UserInputError(f"{prefix}: its metadata is incomplete ({type(error).__name__}: {error})") from error
        if meta.get("version") != FILE_VERSION or list(meta.get("race_classes", [])) != list(RACE_CLASSES):
            raise UserInputError(f"{prefix}: version {meta.get('version')} with race classes "
                                 f"{meta.get('race_classes')}; this ehrlab reads version {FILE_VERSION} with "
                                 f"{list(RACE_CLASSES)}")
        try:
            network.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise UserInputError(f"{prefix}: its weights do not fit the network its metadata describes "
                                 f"({str(error)[:400]})") from error
        network.eval()
        return cls(network=network, findings=list(meta["findings"]), image_size=int(meta["image_size"]),
                   age_mean=float(meta["age_mean"]), age_std=float(meta["age_std"]), config=meta["config"],
                   validation=meta.get("validation", {}), training=meta.get("training", {}), origin=origin)


# ---------------------------------------------------------------- training


def _targets(image_set: ImageSet, age_mean: float, age_std: float) -> dict:
    race_index = {name: i for i, name in enumerate(RACE_CLASSES)}
    race = np.array([race_index.get(str(r), len(RACE_CLASSES) - 1) for r in image_set.race], dtype=np.int64)
    sex = np.array(image_set.sex, dtype=np.int64)  # copies: the task's arrays may be read-only views
    return {
        "images": image_set.images,  # stays a (memory-mapped) array: batches are read from it one at a time
        "labels": torch.from_numpy(np.array(image_set.labels, dtype=np.float32).reshape(len(sex), -1)),
        "sex": torch.from_numpy(sex),
        "age": torch.from_numpy(((np.asarray(image_set.age, dtype=np.float64) - age_mean) / age_std)
                                .astype(np.float32)),
        "race": torch.from_numpy(race),
    }


def _loss(out: torch.Tensor, batch: dict[str, torch.Tensor], n_findings: int) -> torch.Tensor:
    """Sum of the four heads' losses, each over the rows where its target is known."""
    labels = batch["labels"]
    known = ~torch.isnan(labels)
    total = out.new_zeros(())
    if known.any():
        total = total + F.binary_cross_entropy_with_logits(out[:, :n_findings][known], labels[known])
    sex_known = batch["sex"] != 2
    if sex_known.any():
        male = (batch["sex"][sex_known] == SEX_IDS["M"]).float()
        total = total + F.binary_cross_entropy_with_logits(out[sex_known, n_findings], male)
    age_known = ~torch.isnan(batch["age"])
    if age_known.any():
        total = total + F.mse_loss(out[age_known, n_findings + 1], batch["age"][age_known])
    return total + F.cross_entropy(out[:, n_findings + 2:], batch["race"])


def _batches(data: dict, batch_size: int, generator: torch.Generator | None, device: torch.device):
    n = len(data["images"])
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        batch = {key: value[rows].to(device) for key, value in data.items() if key != "images"}
        batch["images"] = as_float_images(data["images"][rows.numpy()]).to(device)
        yield batch


@torch.no_grad()
def _validation_loss(network: EvaluatorNetwork, data: dict, batch_size: int) -> float:
    network.eval()
    total, n = 0.0, 0
    for batch in _batches(data, batch_size, None, network.device):
        total += float(_loss(network(batch["images"]), batch, network.n_findings)) * len(batch["images"])
        n += len(batch["images"])
    return total / max(n, 1)


def validation_metrics(evaluator: CXREvaluator, val: ImageSet) -> dict:
    """What the evaluator reads on images it was not trained on: AUROC per finding, sex
    AUROC, age Pearson, race AUROC (NaN with a reason where the validation images lack it).
    A classifier that cannot read a finding makes every forecast number of that finding
    meaningless; the report shows these."""
    out = evaluator.predict(val.images)
    labels = np.asarray(val.labels, dtype=np.float64).reshape(len(val.images), -1)
    aurocs, n = metrics.finding_aurocs(labels, out["label_probs"], ~np.isnan(labels))
    result = {"n_images": len(val.images),
              "auroc": {f: float(a) for f, a in zip(evaluator.findings, aurocs)},
              "n": {f: int(c) for f, c in zip(evaluator.findings, n)}}
    result["auroc_weighted"] = metrics.weighted_macro(aurocs, n)
    result["sex_auroc"], _ = metrics.sex_auroc(val.sex, out["sex_prob"])
    result["age_pearson"], _ = metrics.age_pearson(val.age, out["age"])
    result["race_auroc"], _ = metrics.race_auroc(val.race, out["race_probs"])
    return result


def train_evaluator(train: ImageSet, val: ImageSet, config: EvaluatorConfig | dict | None = None,
                    progress: bool = True) -> CXREvaluator:
    """Train an evaluator on `train`, keeping the epoch with the lowest validation loss on
    `val` (all epochs, the last kept, when `val` is empty). Seeded by `config.seed`."""
    config = EvaluatorConfig.from_settings(config)
    if len(train.images) == 0:
        raise UserInputError("cxr evaluation: the training split has no images to train the evaluator on")
    started = time.perf_counter()
    image_size = int(train.images.shape[-1])
    known_age = np.asarray(train.age, dtype=np.float64)
    known_age = known_age[np.isfinite(known_age)]
    age_mean = float(known_age.mean()) if known_age.size else 0.0
    age_std = float(known_age.std()) if known_age.size > 1 and known_age.std() > 0 else 1.0
    torch.manual_seed(config.seed)
    network = EvaluatorNetwork(config.architecture, config.backbone_options(), image_size,
                               len(train.findings)).to(config.torch_device())
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    train_data = _targets(train, age_mean, age_std)
    val_data = _targets(val, age_mean, age_std) if len(val.images) else None
    generator = torch.Generator().manual_seed(config.seed)
    best_loss, best_state, best_epoch, since_best = math.inf, None, 0, 0
    history = []
    bar = tqdm(range(config.epochs), desc="CXR evaluator", disable=not progress, leave=False)
    for epoch in bar:
        network.train()
        for batch in _batches(train_data, config.batch_size, generator, network.device):
            if len(batch["images"]) < 2:  # batch norm cannot train on one image
                continue
            optimiser.zero_grad(set_to_none=True)
            _loss(network(batch["images"]), batch, network.n_findings).backward()
            optimiser.step()
        val_loss = _validation_loss(network, val_data, config.batch_size) if val_data is not None else math.nan
        history.append(val_loss)
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_data is None or val_loss < best_loss:
            best_loss, best_state, best_epoch, since_best = val_loss, copy.deepcopy(network.state_dict()), epoch, 0
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    training = {"epochs_run": len(history), "best_epoch": best_epoch + 1, "val_loss": history,
                "n_train": len(train.images), "n_val": len(val.images),
                "seconds": round(time.perf_counter() - started, 2)}
    evaluator = CXREvaluator(network=network, findings=list(train.findings), image_size=image_size,
                             age_mean=age_mean, age_std=age_std, config=config.identity(), validation={},
                             training=training)
    evaluator.validation = validation_metrics(evaluator, val) if len(val.images) else {}
    log.info("CXR evaluator trained in %.1f s (%d epochs, best %d); validation AUROC %s",
             training["seconds"], training["epochs_run"], training["best_epoch"],
             evaluator.validation.get("auroc_weighted"))
    return evaluator


# ---------------------------------------------------------------- cache


class EvaluatorCache:
    """Trained evaluators under ``<cache_dir>/cxr_evaluators/<key>/``, the key hashing the
    caller's data key (the task cache key: same images, same splits) and the evaluator's
    options. Written atomically (`staged_folder`), so parallel runs share one."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.root = Path(cache_dir or default_cache_dir()) / "cxr_evaluators"

    @staticmethod
    def key(data_key: str, config: EvaluatorConfig) -> str:
        text = json.dumps({"data": str(data_key), "evaluator": config.identity()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def folder(self, data_key: str, config: EvaluatorConfig) -> Path:
        return self.root / self.key(data_key, config)

    def get_or_train(self, data_key: str, config: EvaluatorConfig | dict | None,
                     image_set: Callable[[str], ImageSet], progress: bool = True) -> CXREvaluator:
        config = EvaluatorConfig.from_settings(config)
        folder = self.folder(data_key, config)
        if (folder / WEIGHTS_FILE).is_file():
            log.info("reading the CXR evaluator from cache %s", folder)
            return CXREvaluator.load(folder / WEIGHTS_FILE, origin=f"cached ({folder})")
        evaluator = train_evaluator(image_set("train"), image_set("val"), config, progress=progress)
        with staged_folder(folder) as staging:
            evaluator.save(staging)
        evaluator.origin = f"trained ({folder})"
        return evaluator


def load_or_train_evaluator(settings: EvaluatorConfig | dict | None, data_key: str,
                            image_set: Callable[[str], ImageSet], cache_dir: str | Path | None = None,
                            progress: bool = True) -> CXREvaluator:
    """The evaluator a run uses: the user's file when ``weights`` is set, else the cached one
    for (data_key, options), trained on ``image_set("train")`` / ``image_set("val")`` the
    first time. `image_set` is called only when training is needed (pass
    `task_data.image_set`)."""
    config = EvaluatorConfig.from_settings(settings)
    if config.weights:
        evaluator = CXREvaluator.load(config.weights, origin=f"user file {config.weights}")
    else:
        evaluator = EvaluatorCache(cache_dir).get_or_train(data_key, config, image_set, progress=progress)
    evaluator.network.to(config.torch_device())
    return evaluator


