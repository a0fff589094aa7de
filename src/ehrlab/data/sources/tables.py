"""Finding and reading the raw CSV tables of a MIMIC-style release.

Real releases differ in ways that must not matter to a user: MIMIC-III ships UPPERCASE
file names and headers, its demo and MIMIC-IV lowercase ones; files are `.csv` or
`.csv.gz`. Every reader goes through `find_table` and `read_table` / `csv_batches`, which
accept all of these and return lowercase column names.

Damaged files are the other thing every reader shares, and they are handled here once:
an empty file, binary data, text that is not UTF-8, a truncated or corrupt gzip stream, and
rows whose number of fields differs from the header's (a file cut mid-line ends with one)
each stop the run with a `UserInputError` naming the file, the line where it is known, and
the fix; `on_bad_lines="skip"` drops the bad rows instead, counted (see `read_csv`).
Every CSV is parsed by pyarrow, serially (`use_threads=False`): that is what makes pyarrow
report the line of a bad row, and on a 490 MB table it cost nothing measurable against the
threaded reader, whose streaming mode is serial at heart. The checks that pyarrow does not
do read the first 64 KiB of each file and the last 64 KiB of an uncompressed one; no file
is read twice.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

_SUFFIXES = (".csv.gz", ".csv")
ON_BAD_LINES = ("error", "skip")
# Streaming block size: ~40k rows of labevents, so per-block Python overhead is negligible;
# on 10x the demo's labevents, 4 MB blocks peaked at ~110 MiB where 16 MB blocks took ~210.
_BLOCK_BYTES = 4 << 20
# How much of a file's (decompressed) start is checked for binary data and encoding.
_HEAD_BYTES = 1 << 16
_CORRUPT = "the file looks truncated or corrupt"
_SKIP_HINT = "data.source.on_bad_lines=skip drops such rows with a warning"


def check_root(root: str | Path | None, source: str) -> Path:
    """The data directory as a Path, or a clear error naming the option to set."""
    if root is None or str(root) in ("", "???"):
        raise UserInputError(
            f"data={source} needs the directory of your {source.upper()} files: "
            f"add data.root=/path/to/{source} to the command line."
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserInputError(
            f"data.root={root} is not a directory: point data.root at the folder holding "
            f"the {source.upper()} CSV files."
        )
    return path.resolve()


def find_table(root: Path, name: str) -> Path | None:
    """`root/name.csv[.gz]`, matching the file name in any letter case; None if absent.

    `name` may contain a subfolder (`hosp/admissions`).
    """
    folder = root
    *parents, stem = name.split("/")
    for part in parents:
        matches = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() == part.lower()]
        if not matches:
            return None
        folder = matches[0]
    candidates = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for suffix in _SUFFIXES:
        hit = candidates.get(stem.lower() + suffix)
        if hit is not None:
            return hit
    return None


def require_table(root: Path, name: str, source: str) -> Path:
    path = find_table(root, name)
    if path is None:
        raise UserInputError(
            f"{source}: required table {name}.csv or {name}.csv.gz (any letter case) "
            f"is missing from {root}."
        )
    return path


def locate_tables(root: Path, source: str, required: dict[str, str], optional: dict[str, str],
                  requested: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Paths of the required tables and of the requested optional ones.

    `required` and `optional` map an option name ("diagnoses", "labevents") to a file stem
    ("DIAGNOSES_ICD", "hosp/labevents"). A missing required table is an error; a missing
    optional one is a logged warning and comes back in the list of missing options.
    """
    unknown = set(requested) - set(required) - set(optional)
    if unknown:
        raise UserInputError(
            f"data.source.tables: unknown table(s) {sorted(unknown)} for {source}; "
            f"valid: {', '.join([*required, *optional])}."
        )
    paths = {name: require_table(root, stem, source) for name, stem in required.items()}
    missing = []
    for name in sorted(set(requested) & set(optional)):
        path = find_table(root, optional[name])
        if path is None:
            log.warning("%s: optional table %s(.csv/.csv.gz) not found in %s; skipped", source, optional[name], root)
            missing.append(name)
        else:
            paths[name] = path
    return paths, missing


def check_on_bad_lines(value: str) -> str:
    """The `on_bad_lines` option, validated when the reader is built (before any reading)."""
    if value not in ON_BAD_LINES:
        raise UserInputError(
            f"data.source.on_bad_lines={value!r}: choose error (stop at the first row whose number "
            f"of fields differs from the header's; the default) or skip (drop such rows with a warning)."
        )
    return value


def read_table(
    path: Path,
    columns: dict[str, pa.DataType],
    *,
    dates: list[str] = (),
    required: list[str] | None = None,
    on_bad_lines: str = "error",
    counts: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Read `columns` (lowercase names -> pyarrow types) of a CSV whose header may be in either case.

    Columns in `required` (default: all of `columns`) must exist; the others are filled with
    nulls when absent. Columns in `dates` are read as text and parsed strictly: an
    unparsable value is an error naming the file and column, never a silent NaT. Types are
    given, not inferred, because pyarrow infers them from the first block only: a column
    empty there would be typed null and fail further down. Integer columns with nulls come
    back as float64, as pandas reads them. Bad rows: see `read_csv`.
    """
    types = {c: pa.string() if c in dates else t for c, t in columns.items()}
    frame = read_csv(path, types, required=required, on_bad_lines=on_bad_lines, counts=counts).to_pandas()
    for column in columns:
        if column not in frame:
            frame[column] = None
    for column in dates:
        frame[column] = parse_dates(frame[column], path, column)
    return frame.loc[:, list(columns)]


def read_csv(
    path: Path,
    columns: dict[str, pa.DataType],
    *,
    required: list[str] | None = None,
    select: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
    on_bad_lines: str = "error",
    counts: dict[str, int] | None = None,
) -> pa.Table:
    """`columns` of a (possibly gzipped) CSV, streamed in blocks, keeping what `select(batch)` returns.

    The header may be in either letter case; columns come back lowercase, in the order of
    `columns`. Those in `required` (default: all) must exist, the others are left out when
    absent. `select` filters (or transforms) each block, so a table larger than memory
    can be reduced while it is read.

    Rows whose number of fields differs from the header's, and a last line cut inside a
    quoted value (see `_last_line_cut_in_quotes`), are an error naming the file and line
    (`on_bad_lines="error"`), or dropped (`"skip"`): a warning gives the number per file and
    `counts["<file stem>_bad_lines_skipped"]` records it, zero included, so that
    data_stats.json shows the option was on. Other damage is an error in either mode.
    """
    header = csv_header(path)
    lowered = [name.lower() for name in header]
    required = list(columns) if required is None else required
    missing = [c for c in required if c not in lowered]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}.")
    present = {c: t for c, t in columns.items() if c in lowered}
    cut_at = _last_line_cut_in_quotes(path)
    if cut_at is not None and on_bad_lines == "error":
        raise UserInputError(f"{path}: its last line ends inside a quoted value: {_CORRUPT} "
                             f"(re-download it; {_SKIP_HINT}).")
    bad_rows = []

    def on_invalid_row(row) -> str:
        bad_rows.append(row)
        return "skip" if on_bad_lines == "skip" else "error"

    kept = []
    try:
        # Skipping a last line cut inside quotes: read the bytes before it, without a copy.
        with (pa.input_stream(str(path), compression="detect") if cut_at is None
              else pa.BufferReader(pa.memory_map(str(path)).read_buffer(cut_at))) as stream:
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(column_names=lowered, skip_rows=1, block_size=_BLOCK_BYTES,
                                                use_threads=False),
                parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid_row),
                convert_options=pa_csv.ConvertOptions(include_columns=list(present), column_types=present,
                                                      strings_can_be_null=True),
            )
            for batch in reader:
                kept.append(select(batch) if select else batch)
            if not kept:  # a header alone: still the selected columns, with their types
                empty = pa.RecordBatch.from_pylist([], schema=reader.schema)
                kept.append(select(empty) if select else empty)
    except pa.ArrowInvalid as error:
        if bad_rows and on_bad_lines == "error":
            row = bad_rows[0]
            line = "a row" if row.number is None else f"line {row.number}"
            raise UserInputError(
                f"{path}: {line} has {row.actual_columns} field(s), the header has {row.expected_columns}: "
                f"{_CORRUPT} (re-download it; {_SKIP_HINT})."
            ) from None
        raise UserInputError(_conversion_message(path, lowered, present, error)) from None
    except OSError as error:  # pyarrow's decompression errors (a cut or damaged .gz) are OSErrors
        raise UserInputError(f"{path}: could not be read to the end ({error}): {_CORRUPT} "
                             f"(re-download it).") from None
    skipped = len(bad_rows) + (cut_at is not None)
    if on_bad_lines == "skip" and counts is not None:
        counts[f"{_file_stem(path)}_bad_lines_skipped"] = skipped
    if skipped:
        log.warning("%s: skipped %d row(s) whose number of fields differs from the header's or that were "
                    "cut (data.source.on_bad_lines=skip)", path, skipped)
    return pa.Table.from_batches(kept)


def csv_header(path: Path) -> list[str]:
    """The header row of a (possibly gzipped) CSV, as written (any letter case).

    Reading it checks the file's first 64 KiB (decompressed) for what pyarrow would not
    name clearly: an empty file, binary data (NUL bytes: a Parquet or zip file, UTF-16 text,
    a `.csv` that is really gzipped) and text that is not UTF-8.
    """
    if path.stat().st_size == 0:
        raise UserInputError(f"{path}: the file is empty: {_CORRUPT} (re-download it).")
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            head = stream.read(_HEAD_BYTES)
    except OSError as error:
        raise UserInputError(f"{path}: could not be read ({error}): {_CORRUPT} (re-download it).") from None
    if not head.strip():
        raise UserInputError(f"{path}: the file has no header line (it is empty once decompressed): "
                             f"{_CORRUPT} (re-download it).")
    if b"\0" in head:
        hint = " It is gzip-compressed: name it .csv.gz." if head.startswith(b"\x1f\x8b") else ""
        line = head.count(b"\n", 0, head.index(b"\0")) + 1
        raise UserInputError(f"{path}: line {line} holds binary data (NUL bytes), so this is not a CSV text "
                             f"file: {_CORRUPT} (re-download it).{hint}")
    try:
        # Incremental: the 64 KiB block may end inside a multi-byte character.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as error:
        line = head.count(b"\n", 0, error.start) + 1
        raise UserInputError(_not_utf8(path, f"line {line}")) from None
    line = head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    return next(csv.reader(io.StringIO(line)), [])


def _last_line_cut_in_quotes(path: Path) -> int | None:
    """Where the last line starts, if an uncompressed file ends inside a quoted value; else None.

    A file cut mid-line usually leaves a last row with too few fields, which pyarrow reports.
    Cut inside a quoted value, though, the row keeps its fields and pyarrow accepts the
    unterminated quote (`"250` for `"25000"`): an odd number of quotes on a last line
    without a newline is what gives it away. Cut inside an unquoted last value, the file
    looks exactly like one written without a final newline, so that only gets a warning.
    Gzipped files need none of this: their stream tells when it was cut. Reads the last
    64 KiB only.
    """
    if path.name.lower().endswith(".gz"):
        return None
    size = path.stat().st_size
    with path.open("rb") as raw:
        raw.seek(max(0, size - _HEAD_BYTES))
        tail = raw.read()
    if tail.endswith(b"\n"):
        return None
    start = tail.rfind(b"\n") + 1
    if start > 0 and tail.count(b'"', start) % 2:
        return size - len(tail) + start
    log.warning("%s does not end with a newline: if the file was cut, the value of its last row may be "
                "truncated (re-download it if in doubt)", path)
    return None


def _conversion_message(path: Path, header: list[str], columns: dict[str, pa.DataType],
                        error: pa.ArrowInvalid) -> str:
    """A pyarrow conversion error, with the column's name for pyarrow's column number."""
    text = str(error)
    where = re.match(r"In CSV column #(\d+): (?:Row #(\d+): )?", text)
    column = header[int(where.group(1))] if where and int(where.group(1)) < len(header) else None
    line = f"line {where.group(2)}" if where and where.group(2) else None
    if "invalid UTF8" in text:
        return _not_utf8(path, ", ".join(filter(None, [line, column and f"column {column}"])))
    expected = ", ".join(f"{c} ({t})" for c, t in columns.items())
    place = " ".join(filter(None, [line and f"{line},", column and f"column {column}:"]))
    return f"{path}: could not read it as CSV with columns {expected}: {place} {text[where.end() if where else 0:]}"


def _not_utf8(path: Path, where: str) -> str:
    return (f"{path}: {where} is not UTF-8 text: convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), "
            f"or re-download it if it should already be.")


def _file_stem(path: Path) -> str:
    """`DIAGNOSES_ICD.csv.gz` -> `diagnoses_icd`: the file's name in `counts` keys."""
    return path.name.lower().removesuffix(".gz").removesuffix(".csv")


def parse_dates(values: pd.Series, path: Path, column: str) -> pd.Series:
    parsed = pd.to_datetime(values, errors="coerce")
    bad = parsed.isna() & values.notna()
    if bad.any():
        example = values[bad].iloc[0]
        raise UserInputError(
            f"{path}: column {column} has {int(bad.sum())} unparsable date(s), "
            f"e.g. {example!r}; expected dates like 2150-01-31 12:00:00."
        )
    return parsed.astype("datetime64[us]")
