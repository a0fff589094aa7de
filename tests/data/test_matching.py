"""Risk-cohort matching checked exactly (seed 000 §4.2; README, *Risk cohorts*).

A cohort written by hand as canonical tables, where the right answer is known without the
task's code: cases in two strata of gender × 10-year age band at the index time, one
stratum with more controls than three per case and one with fewer, controls without
history, and controls outside every stratum (other gender, other band, unknown gender,
unknown birth date, a band's edge). Every expectation below is written out, not computed
by the task's helpers.

The index time is the first target diagnosis for a case, the last visit for a control; the
age is taken there, so patients whose age band changes between their first and their index
visit sit in the band of the index visit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ehrlab.data.schema import conform_events, conform_static
from ehrlab.data.sources.base import CanonicalTables
from ehrlab.data.tasks.risk import RiskTask
from ehrlab.errors import UserInputError

TARGETS = {"icd9": ["428*"], "icd10": []}
YEAR = 365.25  # days: ages are measured in Julian years


def dx(code: str) -> str:
    return f"DIAGNOSIS//ICD//9//{code}"


# subject_id: (gender, age in years at the index visit or None for an unknown birth date,
#              [(day of the visit, [its codes in the source's order]), ...])
# The index visit is the first holding a 428.x code for a case, the last visit for a control.
CASES = {
    # F, 60.3 at onset (day 300) but 59.5 at its first visit: stratum F 60-69.
    1: ("F", 60.3, [(0, ["250.00"]), (100, ["401.9", "414.01"]), (250, ["486"]),
                    (300, ["428.0", "401.9"]), (400, ["428.22", "584.9"])]),
    2: ("F", 67.5, [(0, ["401.9", "250.00"]), (200, ["428.0"]), (500, ["428.0"])]),
    # M 70-79. Patient 3's onset visit lists other codes before the target one.
    3: ("M", 74.5, [(0, ["584.9"]), (30, ["276.5", "584.9"]), (60, ["V45.81", "428.22", "401.9"])]),
    4: ("M", 71.2, [(0, ["414.01"]), (10, ["428.0"])]),
    # M 40-49, target at its first visit: no history, so it is dropped and asks for no controls.
    5: ("M", 45.5, [(0, ["428.0", "401.9"]), (50, ["250.00"])]),
}
CONTROLS = {
    # Stratum F 60-69: eight controls with history for two cases (more than 3 per case).
    11: ("F", 61.5, [(0, ["401.9"]), (150, ["250.00", "276.5"]), (400, ["486"])]),
    12: ("F", 62.5, [(0, ["584.9"]), (20, ["401.9"])]),
    **{sid: ("F", age, [(0, ["401.9"]), (200, ["250.00"])])
       for sid, age in zip(range(13, 19), (63.5, 64.5, 65.5, 66.5, 67.5, 68.5))},
    19: ("F", 65.5, [(0, ["401.9"])]),  # a single visit: no history
    # Stratum M 70-79: four controls with history for two cases (fewer than 3 per case).
    # Patient 21 is 69.6 at its first visit and 70.4 at its last (292 days later).
    21: ("M", 70.4, [(0, ["414.01"]), (292, ["401.9"])]),
    **{sid: ("M", age, [(0, ["250.00"]), (120, ["486"])])
       for sid, age in zip(range(22, 25), (72.5, 75.5, 78.5))},
    25: ("M", 72.5, [(0, ["250.00"])]),  # a single visit: no history
    # Outside both strata.
    31: ("F", 45.5, [(0, ["401.9"]), (200, ["486"])]),  # F 40-49
    32: ("F", 48.5, [(0, ["401.9"]), (200, ["486"])]),  # F 40-49
    33: ("M", 65.5, [(0, ["401.9"]), (200, ["486"])]),  # the F stratum's band, other gender
    34: ("F", 75.5, [(0, ["401.9"]), (200, ["486"])]),  # the M stratum's band, other gender
    35: ("M", 42.5, [(0, ["401.9"]), (200, ["486"])]),  # the dropped case's stratum
    36: ("U", 64.5, [(0, ["401.9"]), (200, ["486"])]),  # unknown gender, the F stratum's band
    37: ("F", None, [(0, ["401.9"]), (200, ["486"])]),  # unknown birth date
    38: ("F", 59.8, [(0, ["401.9"]), (292, ["486"])]),  # 59.0 .. 59.8: F 50-59, not rounded up
}

STRATUM_F60 = {11, 12, 13, 14, 15, 16, 17, 18}
STRATUM_M70 = {21, 22, 23, 24}
OUTSIDE = {31, 32, 33, 34, 35, 36, 37, 38}
WITHOUT_HISTORY = {19, 25}
CONTROLS_WITH_HISTORY = STRATUM_F60 | STRATUM_M70 | OUTSIDE  # 20
assert CONTROLS_WITH_HISTORY | WITHOUT_HISTORY == set(CONTROLS)

# Every patient's input visits with the defaults (gap_days 0): a case's visits before its
# first target diagnosis, a control's visits but its last.
INPUT_VISITS = {
    1: [["250.00"], ["401.9", "414.01"], ["486"]],
    2: [["401.9", "250.00"]],
    3: [["584.9"], ["276.5", "584.9"]],
    4: [["414.01"]],
    11: [["401.9"], ["250.00", "276.5"]],
    12: [["584.9"]],
    21: [["414.01"]],
    22: [["250.00"]],
    31: [["401.9"]],
}


def make_tables() -> CanonicalTables:
    """The patients above as a reader produces them, every one in the training split (so
    that the vocabulary holds every code and no input code becomes [UNK])."""
    events, static = [], []
    for sid, (gender, age, visits) in {**CASES, **CONTROLS}.items():
        start = pd.Timestamp("2150-01-01") + pd.Timedelta(days=37 * sid)  # each patient its own dates
        if sid in CASES:
            index_day = next(day for day, codes in visits if any(c.startswith("428") for c in codes))
        else:
            index_day = visits[-1][0]
        birth = start + pd.Timedelta(days=index_day) - pd.Timedelta(days=age * YEAR) if age is not None else pd.NaT
        static.append({"subject_id": sid, "birth_date": birth, "gender": gender, "race": "UNKNOWN"})
        for number, (day, codes) in enumerate(visits):
            for code in codes:
                events.append({"subject_id": sid, "time": start + pd.Timedelta(days=day), "code": dx(code),
                               "numeric_value": np.nan, "visit_id": sid * 100 + number})
    splits = pd.DataFrame({"subject_id": [row["subject_id"] for row in static], "split": "train"})
    return CanonicalTables(events=conform_events(pd.DataFrame(events)), static=conform_static(pd.DataFrame(static)),
                           counts={}, splits=splits)


@pytest.fixture(scope="module")
def tables():
    return make_tables()


def cohort(data) -> dict[int, int]:
    """subject_id -> label of every patient in the task's splits."""
    return {int(s): int(y) for part in data.splits.values() for s, y in zip(part.subject_id, part.label)}


def controls_of(data) -> set[int]:
    return {s for s, y in cohort(data).items() if y == 0}


def input_visits(data, subject_id: int) -> list[list[str]]:
    """A patient's input visits as bare ICD codes."""
    for part in data.splits.values():
        where = np.flatnonzero(part.subject_id == subject_id)
        if len(where):
            one = part.subset(where)
            bare = [code.rsplit("//", 1)[-1] for code in data.vocabulary]
            return [[bare[c] for c in one.codes[one.code_offsets[v]:one.code_offsets[v + 1]]]
                    for v in range(one.n_visits)]
    raise KeyError(subject_id)


def build(tables, seed: int = 0, **options):
    return RiskTask("heart_failure", TARGETS, max_visits=None, **options).build(tables, seed=seed)


def test_three_controls_per_case_from_the_cases_own_stratum(tables):
    data = build(tables)
    assert {s for s, y in cohort(data).items() if y == 1} == {1, 2, 3, 4}
    chosen = controls_of(data)
    # F 60-69: 2 cases × 3 = 6 of its 8 controls; M 70-79: 2 × 3 = 6 wanted, all 4 it has.
    assert chosen <= STRATUM_F60 | STRATUM_M70
    assert len(chosen & STRATUM_F60) == 6
    assert chosen & STRATUM_M70 == STRATUM_M70
    dropped = data.stats["dropped"]
    assert dropped["controls_not_matched"] == 20 - 10  # the 2 left in F 60-69 and the 8 outside
    assert dropped["matching_shortfall"] == 12 - 10  # M 70-79 is 2 controls short
    assert dropped["cases_without_enough_history"] == 1  # patient 5
    assert dropped["controls_without_enough_history"] == 2  # patients 19 and 25
    assert data.stats["n_positive"] == 4 and data.stats["n_negative"] == 10


@pytest.mark.parametrize("per_case", [1, 2, 3, 5])
def test_each_stratum_gets_its_quota_or_everything_it_has(tables, per_case):
    data = build(tables, controls_per_case=per_case)
    chosen = controls_of(data)
    f60, m70 = min(2 * per_case, 8), min(2 * per_case, 4)  # two cases in each stratum
    assert chosen <= STRATUM_F60 | STRATUM_M70
    assert len(chosen & STRATUM_F60) == f60 and len(chosen & STRATUM_M70) == m70
    assert data.stats["dropped"]["controls_not_matched"] == 20 - f60 - m70
    assert data.stats["dropped"]["matching_shortfall"] == 4 * per_case - f60 - m70
    assert data.stats["n_negative"] == f60 + m70


@pytest.mark.parametrize(("match_on", "pools"), [
    # pool of controls with history -> its cases with history
    (["gender"], [({11, 12, 13, 14, 15, 16, 17, 18, 31, 32, 34, 37, 38}, 2),  # F: cases 1, 2
                  ({21, 22, 23, 24, 33, 35}, 2)]),  # M: cases 3, 4 (5 has no history)
    (["age_band"], [({11, 12, 13, 14, 15, 16, 17, 18, 33, 36}, 2),  # 60-69: cases 1, 2
                    ({21, 22, 23, 24, 34}, 2)]),  # 70-79: cases 3, 4
])
def test_matching_on_one_attribute(tables, match_on, pools):
    data = build(tables, match_on=match_on)
    chosen = controls_of(data)
    expected = [min(3 * n_cases, len(pool)) for pool, n_cases in pools]
    for (pool, _), n in zip(pools, expected):
        assert len(chosen & pool) == n, pool
    assert chosen <= set().union(*(pool for pool, _ in pools))
    assert data.stats["dropped"]["controls_not_matched"] == 20 - sum(expected)
    assert data.stats["dropped"]["matching_shortfall"] == 12 - sum(expected)


def test_without_a_quota_every_control_with_history_is_kept(tables):
    data = build(tables, controls_per_case=None)
    assert controls_of(data) == CONTROLS_WITH_HISTORY
    assert data.stats["n_negative"] == 20
    assert data.stats["dropped"].get("controls_not_matched", 0) == 0
    assert data.stats["dropped"].get("matching_shortfall", 0) == 0


def test_the_choice_is_seeded(tables):
    choices = {seed: controls_of(build(tables, seed=seed)) for seed in range(6)}
    assert controls_of(build(tables, seed=3)) == choices[3]
    for chosen in choices.values():  # only the oversubscribed stratum leaves a choice
        assert chosen & STRATUM_M70 == STRATUM_M70 and len(chosen & STRATUM_F60) == 6
    # 28 ways to choose 6 of 8: six seeds that all chose alike would mean no randomness
    assert len({frozenset(c) for c in choices.values()}) > 1


def test_input_visits_of_cases_and_controls(tables):
    data = build(tables, controls_per_case=None)
    for sid, visits in INPUT_VISITS.items():
        assert input_visits(data, sid) == visits, sid
    assert not any(code.endswith(("428.0", "428.22")) for code in data.vocabulary)  # the label never leaks
    assert dx("V45.81") not in data.vocabulary  # only on patient 3's onset visit


def test_gap_days_drops_input_visits_before_the_index_visit(tables):
    data = build(tables, controls_per_case=None, gap_days=100)
    # Case 1 (onset day 300): day 250 is within 100 days, days 0 and 100 are not.
    assert input_visits(data, 1) == [["250.00"], ["401.9", "414.01"]]
    assert input_visits(data, 2) == [["401.9", "250.00"]]  # 200 days before its onset
    assert input_visits(data, 11) == [["401.9"], ["250.00", "276.5"]]  # 400 and 250 days before its last
    assert input_visits(data, 22) == [["250.00"]]  # 120 days before its last
    # Cases 3 and 4 had visits only 10-60 days before onset; control 12 only 20 days before.
    assert {s for s, y in cohort(data).items() if y == 1} == {1, 2}
    assert controls_of(data) == CONTROLS_WITH_HISTORY - {12}
    assert data.stats["dropped"]["cases_without_enough_history"] == 3  # 3, 4, 5
    assert data.stats["dropped"]["controls_without_enough_history"] == 3  # 12, 19, 25
    longer = build(tables, controls_per_case=None, gap_days=260)
    assert input_visits(longer, 1) == [["250.00"]]  # 300 days before its onset
    assert input_visits(longer, 11) == [["401.9"]]  # 400 days before its last visit; day 150 is 250
    assert {s for s, y in cohort(longer).items() if y == 1} == {1}


def test_matching_after_the_gap_counts_only_cases_left_with_history(tables):
    """Under a 100-day gap the M 70-79 cases have no input left: that stratum asks for no
    controls, and the index time (so the age band) of everyone else is unchanged."""
    data = build(tables, gap_days=100)
    chosen = controls_of(data)
    assert len(chosen) == 6 and chosen <= STRATUM_F60 - {12}
    assert data.stats["dropped"]["controls_not_matched"] == 19 - 6
    assert data.stats["dropped"]["matching_shortfall"] == 0


def test_min_visits_counts_visits_up_to_the_index_visit(tables):
    """task.min_visits: a patient needs that many visits up to and including its index visit.
    At 3: case 1 (3 visits before onset) and case 3 (2) stay; case 2 (one visit before
    onset, one after: 3 in its record, 2 up to the index), case 4 (2) and case 5 (onset at
    its first visit) go; of the controls only patient 11 has 3 visits."""
    data = build(tables, min_visits=3)
    assert cohort(data) == {1: 1, 3: 1, 11: 0}
    dropped = data.stats["dropped"]
    assert dropped["cases_below_min_visits"] == 3  # patients 2, 4, 5
    assert dropped["controls_below_min_visits"] == len(CONTROLS) - 1
    assert dropped["cases_without_enough_history"] == 0
    assert dropped["controls_without_enough_history"] == 0
    assert input_visits(data, 3) == INPUT_VISITS[3]


def test_min_visits_two_is_the_default_cohort_with_its_drops_named(tables):
    """"At least two admissions" (seed 000 Table 1's MIMIC column): with min_history_visits 1
    every kept patient already has an input visit and its index visit, so the cohort is the
    default one; the patients with a single visit up to the index are counted as below
    min_visits instead of as without history."""
    default, two = build(tables), build(tables, min_visits=2)
    assert cohort(two) == cohort(default)
    assert two.stats["dropped"]["cases_below_min_visits"] == 1  # patient 5
    assert two.stats["dropped"]["controls_below_min_visits"] == 2  # patients 19 and 25
    assert two.stats["dropped"]["cases_without_enough_history"] == 0
    assert two.stats["dropped"]["controls_without_enough_history"] == 0
    assert default.stats["dropped"]["cases_below_min_visits"] == 0


def test_min_visits_below_one_is_a_user_error():
    with pytest.raises(UserInputError, match="task.min_visits"):
        RiskTask("heart_failure", TARGETS, min_visits=0)
