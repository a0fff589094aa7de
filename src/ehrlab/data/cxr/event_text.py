"""Medical events as text, as seed 004 Appendix A.4 writes them (after Hur et al. 2024).

Each event row becomes one string: the table name, then ``<column> <value>`` for every
non-null column in the file's column order, e.g.::

    labevents itemid pO2 value 85 valuenum 85 valueuom mm Hg flag abnormal priority STAT

Rules (the facts of the authors' code, `data_preprocessing/db_processing/ehrs/`, and the
choices made here where it is silent or odd):

- Dropped columns: the identifiers and times common to every table (`COMMON_DROPPED`:
  subject_id, hadm_id, stay_id, and the table's own event time, which places the event but is
  not in its text), plus each table's own list in `MIMIC_EVENT_TABLES` (its other ids, store
  times, end times, caregivers and order bookkeeping), which are the authors' per-table
  excludes. Every other column of the file is kept, in file order, so a release with extra
  columns writes them too.
- `itemid` is replaced by its label from `d_items` / `d_labitems` (an itemid without a label
  keeps its number).
- Values are trimmed; an empty value is a null, and null columns are left out.
- A value that is a decimal number (digits with a decimal point, optionally signed, or in
  exponent form) is rounded to 4 decimals and written without trailing zeros: "85.0000" ->
  "85", "7.123456" -> "7.1235", "-0.00001" -> "0". The authors round every decimal number
  inside any string the same way (Python's `round(x, 4)`); they keep "85.0" as "85.0",
  which would make "85.0" and "85" two different texts (two embeddings) of one value, so
  trailing zeros are dropped here. Integers ("85", "0012") are written as they stand, so
  codes with leading zeros survive; numbers inside longer text ("Aspirin 81 mg") are not
  touched.
- The strings are built column-wise with pyarrow compute (no loop over rows); see
  `event_text`.

The authors decode their text from BERT word pieces (lower-cased, digits spaced apart);
that is an artefact of their tokenizer, not part of the format, and is not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

DECIMALS = 4
# Plain or exponent-form decimal numbers; integers without a point or exponent are left as written.
_DECIMAL = r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$"

COMMON_DROPPED = ("subject_id", "hadm_id", "stay_id")


@dataclass(frozen=True)
class EventTable:
    """One MIMIC-IV event table: where it lies, its event time, the column a selection filters
    on, the dictionary that labels its itemids, and the columns left out of its text."""

    file: str  # path under the MIMIC-IV root, without suffix
    time: str  # the event's time
    key: str  # the column a selection rule filters on (itemid, drug, spec_type_desc)
    dictionary: str | None  # "hosp/d_labitems" / "icu/d_items": itemid -> label, category
    dropped: tuple[str, ...]  # besides COMMON_DROPPED and `time`

    def text_columns(self, header: Sequence[str]) -> list[str]:
        """The columns of a file (lowercase header, file order) that go into the text."""
        dropped = {*COMMON_DROPPED, self.time, *self.dropped}
        return [c for c in header if c not in dropped]


# The seven tables of seed 004 §4.1 / Appendix A.3, with the authors' per-table excludes.
MIMIC_EVENT_TABLES = {
    "labevents": EventTable("hosp/labevents", "charttime", "itemid", "hosp/d_labitems",
                            ("labevent_id", "specimen_id", "order_provider_id", "storetime")),
    "chartevents": EventTable("icu/chartevents", "charttime", "itemid", "icu/d_items",
                              ("caregiver_id", "storetime")),
    "inputevents": EventTable("icu/inputevents", "starttime", "itemid", "icu/d_items",
                              ("caregiver_id", "endtime", "storetime", "orderid", "linkorderid",
                               "continueinnextdept", "statusdescription")),
    "outputevents": EventTable("icu/outputevents", "charttime", "itemid", "icu/d_items",
                               ("caregiver_id", "storetime")),
    "procedureevents": EventTable("icu/procedureevents", "starttime", "itemid", "icu/d_items",
                                  ("caregiver_id", "endtime", "storetime", "orderid", "linkorderid",
                                   "continueinnextdept", "statusdescription")),
    "prescriptions": EventTable("hosp/prescriptions", "starttime", "drug", None,
                                ("pharmacy_id", "poe_id", "poe_seq", "order_provider_id", "stoptime",
                                 "formulary_drug_cd", "gsn", "ndc")),
    "microbiologyevents": EventTable("hosp/microbiologyevents", "charttime", "spec_type_desc", None,
                                     ("microevent_id", "micro_specimen_id", "order_provider_id", "chartdate",
                                      "storedate", "storetime", "spec_itemid", "test_itemid", "org_itemid",
                                      "ab_itemid")),
}


def clean_values(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any column as trimmed strings with decimal numbers rounded (see the module docstring);
    empty strings become nulls."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
        return _format_decimals(pc.cast(values, pa.float64()))
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    decimal = pc.fill_null(pc.match_substring_regex(text, _DECIMAL), False)
    if not pc.any(decimal).as_py():
        return text
    # Only the decimal rows are cast; the others get a placeholder number that if_else discards.
    numbers = pc.cast(pc.if_else(decimal, text, "0"), pa.float64())
    return pc.if_else(decimal, _format_decimals(numbers), text)


def _format_decimals(numbers: pa.Array) -> pa.Array:
    rounded = pc.add(pc.round(numbers, DECIMALS), 0.0)  # + 0.0 turns -0.0 into 0.0 ("0", not "-0")
    return pc.cast(rounded, pa.string())  # Arrow writes the shortest repr: 85.0 -> "85", 0.3 -> "0.3"


def relabel(itemids: pa.Array | pa.ChunkedArray, ids: pa.Array, labels: pa.Array) -> pa.Array:
    """itemid -> its label where `ids` has it (`labels[i]` for `ids[i]`), else the itemid as text."""
    position = pc.index_in(itemids, value_set=ids)
    named = pc.take(labels, position)
    return pc.coalesce(named, pc.cast(itemids, pa.string()))


def event_text(table: str, columns: dict[str, pa.Array | pa.ChunkedArray]) -> pa.Array:
    """``"<table> <column> <value> ..."`` for each row, over the non-null values of `columns`
    (name -> values, in the order they should appear; values cleaned with `clean_values`).

    `columns` holds what goes into the text only: drop ids and times before (see
    `EventTable.text_columns`), and relabel itemids first (`relabel`).
    """
    return join_fields(table, [(name, values) for name, values in columns.items()])


def join_fields(table: str | pa.Array | pa.ChunkedArray,
                fields: Sequence[tuple[str | None, pa.Array | pa.ChunkedArray]]) -> pa.Array:
    """The table name (one for all rows, or one per row), then for each field ``name value``
    (or ``value`` where name is None), skipping null values; one string per row."""
    if not fields:
        raise ValueError("join_fields needs at least one field")
    pieces: list = [pa.scalar(table, pa.string()) if isinstance(table, str) else table]
    for name, values in fields:
        cleaned = clean_values(values)
        piece = cleaned if name is None else pc.binary_join_element_wise(name, cleaned, " ")
        # null_handling="skip" drops the null pieces together with their separators.
        pieces.append(piece)
    return pc.binary_join_element_wise(*pieces, " ", null_handling="skip")
