"""Finding and reading the raw CSV tables of a MIMIC-style release.

Real releases differ in ways that must not matter to a user: MIMIC-III ships UPPERCASE
file names and headers, its demo and MIMIC-IV lowercase ones; files are `.csv` or
`.csv.gz`. Every reader goes through `find_table` and `read_table`, which accept all of
these and return lowercase column names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ehrlab.errors import UserInputError

log = logging.getLogger(__name__)

_SUFFIXES = (".csv.gz", ".csv")


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


def read_table(
    path: Path,
    columns: list[str],
    *,
    dtype: dict[str, str] | None = None,
    dates: list[str] = (),
    required: list[str] | None = None,
) -> pd.DataFrame:
    """Read `columns` (lowercase names) of a CSV whose header may be in either case.

    Columns in `required` (default: all of `columns`) must exist; the others are filled with
    nulls when absent. Dates are parsed strictly: an unparsable value is an error naming the
    file and column, never a silent NaT.
    """
    required = list(columns) if required is None else required
    header = pd.read_csv(path, nrows=0).columns
    by_lower = {c.lower(): c for c in header}
    missing = [c for c in required if c not in by_lower]
    if missing:
        raise UserInputError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}."
        )
    present = [c for c in columns if c in by_lower]
    dtype = {by_lower[c]: t for c, t in (dtype or {}).items() if c in by_lower}
    frame = pd.read_csv(path, usecols=[by_lower[c] for c in present], dtype=dtype, engine="pyarrow"
                        if not dtype else "c")
    frame.columns = [c.lower() for c in frame.columns]
    for column in columns:
        if column not in frame:
            frame[column] = None
    for column in dates:
        frame[column] = parse_dates(frame[column], path, column)
    return frame.loc[:, list(columns)]


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
