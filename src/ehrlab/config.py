"""Hydra wiring shared by run.py and the tests.

Sweep configs live in the top-level `sweeps/` folder (where users look for them) rather
than in `conf/`; they are registered here as the `sweep` config group, in the global
package, so that `python run.py -m sweep=seeds` works.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"
SWEEPS_DIR = PROJECT_ROOT / "sweeps"


def register_sweeps(sweeps_dir: Path = SWEEPS_DIR) -> list[str]:
    store = ConfigStore.instance()
    names = []
    for path in sorted(sweeps_dir.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")
        names.append(path.stem)
    return names


def set_run_id() -> str:
    """A per-invocation id in the run directory's name: jobs started in the same second
    (parallel sweeps, several shells) never share a directory. Child processes of a
    multirun inherit the parent's id; their subdirectories differ by job number."""
    return os.environ.setdefault("EHRLAB_RUN_ID", secrets.token_hex(3))
