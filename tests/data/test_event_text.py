"""Events as text (seed 004 Appendix A.4) and the event-selection rules."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from ehrlab.data.cxr.event_selection import EventSelection
from ehrlab.data.cxr.event_text import MIMIC_EVENT_TABLES, clean_values, event_text, join_fields, relabel
from ehrlab.errors import UserInputError

PAPER_SELECTION = Path(__file__).resolve().parents[2] / "conf" / "data" / "event_selection" / "paper.yaml"


def test_decimals_are_rounded_to_four_places_without_trailing_zeros():
    values = pa.array(["85.0000", " 7.123456 ", "0012", "", None, "-0.00001", "1.5e3", "Aspirin 81.55 mg", "3.",
                       "-2.50"])
    assert clean_values(values).to_pylist() == ["85", "7.1235", "0012", None, None, "0", "1500", "Aspirin 81.55 mg",
                                                "3", "-2.5"]
    assert clean_values(pa.array([85.0, None, 0.1 + 0.2])).to_pylist() == ["85", None, "0.3"]


def test_itemids_become_labels_and_unknown_ones_keep_their_number():
    assert relabel(pa.array([50821, 1, None]), pa.array([50821]), pa.array(["pO2"])).to_pylist() == ["pO2", "1", None]


def test_event_text_writes_table_then_non_null_columns_in_order():
    texts = event_text("labevents", {
        "itemid": pa.array(["pO2", "pH"]),
        "value": pa.array(["85.0", None]),
        "valuenum": pa.array([85.0, 7.41]),
        "valueuom": pa.array(["mm Hg", "units"]),
    })
    assert texts.to_pylist() == ["labevents itemid pO2 value 85 valuenum 85 valueuom mm Hg",
                                 "labevents itemid pH valuenum 7.41 valueuom units"]


def test_join_fields_takes_one_table_name_per_row_and_unnamed_fields():
    texts = join_fields(pa.array(["labs", "meds"]), [(None, pa.array(["pO2", "Furosemide"])),
                                                    (None, pa.array(["85.00", "40"])), (None, pa.array(["mmHg", None]))])
    assert texts.to_pylist() == ["labs pO2 85 mmHg", "meds Furosemide 40"]


def test_text_columns_drop_ids_times_and_the_authors_excludes():
    header = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
              "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority",
              "comments"]
    assert MIMIC_EVENT_TABLES["labevents"].text_columns(header) == [
        "itemid", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority", "comments"]


def test_selection_rules_are_validated_by_name():
    with pytest.raises(UserInputError, match="unknown table 'labs'"):
        EventSelection({"labs": "all"})
    with pytest.raises(UserInputError, match="unknown rule 'drugs'.*chartevents"):
        EventSelection({"chartevents": {"drugs": ["Furosemide"]}})
    with pytest.raises(UserInputError, match="itemids must be integers"):
        EventSelection({"chartevents": {"itemids": ["x"]}})
    with pytest.raises(UserInputError, match="must be a list"):
        EventSelection({"prescriptions": {"drugs": "Furosemide"}})
    with pytest.raises(UserInputError, match="unknown rule 'categories'"):
        EventSelection({"labs": {"categories": ["Blood Gas"]}}, tables=None)


def test_none_and_missing_tables_are_not_read_and_all_has_no_filter():
    selection = EventSelection({"chartevents": "all", "labevents": "none"})
    assert selection.reads("chartevents") and not selection.reads("labevents")
    assert not selection.reads("prescriptions")
    assert selection.row_filter("chartevents") is None
    assert all(EventSelection(None).reads(table) for table in MIMIC_EVENT_TABLES)


def test_paper_drug_list_matches_common_drugs_without_case_or_spaces():
    selection = EventSelection(yaml.safe_load(PAPER_SELECTION.read_text()))
    row_filter = selection.row_filter("prescriptions")
    drugs = ["Furosemide", "vancomycin", "Piperacillin-Tazobactam", "Ceftriaxone", " albuterol ", "CeftriaXONE",
             "Tobramycin Sulfate", "Insulin", "Acetaminophen"]
    kept = row_filter.mask(pa.table({"drug": drugs})).to_pylist()
    assert kept == [True] * 6 + [False] * 3  # tobramycin: removed by the authors' code


def test_categories_and_labels_resolve_to_itemids_by_union():
    dictionary = pd.DataFrame({"itemid": [1, 2, 3], "label": ["pO2", "C-Reactive Protein", "Sodium"],
                               "category": ["Blood Gas", "Chemistry", "Chemistry"]})
    selection = EventSelection({"labevents": {"categories": ["blood gas"], "labels": ["c-reactive protein"]}})
    row_filter = selection.row_filter("labevents", dictionary)
    assert row_filter.itemids.to_pylist() == [1, 2]
    assert row_filter.mask(pa.table({"itemid": [1, 2, 3, None]})).to_pylist() == [True, True, False, False]
