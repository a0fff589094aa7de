"""The canonical tables every source becomes, and the long format generators emit.

Readers (``data/sources``) produce exactly these tables; tasks (``data/tasks``) consume only
these. Nothing downstream of a reader knows which raw format the data came from.

Events follow MEDS v0.4 (``subject_id`` int64, ``time`` timestamp, ``code`` string,
``numeric_value`` float, null where none) plus ``visit_id``: the admission (hadm_id) the
event belongs to, null for events outside an admission.

Codes are namespaced as in MEDS-ETL's MIMIC conventions so one table can hold several
vocabularies, e.g. ``DIAGNOSIS//ICD//9//401.9`` or ``LAB//50912//mg/dL``. ICD codes carry
the standard dot (see ``ehrlab.data.codes``).
"""

from __future__ import annotations

import pandas as pd

from ehrlab.errors import UserInputError

EVENT_COLUMNS = ["subject_id", "time", "code", "numeric_value", "visit_id"]
EVENT_DTYPES = {
    "subject_id": "int64",
    "time": "datetime64[us]",
    "code": "str",
    "numeric_value": "float32",
    "visit_id": "Int64",
}

STATIC_COLUMNS = ["subject_id", "birth_date", "gender", "race"]
STATIC_DTYPES = {
    "subject_id": "int64",
    "birth_date": "datetime64[us]",
    "gender": "str",  # "F", "M" or "U" (unknown)
    "race": "str",  # free text as in the source; "UNKNOWN" where absent
}

# The long table of visits and codes that generators emit and the synthetic-EHR
# evaluation reads (one row per code occurrence; `time` optional).
LONG_COLUMNS = ["subject_id", "visit_id", "code"]

# Special entries of every code vocabulary: id 0 pads visits and codes; id 1 stands for a
# code that the training split never shows (seed 002 F.4: the vocabulary is built from the
# training split only).
PAD_CODE = "[PAD]"
UNKNOWN_CODE = "[UNK]"

# Synthetic patients are numbered from here on, and every reader's subject ids must lie
# below it (checked in conform_events / conform_static): a synthetic id can never be a real
# patient's, and, unlike an offset past the largest real id, it reveals nothing about them.
# MIMIC-III ids have 5-6 digits, MIMIC-IV ids 8.
SYNTHETIC_SUBJECT_ID_START = 10**12

DIAGNOSIS_PREFIX = "DIAGNOSIS//ICD//"
PROCEDURE_PREFIX = "PROCEDURE//ICD//"
MEDICATION_PREFIX = "MEDICATION//"


def diagnosis_code(icd_version: int | str, icd_code: str) -> str:
    """`DIAGNOSIS//ICD//9//401.9` for an already-normalised ICD code."""
    return f"{DIAGNOSIS_PREFIX}{icd_version}//{icd_code}"


def strip_namespace(code: str) -> str:
    """The bare code after the last ``//`` (``DIAGNOSIS//ICD//9//401.9`` -> ``401.9``)."""
    return code.rsplit("//", 1)[-1]


def conform_events(events: pd.DataFrame) -> pd.DataFrame:
    """Select, order and cast the canonical event columns (adds missing optional ones)."""
    events = events.copy()
    if "numeric_value" not in events:
        events["numeric_value"] = None
    if "visit_id" not in events:
        events["visit_id"] = None
    events = events.loc[:, EVENT_COLUMNS].astype(EVENT_DTYPES)
    check_subject_ids(events["subject_id"], "events")
    return events


def conform_static(static: pd.DataFrame) -> pd.DataFrame:
    static = static.copy()
    for column, fill in (("race", "UNKNOWN"), ("gender", "U")):
        if column not in static:
            static[column] = fill
        static[column] = static[column].fillna(fill)
    if "birth_date" not in static:
        static["birth_date"] = pd.NaT
    static = static.loc[:, STATIC_COLUMNS].astype(STATIC_DTYPES)
    check_subject_ids(static["subject_id"], "patients")
    return static


def check_subject_ids(subject_ids: pd.Series, table: str) -> None:
    """Real subject ids are non-negative and below SYNTHETIC_SUBJECT_ID_START."""
    if len(subject_ids) and (subject_ids.min() < 0 or subject_ids.max() >= SYNTHETIC_SUBJECT_ID_START):
        raise UserInputError(
            f"the source's {table} hold subject ids outside 0 .. {SYNTHETIC_SUBJECT_ID_START - 1:,} "
            f"(found {subject_ids.min()} .. {subject_ids.max()}): ehrlab numbers synthetic patients from "
            f"{SYNTHETIC_SUBJECT_ID_START:,} on, so real ids must stay below; renumber the source's subjects.")
