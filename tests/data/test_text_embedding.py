"""The event-text embedder: each distinct string encoded once, ever, per model."""

from __future__ import annotations

import numpy as np
import pytest

from ehrlab.data.cxr.text_embedding import DEFAULT_MODEL, TextEmbedder
from ehrlab.errors import UserInputError


class CountingEncoder:
    """A fake sentence model that records what it was asked to encode."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, strings: list[str]) -> np.ndarray:
        self.calls.append(list(strings))
        return np.array([[len(s), s.count("a"), 1.0] for s in strings], dtype=np.float32)


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_each_string_is_encoded_once_across_runs(tmp_path, model):
    encoder = CountingEncoder()
    first = TextEmbedder(model, cache_dir=tmp_path, encoder=encoder, progress=False)
    vectors = first.embed(["labevents a", "b", "labevents a", "cc"])
    assert encoder.calls == [["labevents a", "b", "cc"]]
    np.testing.assert_array_equal(vectors, encoder(["labevents a", "b", "labevents a", "cc"]))
    encoder.calls.clear()

    # another run (a new embedder on the same store): only the new string is encoded
    again = TextEmbedder(model, cache_dir=tmp_path, encoder=encoder, progress=False)
    vectors = again.embed(["cc", "new one", "b"])
    assert encoder.calls == [["new one"]]
    np.testing.assert_array_equal(vectors, encoder(["cc", "new one", "b"]))
    encoder.calls.clear()
    assert again.embed(["b", "new one"]).shape == (2, 3) and encoder.calls == []


def test_store_is_per_model_and_survives_a_damaged_shard(tmp_path, model):
    encoder = CountingEncoder()
    TextEmbedder(model, cache_dir=tmp_path, encoder=encoder, progress=False).embed(["x", "y"])
    (model / "config.json").write_text('{"hidden_size": 8}')  # another model version in the same folder
    other = TextEmbedder(model, cache_dir=tmp_path, encoder=encoder, progress=False)
    other.embed(["x"])
    assert encoder.calls[-1] == ["x"]
    next(other.store.glob("*.vectors.npy")).write_bytes(b"not numpy")
    np.testing.assert_array_equal(other.embed(["x", "y"]), encoder(["x", "y"]))


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="not a sentence-transformers model folder"):
        TextEmbedder(tmp_path / "no-model", cache_dir=tmp_path)


def test_packaged_minilm_is_384_wide_and_deterministic(tmp_path):
    texts = ["labevents itemid pO2 valuenum 85 valueuom mm Hg", "prescriptions drug Furosemide",
             "chartevents itemid Heart Rate valuenum 90"]
    first = TextEmbedder(DEFAULT_MODEL, cache_dir=tmp_path / "a", progress=False).embed(texts)
    second = TextEmbedder(DEFAULT_MODEL, cache_dir=tmp_path / "b", progress=False).embed(texts[::-1])
    assert first.shape == (3, 384) and first.dtype == np.float32
    np.testing.assert_allclose(first, second[::-1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)  # the model's Normalize module
    assert not np.allclose(first[0], first[1])
