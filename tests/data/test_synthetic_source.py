"""`data=synthetic`'s cache key: the generated folder is regenerated when any module of the
generator package changes, not only its `__init__`."""

from __future__ import annotations

import shutil
from pathlib import Path

from ehrlab.data import synthetic
from ehrlab.data.sources.synthetic import SyntheticSource

PACKAGE = Path(synthetic.__file__).parent


def test_an_edit_to_any_generator_module_changes_the_cache_key(tmp_path, monkeypatch):
    def cache_key() -> str:  # a new source each time: a source computes its key once
        return SyntheticSource(cache_dir=tmp_path / "cache", n_patients=50).cache_key()

    key = cache_key()
    # Point the package at an editable copy of itself, then edit one module at a time.
    copy = tmp_path / "synthetic"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(synthetic, "__file__", str(copy / "__init__.py"))
    assert cache_key() == key  # identical sources, identical key

    modules = sorted(path.name for path in copy.glob("*.py"))
    assert {"__init__.py", "catalogue.py", "cohorts.py", "patients.py", "writers.py"} <= set(modules)
    keys = {}
    for name in modules:
        path = copy / name
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        keys[name] = cache_key()
        path.write_text(original)
    unchanged = [name for name, edited_key in keys.items() if edited_key == key]
    assert not unchanged, f"edits to {unchanged} keep the cached folder"
    assert len(set(keys.values())) == len(modules)
    assert cache_key() == key  # restored sources, original key
