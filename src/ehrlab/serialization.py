"""Strict JSON for results files: NaN and infinities become null, numpy scalars Python numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_safe(value):
    """`value` with NaN/inf replaced by None and numpy types by Python ones, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, value, sort_keys: bool = False) -> None:
    Path(path).write_text(json.dumps(json_safe(value), indent=2, sort_keys=sort_keys))
