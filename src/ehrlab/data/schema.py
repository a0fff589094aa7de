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

DIAGNOSIS_PREFIX = "DIAGNOSIS//ICD//"
PROCEDURE_PREFIX = "PROCEDURE//ICD//"
MEDICATION_PREFIX = "MEDICATION//"
LAB_PREFIX = "LAB//"


def diagnosis_code(icd_version: int | str, icd_code: str) -> str:
    """`DIAGNOSIS//ICD//9//401.9` for an already-normalised ICD code."""
    return f"{DIAGNOSIS_PREFIX}{icd_version}//{icd_code}"


def strip_namespace(code: str) -> str:
    """The bare code after the last ``//`` (``DIAGNOSIS//ICD//9//401.9`` -> ``401.9``)."""
    return code.rsplit("//", 1)[-1]


def empty_events() -> pd.DataFrame:
    return conform_events(pd.DataFrame({c: [] for c in EVENT_COLUMNS}))


def conform_events(events: pd.DataFrame) -> pd.DataFrame:
    """Select, order and cast the canonical event columns (adds missing optional ones)."""
    events = events.copy()
    if "numeric_value" not in events:
        events["numeric_value"] = None
    if "visit_id" not in events:
        events["visit_id"] = None
    events = events.loc[:, EVENT_COLUMNS]
    return events.astype(EVENT_DTYPES)


def conform_static(static: pd.DataFrame) -> pd.DataFrame:
    static = static.copy()
    for column, fill in (("race", "UNKNOWN"), ("gender", "U")):
        if column not in static:
            static[column] = fill
        static[column] = static[column].fillna(fill)
    if "birth_date" not in static:
        static["birth_date"] = pd.NaT
    static = static.loc[:, STATIC_COLUMNS]
    return static.astype(STATIC_DTYPES)
