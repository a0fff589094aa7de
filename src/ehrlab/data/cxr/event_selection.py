"""Which events a CXR source reads: the `data.source.event_selection` mapping, validated and
turned into per-table row filters.

Seed 004 Appendix A.3: "for each event table, medical experts selected items or categories
that are most likely to correlate with observable changes in CXR images". The selection is
data (`conf/data/event_selection/paper.yaml` holds the authors' lists, `all.yaml` switches it
off); this module knows only the rule names:

| rule                | selects rows whose                                  | tables                  |
|---------------------|-----------------------------------------------------|-------------------------|
| ``all``             | (every row)                                         | any                     |
| ``none``            | (table not read; leaving the table out is the same) | any                     |
| ``categories``      | itemid's d_items / d_labitems ``category`` is listed | the five itemid tables  |
| ``labels``          | itemid's ``label`` is listed                        | the five itemid tables  |
| ``itemids``         | ``itemid`` is listed (integers)                     | the five itemid tables  |
| ``order_categories``| ``ordercategoryname`` is listed                     | inputevents, procedureevents |
| ``drugs``           | ``drug`` is listed                                  | prescriptions           |
| ``specimens``       | ``spec_type_desc`` is listed                        | microbiologyevents      |

A rule with several keys selects the union of what each selects. Text is matched exactly
after trimming spaces and ignoring letter case (the authors' lists spell one drug several
ways, "CeftriaXONE" / "CefTRIAXone", because MIMIC does; their exact, case-sensitive match is
a subset of this one).

A `cxr_folder` source has free table names and no item dictionary: its rules may only be
``all``, ``none`` or ``items`` (matched against the `item` column; ``labels``, ``drugs`` and
``specimens`` are accepted as other names for it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ehrlab.errors import UserInputError

OPTION = "data.source.event_selection"
ITEM_RULES = ("categories", "labels", "itemids")
# Rule name -> the event-table column whose text it matches.
TEXT_RULES = {"order_categories": "ordercategoryname", "drugs": "drug", "specimens": "spec_type_desc"}
MIMIC_RULES = {
    "labevents": ITEM_RULES,
    "chartevents": ITEM_RULES,
    "outputevents": ITEM_RULES,
    "inputevents": (*ITEM_RULES, "order_categories"),
    "procedureevents": (*ITEM_RULES, "order_categories"),
    "prescriptions": ("drugs",),
    "microbiologyevents": ("specimens",),
}
FOLDER_RULES = ("items", "labels", "drugs", "specimens")
ALL, NONE = "all", "none"


def normalise_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Trimmed, case-folded strings: how selection lists and event values are compared."""
    return pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(values, pa.string())))


@dataclass(frozen=True)
class TableRule:
    """One table's rule: `lists` maps a rule name to its values; empty = every row."""

    table: str
    lists: dict[str, tuple] = field(default_factory=dict)

    @property
    def selects_all(self) -> bool:
        return not self.lists


class EventSelection:
    """A validated selection: `rules` maps each table to read to its `TableRule`.

    Args:
        config: table -> rule, as in `conf/data/event_selection/*.yaml` (a dict or an
            OmegaConf mapping); None reads every table of `tables` unfiltered.
        tables: the known tables and the rule names each accepts (default: MIMIC-IV's seven);
            None for a `cxr_folder` source, whose table names are free and whose rules are
            FOLDER_RULES.
    """

    def __init__(self, config: Mapping | None, tables: Mapping[str, tuple[str, ...]] | None = MIMIC_RULES):
        self.known = tables
        if config is None:
            config = {table: ALL for table in (tables or {})} if tables is not None else None
        self.read_everything = config is None  # a folder without a selection: every table, every row
        self.rules: dict[str, TableRule] = {}
        if config is None:
            return
        if not isinstance(config, Mapping):
            raise UserInputError(f"{OPTION} must map table names to rules (all, none, or a mapping such as "
                                 f"{{drugs: [Furosemide]}}); got {config!r}.")
        for table, rule in config.items():
            table = str(table)
            if tables is not None and table not in tables:
                raise UserInputError(f"{OPTION}: unknown table {table!r}; valid tables: {', '.join(tables)}.")
            parsed = self._parse_rule(table, rule)
            if parsed is not None:
                self.rules[table] = parsed

    def _parse_rule(self, table: str, rule) -> TableRule | None:
        allowed = self.known[table] if self.known is not None else FOLDER_RULES
        if rule is None or (isinstance(rule, str) and rule.strip().lower() == NONE):
            return None
        if isinstance(rule, str) and rule.strip().lower() == ALL:
            return TableRule(table)
        if not isinstance(rule, Mapping) or not rule:
            raise UserInputError(f"{OPTION}.{table}: expected all, none or a mapping of {', '.join(allowed)} "
                                 f"to lists; got {rule!r}.")
        lists = {}
        for key, values in rule.items():
            key = str(key)
            if key not in allowed:
                raise UserInputError(f"{OPTION}.{table}: unknown rule {key!r}; valid for {table}: "
                                     f"{', '.join(allowed)}.")
            if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
                raise UserInputError(f"{OPTION}.{table}.{key} must be a list, got {values!r}.")
            values = list(values)
            if key == "itemids":
                try:
                    lists[key] = tuple(sorted({int(v) for v in values}))
                except (TypeError, ValueError):
                    raise UserInputError(f"{OPTION}.{table}.itemids must be integers, got {values!r}.") from None
            else:
                if not all(isinstance(v, str) for v in values):
                    raise UserInputError(f"{OPTION}.{table}.{key} must be a list of names, got {values!r}.")
                lists[key] = tuple(sorted({v.strip().lower() for v in values}))
        return TableRule(table, lists)

    def identity(self) -> dict:
        """What the selection is, for a cache key."""
        if self.read_everything:
            return {"*": ALL}
        return {table: (ALL if rule.selects_all else {k: list(v) for k, v in rule.lists.items()})
                for table, rule in sorted(self.rules.items())}

    def reads(self, table: str) -> bool:
        return self.read_everything or table in self.rules

    def needs_dictionary(self, table: str) -> bool:
        rule = self.rules.get(table)
        return rule is not None and any(key in rule.lists for key in ("categories", "labels"))

    def row_filter(self, table: str, dictionary: pd.DataFrame | None = None) -> RowFilter | None:
        """The filter of `table`'s rows, or None when every row is selected.

        `dictionary` (itemid, label, category: d_items / d_labitems) resolves the
        ``categories`` and ``labels`` rules to itemids; it must be given when they are used.
        """
        rule = self.rules.get(table)
        if rule is None or rule.selects_all:
            return None
        if self.known is None:  # a folder: every rule matches the item column
            names = sorted({v for values in rule.lists.values() for v in values})
            return RowFilter(itemids=None, texts={"item": pa.array(names, pa.string())})
        itemids = set(rule.lists.get("itemids", ()))
        if self.needs_dictionary(table):
            if dictionary is None:
                raise ValueError(f"row_filter({table!r}) needs the item dictionary")
            for key, column in (("categories", "category"), ("labels", "label")):
                if key in rule.lists:
                    wanted = pa.array(rule.lists[key], pa.string())
                    hit = pc.fill_null(pc.is_in(normalise_text(pa.array(dictionary[column], pa.string())),
                                                value_set=wanted), False)
                    itemids.update(int(i) for i in dictionary["itemid"].to_numpy()[hit.to_numpy(zero_copy_only=False)])
        texts = {TEXT_RULES[key]: pa.array(values, pa.string())
                 for key, values in rule.lists.items() if key in TEXT_RULES}
        has_item_rule = any(key in rule.lists for key in ITEM_RULES)
        return RowFilter(itemids=pa.array(sorted(itemids), pa.int64()) if has_item_rule else None, texts=texts)


@dataclass(frozen=True)
class RowFilter:
    """Rows selected by itemid (int64 values) or by a text column (case-folded values); a row
    is kept if any of them selects it."""

    itemids: pa.Array | None
    texts: dict[str, pa.Array]

    @property
    def columns(self) -> list[str]:
        return (["itemid"] if self.itemids is not None else []) + list(self.texts)

    def mask(self, batch: pa.RecordBatch | pa.Table) -> pa.Array:
        keep = None
        if self.itemids is not None:
            keep = pc.is_in(batch["itemid"], value_set=self.itemids)
        for column, values in self.texts.items():
            hit = pc.is_in(normalise_text(batch[column]), value_set=values)
            keep = hit if keep is None else pc.or_(keep, hit)
        return pc.fill_null(keep, False)
