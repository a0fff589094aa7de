"""MEDS (v0.4) dataset reader: `data/**/*.parquet`, `metadata/` optional.

A MEDS dataset is one long event table (subject_id, time, code, numeric_value). Which codes
a task needs is an option, `code_prefixes` (default: diagnoses, `DIAGNOSIS//`); the filter
is applied while reading each Parquet file, so unselected codes never reach memory.

MEDS has no admission id, so a visit is defined as the set of selected codes sharing one
timestamp: visit_id is a per-subject running index (0, 1, 2, ...) over the distinct times of
the selected events. This matches MIMIC-IV's MEDS-ETL output, where all diagnoses of an
admission carry its discharge time. visit_id is therefore unique only within a subject.

Static facts are read whatever the prefixes: `MEDS_BIRTH` (its time is the birth date),
`GENDER//<F|M|...>` and `RACE//<text>` (most frequent value per subject). They go into the
static table, never into the events, so they cannot create visits.

MEDS-ETL writes ICD codes undotted (`DIAGNOSIS//ICD//9//4019`); they are converted to the
dotted canonical form (`DIAGNOSIS//ICD//9//401.9`) used by every ehrlab reader, and the
same for `PROCEDURE//ICD//<9|10>//...`.

`metadata/subject_splits.parquet` (subject_id, split in train/tuning/held_out), when
present, is returned as `CanonicalTables.splits` so the pipeline can honour it.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from contextlib import contextmanager
from functools import reduce
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrlab.data import schema
from ehrlab.data.codes import normalize_diagnosis, normalize_procedure
from ehrlab.data.sources.base import CanonicalTables, Source, file_fingerprints
from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

BIRTH_CODE = "MEDS_BIRTH"
GENDER_PREFIX = "GENDER//"
RACE_PREFIX = "RACE//"
SPLITS_FILE = "metadata/subject_splits.parquet"
# MEDS-ETL's ICD codes: <kind>//ICD//<version>//<code>.
_ICD_PATTERN = r"^(?P<kind>DIAGNOSIS|PROCEDURE)//ICD//(?P<version>9|10)//(?P<icd>.+)$"
_GENDERS = {"F": "F", "FEMALE": "F", "M": "M", "MALE": "M"}


class MEDSSource(Source):
    """Reads a MEDS dataset directory into canonical tables.

    Args:
        root: the MEDS dataset folder (holding `data/` and optionally `metadata/`).
        code_prefixes: codes to read as events, by prefix (e.g. `["DIAGNOSIS//",
            "PROCEDURE//"]`; `[""]` reads every code).
    """

    name = "meds"

    def __init__(self, root: str | Path | None, code_prefixes: Sequence[str] = ("DIAGNOSIS//",)):
        if root is None or str(root) in ("", "???"):
            raise UserInputError(
                "data=meds needs the MEDS dataset directory: add data.root=/path/to/meds_dataset "
                "to the command line."
            )
        self.root = Path(root).expanduser().resolve()
        data_dir = self.root / "data"
        if not data_dir.is_dir():
            raise UserInputError(
                f"data.root={root}: no data/ folder in {self.root}; a MEDS dataset directory holds "
                f"data/**/*.parquet (and optionally metadata/)."
            )
        self.files = sorted(data_dir.rglob("*.parquet"))
        if not self.files:
            raise UserInputError(f"{data_dir}: no .parquet files found; expected data/**/*.parquet (MEDS).")
        code_prefixes = [code_prefixes] if isinstance(code_prefixes, str) else [str(p) for p in code_prefixes]
        if not code_prefixes:
            raise UserInputError('data.code_prefixes is empty: name at least one, e.g. ["DIAGNOSIS//"].')
        self.code_prefixes = sorted(set(code_prefixes))
        splits = self.root / SPLITS_FILE
        self.splits_path = splits if splits.is_file() else None

    def cache_identity(self) -> dict:
        return {
            "files": file_fingerprints([*self.files, self.splits_path]),
            "code_prefixes": self.code_prefixes,
        }

    def read(self) -> CanonicalTables:
        counts: dict[str, int] = {}
        rows = pa.concat_tables([self._read_file(path) for path in self.files]).to_pandas()
        code = rows["code"]
        is_static = (code == BIRTH_CODE) | code.str.startswith(GENDER_PREFIX) | code.str.startswith(RACE_PREFIX)
        events = rows.loc[~is_static]
        untimed = events["time"].isna()
        counts["events_missing_time"] = int(untimed.sum())
        if untimed.any():
            log.warning("meds: dropped %d selected events without a time (only static codes may lack one)",
                        int(untimed.sum()))
        events = events.loc[~untimed].sort_values(["subject_id", "time"], kind="stable", ignore_index=True)
        events["code"] = dotted_icd_codes(events["code"])
        events["visit_id"] = visit_index(events["subject_id"], events["time"])
        return CanonicalTables(
            events=schema.conform_events(events),
            static=schema.conform_static(_static_table(rows.loc[is_static], rows["subject_id"])),
            counts=counts,
            splits=self._read_splits(),
        )

    def _read_file(self, path: Path) -> pa.Table:
        """One shard's selected and static rows, cast to the canonical column types."""
        with _readable_parquet(path):
            names = pq.ParquetFile(path).schema_arrow.names
        missing = [c for c in ("subject_id", "time", "code") if c not in names]
        if missing:
            raise UserInputError(
                f"{path}: missing column(s) {', '.join(missing)}; a MEDS data file needs "
                f"subject_id, time, code (numeric_value optional); found {', '.join(names)}."
            )
        columns = ["subject_id", "time", "code"] + (["numeric_value"] if "numeric_value" in names else [])
        field = pc.field("code")
        wanted = [pc.starts_with(field, pattern=p) for p in self.code_prefixes] + [
            pc.equal(field, BIRTH_CODE),
            pc.starts_with(field, pattern=GENDER_PREFIX),
            pc.starts_with(field, pattern=RACE_PREFIX),
        ]
        with _readable_parquet(path):
            table = pq.read_table(path, columns=columns, filters=reduce(operator.or_, wanted))
        if "numeric_value" not in columns:
            table = table.append_column("numeric_value", pa.nulls(len(table), pa.float32()))
        target = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")),
                            ("code", pa.string()), ("numeric_value", pa.float32())])
        try:
            return table.select(target.names).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise UserInputError(
                f"{path}: columns must be subject_id int64, time timestamp, code string, "
                f"numeric_value float; found {table.schema} ({error})."
            ) from None

    def _read_splits(self) -> pd.DataFrame | None:
        if self.splits_path is None:
            return None
        with _readable_parquet(self.splits_path):
            splits = pq.read_table(self.splits_path).to_pandas()
        missing = [c for c in ("subject_id", "split") if c not in splits]
        if missing:
            raise UserInputError(
                f"{self.splits_path}: missing column(s) {', '.join(missing)}; expected subject_id, split."
            )
        splits = splits.loc[:, ["subject_id", "split"]].astype({"subject_id": "int64", "split": "str"})
        log.info("meds: honouring %s (%s)", self.splits_path,
                 ", ".join(f"{k}: {v}" for k, v in splits["split"].value_counts().items()))
        return splits.reset_index(drop=True)


@contextmanager
def _readable_parquet(path: Path):
    """Turn pyarrow's errors on a damaged Parquet file into one message naming the file.

    A truncated file lacks its footer and fails when opened; a damaged data page fails when
    read (a decompression or decoding error), so both the opening and the reading go here.
    """
    try:
        yield
    except (pa.ArrowInvalid, OSError) as error:
        raise UserInputError(
            f"{path}: not a readable Parquet file ({error}): the file looks truncated or corrupt "
            f"(re-download or re-export it)."
        ) from None


def dotted_icd_codes(codes: pd.Series) -> pd.Series:
    """MEDS-ETL ICD codes with the standard dot: `DIAGNOSIS//ICD//9//4019` -> `...//401.9`.

    Other codes pass through unchanged. Work is done once per distinct code, not per row.
    """
    ids, uniques = pd.factorize(codes)
    uniques = pd.Series(uniques, dtype="str")
    parts = uniques.str.extract(_ICD_PATTERN)
    for kind, normalize in (("DIAGNOSIS", normalize_diagnosis), ("PROCEDURE", normalize_procedure)):
        hit = parts["kind"] == kind
        if hit.any():
            dotted = normalize(parts.loc[hit, "icd"], parts.loc[hit, "version"])
            uniques.loc[hit] = kind + "//ICD//" + parts.loc[hit, "version"] + "//" + dotted
    return pd.Series(uniques.to_numpy()[ids], index=codes.index, dtype="str")


def visit_index(subject_id: pd.Series, time: pd.Series) -> pd.Series:
    """Per-subject running index of distinct times (rows sorted by subject, then time)."""
    new_subject = subject_id.ne(subject_id.shift())
    new_visit = new_subject | time.ne(time.shift())
    running = new_visit.cumsum()
    first_of_subject = running.where(new_subject).ffill()
    return (running - first_of_subject).astype("Int64")


def _static_table(rows: pd.DataFrame, subjects: pd.Series) -> pd.DataFrame:
    """birth_date, gender and race per subject from MEDS_BIRTH / GENDER// / RACE// rows."""
    static = pd.DataFrame({"subject_id": pd.unique(subjects)}).sort_values("subject_id", ignore_index=True)
    birth = rows.loc[rows["code"] == BIRTH_CODE].groupby("subject_id")["time"].min()
    gender_rows = rows.loc[rows["code"].str.startswith(GENDER_PREFIX)]
    gender = gender_rows["code"].str.slice(len(GENDER_PREFIX)).str.upper().map(_GENDERS).fillna("U")
    gender = gender.groupby(gender_rows["subject_id"]).first()
    race_rows = rows.loc[rows["code"].str.startswith(RACE_PREFIX)]
    race = (
        pd.DataFrame({"subject_id": race_rows["subject_id"], "race": race_rows["code"].str.slice(len(RACE_PREFIX))})
        .value_counts(sort=False)
        .rename("n")
        .reset_index()
        .sort_values(["subject_id", "n", "race"], ascending=[True, False, True])
        .drop_duplicates("subject_id")
        .set_index("subject_id")["race"]
    )
    # reindex rather than map: it keeps the datetime dtype when no subject has a birth row.
    for column, values in (("birth_date", birth), ("gender", gender), ("race", race)):
        static[column] = values.reindex(static["subject_id"]).to_numpy()
    return static
