"""The events of the phantom's stays, in MIMIC-IV 2.2's tables, headers and item names.

Two kinds of events:
- the drivers of `model` (diuretic, fluid load, thoracentesis, antibiotic course, sputum
  culture), drawn for each interval between consecutive studies and placed strictly inside
  it (at least 5 % of the interval away from either study);
- noise, independent of every finding: vital-sign rounds (chartevents: heart rate, SpO2,
  respiratory rate, non-invasive blood pressure, temperature), blood gases and C-reactive
  protein (labevents), routine chemistry and blood counts (labevents, outside the paper's
  selection), Foley urine (outputevents), dextrose maintenance (inputevents), heparin,
  metoprolol, albuterol, pantoprazole and acetaminophen orders (prescriptions), a central
  line at ICU admission and a chest X-ray procedure at each study's exact time
  (procedureevents), blood cultures (microbiologyevents).
Values are rounded as the bedside monitor or the laboratory reports them (whole beats,
0.01 pH, 0.1 mmol/L lactate, 5 mL urine, ...), which keeps the distinct event strings of the
default size in the low thousands (each distinct string is embedded once by the task).
Item ids and labels are MIMIC-IV's own (d_items / d_labitems), categories included, so the
paper's event selection keeps or drops them as it would real rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ehrlab.data.synthetic_cxr.model import Cohort

MINUTE = np.timedelta64(60, "s")

HEADERS = {
    "hosp/patients": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "hosp/admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
                       "admission_location,discharge_location,insurance,language,marital_status,race,edregtime,"
                       "edouttime,hospital_expire_flag",
    "hosp/d_labitems": "itemid,label,fluid,category",
    "hosp/labevents": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,value,"
                      "valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments",
    "hosp/prescriptions": "subject_id,hadm_id,pharmacy_id,poe_id,poe_seq,order_provider_id,starttime,stoptime,"
                          "drug_type,drug,formulary_drug_cd,gsn,ndc,prod_strength,form_rx,dose_val_rx,dose_unit_rx,"
                          "form_val_disp,form_unit_disp,doses_per_24_hrs,route",
    "hosp/microbiologyevents": "microevent_id,subject_id,hadm_id,micro_specimen_id,order_provider_id,chartdate,"
                               "charttime,spec_itemid,spec_type_desc,test_seq,storedate,storetime,test_itemid,"
                               "test_name,org_itemid,org_name,isolate_num,quantity,ab_itemid,ab_name,dilution_text,"
                               "dilution_comparison,dilution_value,interpretation,comments",
    "icu/d_items": "itemid,label,abbreviation,linksto,category,unitname,param_type,lownormalvalue,highnormalvalue",
    "icu/icustays": "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "icu/chartevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,"
                       "warning",
    "icu/inputevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,amount,amountuom,"
                       "rate,rateuom,orderid,linkorderid,ordercategoryname,secondaryordercategoryname,"
                       "ordercomponenttypedescription,ordercategorydescription,patientweight,totalamount,"
                       "totalamountuom,isopenbag,continueinnextdept,statusdescription,originalamount,originalrate",
    "icu/outputevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valueuom",
    "icu/procedureevents": "subject_id,hadm_id,stay_id,caregiver_id,starttime,endtime,storetime,itemid,value,"
                           "valueuom,location,locationcategory,orderid,linkorderid,ordercategoryname,"
                           "ordercategorydescription,patientweight,isopenbag,continueinnextdept,statusdescription,"
                           "ORIGINALAMOUNT,ORIGINALRATE",
}
EVENT_TABLES = ("hosp/labevents", "hosp/prescriptions", "hosp/microbiologyevents", "icu/chartevents",
                "icu/inputevents", "icu/outputevents", "icu/procedureevents")

D_ITEMS = pd.DataFrame([
    (220045, "Heart Rate", "HR", "chartevents", "Routine Vital Signs", "bpm", "Numeric"),
    (220277, "O2 saturation pulseoxymetry", "SpO2", "chartevents", "Respiratory", "%", "Numeric"),
    (220210, "Respiratory Rate", "RR", "chartevents", "Respiratory", "insp/min", "Numeric"),
    (220179, "Non Invasive Blood Pressure systolic", "NBPs", "chartevents", "Routine Vital Signs", "mmHg", "Numeric"),
    (220180, "Non Invasive Blood Pressure diastolic", "NBPd", "chartevents", "Routine Vital Signs", "mmHg", "Numeric"),
    (220181, "Non Invasive Blood Pressure mean", "NBPm", "chartevents", "Routine Vital Signs", "mmHg", "Numeric"),
    (223761, "Temperature Fahrenheit", "Temperature F", "chartevents", "Routine Vital Signs", "°F", "Numeric"),
    (225158, "NaCl 0.9%", "NaCl 0.9%", "inputevents", "Fluids/Intake", "mL", "Solution"),
    (225828, "LR", "LR", "inputevents", "Fluids/Intake", "mL", "Solution"),
    (220949, "Dextrose 5%", "Dextrose 5%", "inputevents", "Fluids/Intake", "mL", "Solution"),
    (221794, "Furosemide (Lasix)", "Furosemide (Lasix)", "inputevents", "Medications", "mg", "Solution"),
    (226559, "Foley", "Foley", "outputevents", "Output", "mL", "Numeric"),
    (226590, "L Pleural #1", "L Pleural #1", "outputevents", "Output", "mL", "Numeric"),
    (226593, "R Pleural #1", "R Pleural #1", "outputevents", "Output", "mL", "Numeric"),
    (225479, "Thoracentesis", "Thoracentesis", "procedureevents", "4-Procedures", "None", "Processes"),
    (225459, "Chest X-Ray", "Chest X-Ray", "procedureevents", "5-Imaging", "None", "Processes"),
    (229581, "Portable Chest X-Ray", "Portable Chest X-Ray", "procedureevents", "5-Imaging", "None", "Processes"),
    (224263, "Multi Lumen", "Multi Lumen", "procedureevents", "Access Lines - Invasive", "None", "Processes"),
], columns=["itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type"])

D_LABITEMS = pd.DataFrame([
    (50821, "pO2", "Blood", "Blood Gas"), (50818, "pCO2", "Blood", "Blood Gas"), (50820, "pH", "Blood", "Blood Gas"),
    (50813, "Lactate", "Blood", "Blood Gas"), (50889, "C-Reactive Protein", "Blood", "Chemistry"),
    (50912, "Creatinine", "Blood", "Chemistry"), (51222, "Hemoglobin", "Blood", "Hematology"),
    (51301, "White Blood Cells", "Blood", "Hematology"),
], columns=["itemid", "label", "fluid", "category"])

# labevents: itemid -> (unit, reference low, high, decimals, mean, spread, clip low, clip high)
_LABS = {
    50821: ("mm Hg", 85, 105, 0, 95, 30, 40, 400), 50818: ("mm Hg", 35, 45, 0, 41, 7, 20, 90),
    50820: ("units", 7.35, 7.45, 2, 7.39, 0.05, 7.05, 7.6), 50813: ("mmol/L", 0.5, 2, 1, 1.6, 0.9, 0.4, 9.0),
    50889: ("mg/L", 0, 5, 0, 40, 40, 1, 300), 50912: ("mg/dL", 0.5, 1.2, 1, 1.2, 0.5, 0.3, 6.0),
    51222: ("g/dL", 13.7, 17.5, 1, 10.5, 1.8, 6.0, 16.0), 51301: ("K/uL", 4, 11, 1, 9.5, 3.5, 1.0, 30.0),
}
# chartevents vitals: itemid -> (unit, mean, patient spread, visit spread, decimals, low, high)
_VITALS = {
    220045: ("bpm", 86, 10, 7, 0, 40, 170), 220277: ("%", 96.5, 1.2, 1.5, 0, 82, 100),
    220210: ("insp/min", 19, 3, 3, 0, 8, 40), 220179: ("mmHg", 121, 13, 10, 0, 70, 200),
    220180: ("mmHg", 64, 8, 7, 0, 30, 120), 223761: ("°F", 98.6, 0.4, 0.6, 1, 95.0, 104.0),
}
_PRESCRIPTION_COLUMNS = ("drug_type", "drug", "formulary_drug_cd", "gsn", "ndc", "prod_strength", "form_rx",
                         "dose_val_rx", "dose_unit_rx", "form_val_disp", "form_unit_disp", "doses_per_24_hrs", "route")
# drug templates (the values MIMIC-IV's prescriptions show for these orders)
FUROSEMIDE = (("MAIN", "Furosemide", "FURO40I", "008209", "00409610202", "40mg/4mL Vial", "", "40", "mg", "1", "VIAL",
               "1", "IV"),
              ("MAIN", "Furosemide", "FURO20", "008208", "51079007220", "20mg Tablet", "", "20", "mg", "1", "TAB", "1",
               "PO/NG"),
              ("MAIN", "Furosemide", "FURO40I", "008209", "00409610202", "40mg/4mL Vial", "", "80", "mg", "2", "VIAL",
               "2", "IV"))
ANTIBIOTICS = (("MAIN", "Vancomycin", "VANC1F", "043952", "00338355148", "1 g Frozen Bag", "", "1000", "mg", "1",
                "BAG", "2", "IV"),
               ("MAIN", "Piperacillin-Tazobactam", "ZOSY4FPB", "040819", "00206886202", "4.5 g Frozen Bag", "", "4.5",
                "g", "1", "BAG", "3", "IV"),
               ("MAIN", "CefTRIAXone", "CEFR1I", "009162", "00409733201", "1g Vial", "", "1", "gm", "1", "VIAL", "1",
                "IV"))
OTHER_DRUGS = (("MAIN", "Heparin", "HEPA5I", "006549", "63323026201", "5000 Units / mL- 1mL Vial", "", "5000", "UNIT",
                "1", "mL", "3", "SC"),
               ("MAIN", "Metoprolol Tartrate", "METO25", "005132", "51079025520", "25mg Tablet", "", "25", "mg", "1",
                "TAB", "2", "PO/NG"),
               ("MAIN", "Albuterol 0.083% Neb Soln", "ALBU3H", "028090", "00487950101", "2.5mg/3mL Neb", "", "1",
                "NEB", "1", "AMP", "6", "IH"),
               ("MAIN", "Pantoprazole", "PANT40", "027462", "00008084181", "40mg Tablet", "", "40", "mg", "1", "TAB",
                "1", "PO"),
               ("MAIN", "Acetaminophen", "ACET325", "004489", "00904198861", "325mg Tablet", "", "650", "mg", "2",
                "TAB", "4", "PO/NG"))
SPUTUM_ORGANISMS = ("STAPH AUREUS COAG +", "KLEBSIELLA PNEUMONIAE", "PSEUDOMONAS AERUGINOSA", "ESCHERICHIA COLI",
                    "STREPTOCOCCUS PNEUMONIAE")
SPUTUM_NEGATIVE = ("SPARSE GROWTH Commensal Respiratory Flora.", "MODERATE GROWTH Commensal Respiratory Flora.",
                   "NO GROWTH.")
GROWTH = ("SPARSE GROWTH", "MODERATE GROWTH", "HEAVY GROWTH")
GRAM_STAIN = ("<10 PMNs and <10 epithelial cells/100X field.", ">25 PMNs and <10 epithelial cells/100X field.",
              "1+ (<1 per 1000X FIELD): GRAM POSITIVE COCCI.")


def _clock(times: np.ndarray) -> np.ndarray:
    """datetime64 -> MIMIC's "YYYY-MM-DD HH:MM:SS" text."""
    if len(times) == 0:
        return np.zeros(0, dtype="<U19")
    return np.char.replace(np.datetime_as_string(times.astype("datetime64[s]"), unit="s"), "T", " ")


def _spread(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, count: np.ndarray,
            low: float = 0.0, high: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """`count[i]` times per span i, spread evenly with jitter over the fraction low..high of
    (start[i], end[i]) and floored to the minute: (span index, time) per event."""
    owner = np.repeat(np.arange(len(start)), count)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    fraction = low + (high - low) * (rank + rng.uniform(0.1, 0.9, len(owner))) / np.repeat(np.maximum(count, 1), count)
    seconds = ((end - start).astype("timedelta64[s]").astype(np.int64))[owner] * fraction
    times = start[owner] + seconds.astype(np.int64).astype("timedelta64[s]")
    return owner, times.astype("datetime64[m]").astype("datetime64[s]")


def _round(values: np.ndarray, decimals: int) -> np.ndarray:
    """Numbers as a report writes them: no trailing ".0" for whole values."""
    rounded = np.round(values, decimals)
    if decimals == 0:
        return rounded.astype(np.int64).astype(str)
    return np.char.mod(f"%.{decimals}f", rounded)


def _frame(table: str, **columns) -> pd.DataFrame:
    """A table with MIMIC-IV's header: the given columns, the rest empty."""
    header = HEADERS[table].split(",")
    length = max(len(np.atleast_1d(v)) for v in columns.values() if np.ndim(v) > 0)
    return pd.DataFrame({name: columns.get(name, "") for name in header}, index=np.arange(length))


class EventWriter:
    """Draws the events of a block of admissions (`events`) and returns them per table."""

    def __init__(self, cohort: Cohort):
        self.cohort = cohort
        patients = cohort.patients.set_index("subject_id")
        self.weight = patients.weight
        self._next_id = 1

    def _ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + n)
        self._next_id += n
        return ids

    def events(self, rng: np.random.Generator, admissions: pd.DataFrame, studies: pd.DataFrame,
               intervals: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
        """Events of `admissions` (rows of cohort.admissions), their studies (inside them)
        and their intervals, per table (lists of frames)."""
        out: dict[str, list[pd.DataFrame]] = {table: [] for table in EVENT_TABLES}
        intime = admissions.admittime.to_numpy() + 30 * MINUTE
        outtime = admissions.dischtime.to_numpy() - 15 * MINUTE
        ids = {name: admissions[name].to_numpy() for name in ("subject_id", "hadm_id", "stay_id")}
        weight = self.weight.loc[ids["subject_id"]].to_numpy()
        hours = (outtime - intime).astype("timedelta64[s]").astype(np.int64) / 3600
        self._vitals(rng, out, ids, intime, outtime, hours)
        self._labs(rng, out, ids, intime, outtime, hours)
        self._routine(rng, out, ids, weight, intime, outtime, hours, studies)
        self._drivers(rng, out, admissions, ids, weight, intervals)
        return out

    def _vitals(self, rng, out, ids, intime, outtime, hours):
        rounds = np.maximum(1, (hours / rng.uniform(1.5, 3.5, len(hours))).astype(int))
        owner, times = _spread(rng, intime, outtime, rounds)
        frames = []
        for itemid, (unit, mean, patient_sd, sd, decimals, low, high) in _VITALS.items():
            level = rng.normal(mean, patient_sd, len(hours))[owner]
            keep = rng.random(len(owner)) < (0.5 if itemid == 223761 else 1.0)  # temperature every other round
            values = np.clip(rng.normal(level, sd), low, high)[keep]
            text = _round(values, decimals)
            frames.append((itemid, owner[keep], times[keep], text, unit))
        systolic, diastolic = frames[3], frames[4]
        mean_bp = _round((systolic[3].astype(float) + 2 * diastolic[3].astype(float)) / 3, 0)
        frames.append((220181, systolic[1], systolic[2], mean_bp, "mmHg"))
        for itemid, owner_, times_, text, unit in frames:
            out["icu/chartevents"].append(_frame(
                "icu/chartevents", subject_id=ids["subject_id"][owner_], hadm_id=ids["hadm_id"][owner_],
                stay_id=ids["stay_id"][owner_], caregiver_id=rng.integers(10000, 99999, len(owner_)),
                charttime=_clock(times_), storetime=_clock(times_ + rng.integers(1, 40, len(owner_)) * MINUTE),
                itemid=itemid, value=text, valuenum=text, valueuom=unit, warning=0))

    def _labs(self, rng, out, ids, intime, outtime, hours):
        gases = np.maximum(1, (hours / rng.uniform(6, 14, len(hours))).astype(int))
        daily = np.maximum(1, (hours / 24).astype(int))
        for itemids, count in (((50821, 50818, 50820, 50813), gases), ((50912, 51222, 51301), daily),
                               ((50889,), (daily * (rng.random(len(hours)) < 0.3)).astype(int))):
            owner, times = _spread(rng, intime, outtime, count)
            specimen = self._ids(len(owner)) + 10_000_000
            for itemid in itemids:
                unit, low_ref, high_ref, decimals, mean, sd, low, high = _LABS[itemid]
                values = np.clip(rng.normal(mean, sd, len(owner)), low, high)
                text = _round(values, decimals)
                flag = np.where((values < low_ref) | (values > high_ref), "abnormal", "")
                out["hosp/labevents"].append(_frame(
                    "hosp/labevents", labevent_id=self._ids(len(owner)), subject_id=ids["subject_id"][owner],
                    hadm_id=ids["hadm_id"][owner], specimen_id=specimen, itemid=itemid, charttime=_clock(times),
                    storetime=_clock(times + rng.integers(20, 90, len(owner)) * MINUTE), value=text, valuenum=text,
                    valueuom=unit, ref_range_lower=_round(np.full(len(owner), low_ref), decimals),
                    ref_range_upper=_round(np.full(len(owner), high_ref), decimals), flag=flag,
                    priority=np.where(itemid in (50821, 50818, 50820, 50813), "STAT", "ROUTINE")))

    def _routine(self, rng, out, ids, weight, intime, outtime, hours, studies):
        # Foley urine every 1-4 h
        owner, times = _spread(rng, intime, outtime, np.maximum(1, (hours / rng.uniform(1, 4, len(hours))).astype(int)))
        urine = np.clip(np.round(rng.gamma(2.5, 30, len(owner)) / 5) * 5, 0, 800).astype(int).astype(str)
        out["icu/outputevents"].append(_frame(
            "icu/outputevents", subject_id=ids["subject_id"][owner], hadm_id=ids["hadm_id"][owner],
            stay_id=ids["stay_id"][owner], caregiver_id=rng.integers(10000, 99999, len(owner)),
            charttime=_clock(times), storetime=_clock(times + rng.integers(1, 30, len(owner)) * MINUTE),
            itemid=226559, value=urine, valueuom="ml"))
        # dextrose maintenance every ~12 h
        owner, times = _spread(rng, intime, outtime, np.maximum(1, (hours / 12).astype(int)))
        amount = rng.choice([50, 100, 250], len(owner))
        self._input(rng, out, ids, weight, owner, times, 220949, amount, "ml", 60 * amount / 75,
                    "02-Fluids (Crystalloids)", "Continuous IV")
        # orders of drugs that no finding depends on
        for template, rate in zip(OTHER_DRUGS, (0.9, 0.4, 0.3, 0.7, 0.6)):
            has = np.flatnonzero(rng.random(len(hours)) < rate)
            owner, times = _spread(rng, intime[has], outtime[has], np.ones(len(has), dtype=int), 0.0, 0.3)
            self._prescribe(rng, out, ids, has[owner], times, outtime[has][owner], template)
        # a central line at ICU admission; a chest X-ray procedure at each study's exact time
        self._procedure(rng, out, ids, weight, np.arange(len(hours)), intime + 10 * MINUTE, 224263, "Invasive Lines",
                        "ContinuousProcess")
        position = pd.Index(ids["hadm_id"]).get_indexer(studies.hadm_id)
        xray = np.where(studies.view.to_numpy() == "AP", 229581, 225459)
        for itemid in (229581, 225459):
            keep = xray == itemid
            self._procedure(rng, out, ids, weight, position[keep], studies.time.to_numpy()[keep], itemid, "Imaging",
                            "Task")
        # blood cultures (not a respiratory specimen: outside the paper's selection)
        has = np.flatnonzero(rng.random(len(hours)) < 0.3)
        owner, times = _spread(rng, intime[has], outtime[has], np.ones(len(has), dtype=int))
        self._culture(rng, out, ids, has[owner], times, "BLOOD CULTURE", 70012, "Blood Culture, Routine", 90201,
                      np.full(len(owner), ""), np.full(len(owner), "No growth."))

    def _drivers(self, rng, out, admissions, ids, weight, intervals):
        position = pd.Index(ids["hadm_id"]).get_indexer(intervals.hadm_id)
        start, end = intervals.start.to_numpy(), intervals.end.to_numpy()
        hadm_side = admissions.effusion_side.to_numpy()[position]

        def given(name, outcome=1):
            return np.flatnonzero(intervals[name].to_numpy() == outcome)

        # diuretic: a furosemide order and 1-2 IV pushes
        rows = given("diuretic")
        _, times = _spread(rng, start[rows], end[rows], np.ones(len(rows), dtype=int), 0.05, 0.6)
        templates = rng.integers(0, len(FUROSEMIDE), len(rows))
        for k, template in enumerate(FUROSEMIDE):
            pick = templates == k
            self._prescribe(rng, out, ids, position[rows][pick], times[pick], times[pick] + 24 * 3600 * np.timedelta64(
                1, "s"), template)
        pushes = rng.integers(1, 3, len(rows))
        owner, push_times = _spread(rng, start[rows], end[rows], pushes, 0.05, 0.95)
        dose = rng.choice([20, 40, 80], len(owner))
        self._input(rng, out, ids, weight, position[rows][owner], push_times, 221794, dose, "mg", None, "05-Med Bolus",
                    "Drug Push")
        # fluids: boluses of NaCl 0.9 % / LR; over 1,500 mL in the interval = a fluid load
        loads = (((1000, 1000), (1000, 500, 1000), (500, 1000, 500, 500), (1000, 1000, 1000)),
                 ((), (), (), (500,), (1000,), (250, 500), (500, 500), (1000, 500)))
        for outcome, combos in ((1, loads[0]), (0, loads[1])):
            rows = given("fluid_load", outcome)
            choice = rng.integers(0, len(combos), len(rows))
            count = np.array([len(c) for c in combos])[choice]
            owner, times = _spread(rng, start[rows], end[rows], count, 0.05, 0.95)
            amounts = np.concatenate([np.array(combos[c], dtype=int) for c in choice]) if len(owner) else np.zeros(0)
            item = np.where(rng.random(len(owner)) < 0.6, 225158, 225828)
            for itemid in (225158, 225828):
                keep = item == itemid
                self._input(rng, out, ids, weight, position[rows][owner][keep], times[keep], itemid,
                            amounts[keep].astype(int), "ml", None, "02-Fluids (Crystalloids)", "Bolus")
        # thoracentesis and the pleural fluid it drains
        rows = given("thoracentesis")
        _, times = _spread(rng, start[rows], end[rows], np.ones(len(rows), dtype=int), 0.05, 0.85)
        self._procedure(rng, out, ids, weight, position[rows], times, 225479, "Procedures", "Task")
        left = np.where(hadm_side[rows] == 2, rng.random(len(rows)) < 0.5, hadm_side[rows] == 1)
        drained = (np.round(rng.uniform(300, 1600, len(rows)) / 50) * 50).astype(int).astype(str)
        drain_time = times + 20 * MINUTE
        out["icu/outputevents"].append(_frame(
            "icu/outputevents", subject_id=ids["subject_id"][position[rows]], hadm_id=ids["hadm_id"][position[rows]],
            stay_id=ids["stay_id"][position[rows]], caregiver_id=rng.integers(10000, 99999, len(rows)),
            charttime=_clock(drain_time), storetime=_clock(drain_time + 5 * MINUTE),
            itemid=np.where(left, 226590, 226593), value=drained, valueuom="ml"))
        # an antibiotic course: one or two of the three drugs
        rows = given("antibiotics")
        count = rng.integers(1, 3, len(rows))
        owner, times = _spread(rng, start[rows], end[rows], count, 0.05, 0.7)
        drug = (rng.integers(0, len(ANTIBIOTICS), len(owner)) + np.arange(len(owner))) % len(ANTIBIOTICS)
        for k, template in enumerate(ANTIBIOTICS):
            pick = drug == k
            self._prescribe(rng, out, ids, position[rows][owner][pick], times[pick],
                            times[pick] + rng.integers(3, 8, pick.sum()) * 86400 * np.timedelta64(1, "s"), template)
        # sputum culture: a gram stain and a respiratory culture, growing a pathogen or not
        for outcome in (1, 2):
            rows = given("sputum_culture", outcome)
            _, times = _spread(rng, start[rows], end[rows], np.ones(len(rows), dtype=int), 0.05, 0.9)
            if outcome == 2:
                organism = np.asarray(SPUTUM_ORGANISMS)[rng.integers(0, len(SPUTUM_ORGANISMS), len(rows))]
                comments = np.asarray(GROWTH)[rng.integers(0, len(GROWTH), len(rows))]
            else:
                organism = np.full(len(rows), "")
                comments = np.asarray(SPUTUM_NEGATIVE)[rng.integers(0, len(SPUTUM_NEGATIVE), len(rows))]
            self._culture(rng, out, ids, position[rows], times, "SPUTUM", 70062, "GRAM STAIN", 90042,
                          np.full(len(rows), ""), np.asarray(GRAM_STAIN)[rng.integers(0, len(GRAM_STAIN), len(rows))])
            self._culture(rng, out, ids, position[rows], times, "SPUTUM", 70062, "RESPIRATORY CULTURE", 90055,
                          organism, comments)

    def _input(self, rng, out, ids, weight, owner, times, itemid, amount, unit, minutes, category, description):
        n = len(owner)
        minutes = np.ones(n) if minutes is None else np.maximum(1, np.asarray(minutes, dtype=float))
        end = times + np.round(minutes).astype(np.int64) * MINUTE
        order = self._ids(n) + 1_000_000
        amount_text = np.asarray(amount).astype(int).astype(str)
        rate = "" if description != "Continuous IV" else _round(np.asarray(amount) / minutes * 60, 0)
        out["icu/inputevents"].append(_frame(
            "icu/inputevents", subject_id=ids["subject_id"][owner], hadm_id=ids["hadm_id"][owner],
            stay_id=ids["stay_id"][owner], caregiver_id=rng.integers(10000, 99999, n), starttime=_clock(times),
            endtime=_clock(end), storetime=_clock(times + rng.integers(0, 30, n) * MINUTE), itemid=itemid,
            amount=amount_text, amountuom=unit, rate=rate, rateuom="" if isinstance(rate, str) else "mL/hour",
            orderid=order, linkorderid=order, ordercategoryname=category,
            secondaryordercategoryname="02-Fluids (Crystalloids)" if unit == "mg" else "",
            ordercomponenttypedescription="Main order parameter", ordercategorydescription=description,
            patientweight=weight[owner], totalamount=amount_text if unit == "ml" else "",
            totalamountuom=unit if unit == "ml" else "", isopenbag=0, continueinnextdept=0,
            statusdescription="FinishedRunning", originalamount=amount_text, originalrate=amount_text))

    def _prescribe(self, rng, out, ids, owner, start, stop, template):
        n = len(owner)
        pharmacy = self._ids(n) + 20_000_000
        poe_seq = rng.integers(100, 3000, n)
        out["hosp/prescriptions"].append(_frame(
            "hosp/prescriptions", subject_id=ids["subject_id"][owner], hadm_id=ids["hadm_id"][owner],
            pharmacy_id=pharmacy, poe_id=np.char.add(ids["subject_id"][owner].astype(str), np.char.add("-",
                                                     poe_seq.astype(str))),
            poe_seq=poe_seq, order_provider_id="P" + pd.Series(rng.integers(10000, 99999, n)).astype(str).to_numpy(),
            starttime=_clock(start), stoptime=_clock(np.asarray(stop)),
            **dict(zip(_PRESCRIPTION_COLUMNS, template))))

    def _procedure(self, rng, out, ids, weight, owner, times, itemid, category, description):
        n = len(owner)
        order = self._ids(n) + 3_000_000
        out["icu/procedureevents"].append(_frame(
            "icu/procedureevents", subject_id=ids["subject_id"][owner], hadm_id=ids["hadm_id"][owner],
            stay_id=ids["stay_id"][owner], caregiver_id=rng.integers(10000, 99999, n), starttime=_clock(times),
            endtime=_clock(times + MINUTE), storetime=_clock(times + rng.integers(1, 40, n) * MINUTE), itemid=itemid,
            value=1, valueuom="None", orderid=order, linkorderid=order, ordercategoryname=category,
            ordercategorydescription=description, patientweight=weight[owner], isopenbag=0, continueinnextdept=0,
            statusdescription="FinishedRunning", ORIGINALAMOUNT=1, ORIGINALRATE=0))

    def _culture(self, rng, out, ids, owner, times, specimen, spec_itemid, test, test_itemid, organism, comments):
        n = len(owner)
        day = times.astype("datetime64[D]").astype("datetime64[s]")
        stored = times + rng.integers(24 * 60, 72 * 60, n) * MINUTE
        out["hosp/microbiologyevents"].append(_frame(
            "hosp/microbiologyevents", microevent_id=self._ids(n), subject_id=ids["subject_id"][owner],
            hadm_id=ids["hadm_id"][owner], micro_specimen_id=self._ids(n) + 5_000_000, chartdate=_clock(day),
            charttime=_clock(times), spec_itemid=spec_itemid, spec_type_desc=specimen, test_seq=1,
            storedate=_clock(stored.astype("datetime64[D]").astype("datetime64[s]")), storetime=_clock(stored),
            test_itemid=test_itemid, test_name=test, org_name=organism, comments=comments))
