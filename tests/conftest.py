"""Shared test set-up: offline, one prepared-data cache per session, composed configs."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from support import compose_config  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One prepared-data cache for the whole session (the synthetic source is generated once)."""
    path = tmp_path_factory.mktemp("ehrlab-cache")
    os.environ["EHRLAB_CACHE"] = str(path)
    return path


@pytest.fixture
def make_config(tmp_path, cache_dir):
    def make(*overrides: str, shrink: bool = True, run_dir: Path | None = None):
        return compose_config(list(overrides), run_dir or tmp_path / "run", cache_dir, shrink)

    return make
