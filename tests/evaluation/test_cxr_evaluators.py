"""The project's CXR evaluator (findings, sex, age, race, FID features), its cache, user files
and FID, on tiny drawn images: a bright square is finding 1, a bar finding 2, a stripe at the
right edge says male, the top band's brightness grows with age."""

import numpy as np
import pytest
import torch

from ehrlab.data.cxr.contract import RACE_GROUPS, ImageSet
from ehrlab.errors import UserInputError
from ehrlab.evaluation.cxr import evaluators
from ehrlab.evaluation.cxr.evaluators import CXREvaluator, EvaluatorCache, EvaluatorConfig, train_evaluator
from ehrlab.evaluation.cxr.fid import feature_network, frechet_distance, load_feature_file

FINDINGS = ["label:square", "label:bar"]
TINY = {"densenet": {"init_features": 8, "growth_rate": 8, "block_config": [2, 2], "bn_size": 2},
        "epochs": 20, "batch_size": 32, "learning_rate": 1e-2, "patience": 5}


def draw_images(labels: np.ndarray, sex: np.ndarray, age: np.ndarray, rng, size: int = 32) -> np.ndarray:
    """uint8 [N, size, size] with the cues above (NaN labels drawn as absent)."""
    n = len(labels)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(50, 8, (n, size, size))
    images += (np.nan_to_num(age, nan=50.0) * 1.2)[:, None, None] * (yy < size // 5)[None]
    square = (abs(yy - size // 2) < size // 6) & (abs(xx - size // 3) < size // 6)
    images += 120 * (np.nan_to_num(labels[:, 0]) == 1)[:, None, None] * square[None]
    images += 100 * (np.nan_to_num(labels[:, 1]) == 1)[:, None, None] * (yy > 4 * size // 5)[None]
    images += 120 * (sex == 1)[:, None, None] * (xx >= size - 4)[None]
    return np.clip(images, 0, 255).astype(np.uint8)


def draw_image_set(n: int, seed: int, size: int = 32) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
    labels[rng.random((n, 2)) < 0.1] = np.nan
    sex = rng.integers(0, 2, n)
    age = rng.uniform(20, 90, n).astype(np.float32)
    race = np.array([*RACE_GROUPS, "OTHER"])[np.arange(n) % 4]
    return ImageSet(draw_images(labels, sex, age, rng, size), labels, list(FINDINGS), age, sex, race)


@pytest.fixture(scope="module")
def image_sets() -> dict[str, ImageSet]:
    return {"train": draw_image_set(96, 0), "val": draw_image_set(48, 1)}


@pytest.fixture(scope="module")
def evaluator(image_sets) -> CXREvaluator:
    return train_evaluator(image_sets["train"], image_sets["val"], TINY, progress=False)


def test_the_evaluator_learns_findings_sex_and_age_from_the_training_images(evaluator):
    validation = evaluator.validation
    assert validation["auroc"]["label:square"] > 0.9 and validation["auroc"]["label:bar"] > 0.9
    assert validation["sex_auroc"] > 0.9
    assert validation["age_pearson"] > 0.5
    assert validation["n"]["label:square"] < 48  # NaN labels are not evaluated
    assert 1 <= evaluator.training["best_epoch"] <= evaluator.training["epochs_run"] <= TINY["epochs"]


def test_predict_reads_uint8_and_float_images_alike_and_returns_every_head(evaluator, image_sets):
    images = image_sets["val"].images[:10]
    out = evaluator.predict(images, batch_size=4)
    assert out["label_probs"].shape == (10, 2) and out["race_probs"].shape == (10, len(RACE_GROUPS) + 1)
    assert out["sex_prob"].shape == out["age"].shape == (10,)
    assert out["features"].shape == (10, evaluator.network.num_features)
    np.testing.assert_allclose(out["race_probs"].sum(axis=1), 1.0, rtol=1e-5)
    as_float = evaluator.predict(images.astype(np.float32) / 255.0)
    np.testing.assert_allclose(as_float["label_probs"], out["label_probs"], atol=1e-5)
    assert evaluator.predict(images[:0])["features"].shape == (0, evaluator.network.num_features)


def test_the_cache_trains_once_and_returns_the_same_weights(tmp_path, image_sets, monkeypatch):
    calls = []

    def counting(train, val, config, progress=True):
        calls.append(1)
        return train_evaluator(train, val, {**TINY, "epochs": 2}, progress)

    monkeypatch.setattr(evaluators, "train_evaluator", counting)
    cache = EvaluatorCache(tmp_path)
    first = cache.get_or_train("task-key", TINY, image_sets.__getitem__, progress=False)
    second = cache.get_or_train("task-key", TINY, lambda split: pytest.fail("no training on a cache hit"))
    assert len(calls) == 1 and second.origin.startswith("cached")
    for name, tensor in first.network.state_dict().items():
        assert torch.equal(tensor, second.network.state_dict()[name]), name
    assert second.validation["auroc"] == pytest.approx(first.validation["auroc"])
    other = EvaluatorCache.key("another-task", EvaluatorConfig.from_settings(TINY))
    assert other != EvaluatorCache.key("task-key", EvaluatorConfig.from_settings(TINY))
    assert EvaluatorCache.key("task-key", EvaluatorConfig.from_settings({**TINY, "weights": "x"})) == \
        EvaluatorCache.key("task-key", EvaluatorConfig.from_settings(TINY))


def test_a_user_file_is_loaded_and_a_foreign_one_refused(tmp_path, evaluator, image_sets):
    path = evaluator.save(tmp_path / "good")
    loaded = evaluators.load_or_train_evaluator({"weights": str(path)}, "ignored",
                                                lambda split: pytest.fail("nothing to train"))
    np.testing.assert_allclose(loaded.predict(image_sets["val"].images)["label_probs"],
                               evaluator.predict(image_sets["val"].images)["label_probs"], atol=1e-6)

    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.ndim == 4)
    payload["state_dict"][name] = torch.zeros(3, 3, 3, 3)
    torch.save(payload, tmp_path / "wrong_shape.pt")
    torch.save(evaluator.network.state_dict(), tmp_path / "bare_state_dict.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01not a torch file")
    (tmp_path / "truncated.pt").write_bytes(path.read_bytes()[:1000])
    for bad in ("wrong_shape.pt", "bare_state_dict.pt", "garbage.pt", "truncated.pt"):
        with pytest.raises(UserInputError, match="not an ehrlab CXR evaluator"):
            CXREvaluator.load(tmp_path / bad)
    with pytest.raises(UserInputError, match="no such file"):
        CXREvaluator.load(tmp_path / "missing.pt")


def test_bad_options_are_user_errors():
    with pytest.raises(UserInputError, match="unknown option"):
        EvaluatorConfig.from_settings({"epoch": 3})
    with pytest.raises(UserInputError, match="architecture"):
        EvaluatorConfig.from_settings({"architecture": "resnet"})
    with pytest.raises(UserInputError, match="cannot build"):
        evaluators.EvaluatorNetwork("densenet", {"growth": 3}, 32, 2)


def test_a_vit_evaluator_builds_from_its_config_and_trains(image_sets):
    config = {"architecture": "vit", "epochs": 1, "batch_size": 32,
              "vit": {"patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "intermediate_size": 32}}
    vit = train_evaluator(image_sets["val"], image_sets["val"], config, progress=False)
    assert vit.predict(image_sets["val"].images[:3])["features"].shape == (3, 16)


def test_fid_is_zero_for_identical_sets_and_grows_with_noise(evaluator, image_sets):
    features, sentence = feature_network(evaluator)
    assert "project's own evaluator" in sentence
    images = image_sets["train"].images
    rng = np.random.default_rng(0)

    def noisy(scale):
        return np.clip(images + rng.normal(0, scale, images.shape), 0, 255).astype(np.uint8)

    same = frechet_distance(images, images, features, 32)
    small, large = (frechet_distance(images, noisy(s), features, 32) for s in (10, 60))
    assert same == pytest.approx(0.0, abs=1e-3)
    assert same < small < large


def test_fid_reads_a_torchscript_feature_file(tmp_path, evaluator, image_sets):
    class MeanPool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    torch.jit.save(torch.jit.script(MeanPool()), tmp_path / "features.pt")
    module, sentence = feature_network(evaluator, tmp_path / "features.pt")
    assert module.num_features == 16 and "TorchScript" in sentence
    images = image_sets["val"].images
    assert frechet_distance(images, images[::-1], module, 32) == pytest.approx(0.0, abs=1e-3)
    torch.save({"a": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(UserInputError, match="not a TorchScript module"):
        load_feature_file(tmp_path / "state.pt", 32)
