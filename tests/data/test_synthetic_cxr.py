"""The chest X-ray phantom (`data=synthetic_cxr`): published layout, determinism, event-driven
transitions, recognisable findings and demographics, the planted ceiling, and the read-back
through the real MIMIC-CXR reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score

from ehrlab.data.schema import SYNTHETIC_SUBJECT_ID_START
from ehrlab.data.synthetic_cxr import SyntheticCXRConfig, catalogue, model, phantom, write_synthetic_cxr, writers
from ehrlab.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO.parent / "shared" / "data" / "mimic-iv-demo-2.2"
TINY = {"n_patients": 30, "image_size": 48}


def _header(path: Path) -> str:
    with gzip.open(path, "rt") as handle:
        return handle.readline().strip()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantom")
    write_synthetic_cxr(folder, SyntheticCXRConfig(**TINY), progress=False)
    return folder


def test_layout_headers_and_ids(tiny):
    cxr = tiny / writers.CXR_DIR
    metadata = pd.read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", dtype={"dicom_id": str})
    assert list(metadata.columns) == [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
        "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]
    assert set(metadata.ViewPosition) <= {"AP", "PA", "LATERAL"} and "LATERAL" in set(metadata.ViewPosition)
    assert metadata.StudyDate.astype(str).str.fullmatch(r"2\d{7}").all()
    for row in metadata.itertuples():
        path = cxr / "files" / f"p{str(row.subject_id)[:2]}" / f"p{row.subject_id}" / f"s{row.study_id}" / \
            f"{row.dicom_id}.jpg"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (48, 48) and image.mode == "L"
    chexpert = pd.read_csv(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(chexpert.columns) == ["subject_id", "study_id", *writers.CHEXPERT_COLUMNS]
    assert set(np.unique(chexpert[list(model.FINDINGS)].fillna(9).to_numpy())) <= {-1.0, 0.0, 1.0, 9.0}
    assert list(pd.read_csv(cxr / "mimic-cxr-2.0.0-split.csv.gz").columns) == ["dicom_id", "study_id", "subject_id",
                                                                               "split"]
    labels = pd.read_csv(cxr / writers.IMAGENOME_CSV)
    assert list(labels.columns) == ["dicom_id", *model.DERIVED_IMAGENOME]
    # MIMIC-IV headers: the demo's own where it is at hand, else the catalogue's copy of them
    for table, header in catalogue.HEADERS.items():
        assert _header(tiny / writers.MIMIC4_DIR / f"{table}.csv.gz") == header
        if (DEMO / f"{table}.csv.gz").exists():
            assert _header(DEMO / f"{table}.csv.gz") == header, table
    # never a real id: 8 digits outside MIMIC's subject range, below the synthetic range
    subjects = metadata.subject_id
    assert subjects.between(90_000_000, SYNTHETIC_SUBJECT_ID_START - 1).all()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    def contents(folder):
        return {p.relative_to(folder).as_posix(): (gzip.decompress(p.read_bytes()) if p.suffix == ".gz"
                                                   else p.read_bytes())
                for p in sorted(folder.rglob("*")) if p.is_file()}

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_synthetic_cxr(tmp_path / name, SyntheticCXRConfig(n_patients=6, image_size=32, seed=seed),
                            progress=False)
    a, b, c = (contents(tmp_path / name) for name in "abc")
    assert a == b
    assert a["mimic-iv/icu/chartevents.csv.gz"] != c["mimic-iv/icu/chartevents.csv.gz"]


def test_options_are_checked():
    with pytest.raises(UserInputError, match="image_size"):
        SyntheticCXRConfig(image_size=8)
    with pytest.raises(UserInputError, match="chexpert_flip"):
        SyntheticCXRConfig(chexpert_flip=0.7)
    with pytest.raises(UserInputError, match="texture_change"):
        SyntheticCXRConfig(texture_change=1.5)
    with pytest.raises(UserInputError, match="acquisition_jitter"):
        SyntheticCXRConfig(acquisition_jitter=-0.1)


@pytest.fixture(scope="module")
def cohort():
    return model.draw_cohort(SyntheticCXRConfig(n_patients=6000), np.random.default_rng(0))


def _transition_rate(cohort, finding, start_state, driver, outcome):
    """Share of intervals whose later study has the finding, among intervals starting in
    `start_state`, with and without the driver outcome."""
    n = cohort.admissions.n_studies.to_numpy()
    rates = []
    for present in (True, False):
        hits, total = 0, 0
        for k in range(1, 6):
            valid = (k < n) & (cohort.chain_states[:, k - 1, finding] == start_state)
            with_driver = cohort.chain_outcomes[:, k, model.DRIVER_INDEX[driver]] == outcome
            chosen = valid & (with_driver == present)
            hits += cohort.chain_states[chosen, k, finding].sum()
            total += chosen.sum()
        rates.append(hits / total)
    return rates


def test_events_drive_the_transitions(cohort):
    # a diuretic makes edema resolve; a fluid load makes it appear; thoracentesis drains an
    # effusion; antibiotics clear a consolidation; a positive sputum culture keeps it
    with_diuretic, without = _transition_rate(cohort, model.EDEMA, 1, "diuretic", 1)
    assert 1 - with_diuretic > 0.65 and 1 - without < 0.3
    with_fluid, without = _transition_rate(cohort, model.EDEMA, 0, "fluid_load", 1)
    assert with_fluid > 0.4 and without < 0.12
    with_tap, without = _transition_rate(cohort, model.EFFUSION, 1, "thoracentesis", 1)
    assert 1 - with_tap > 0.75 and 1 - without < 0.3
    with_antibiotics, without = _transition_rate(cohort, model.CONSOLIDATION, 1, "antibiotics", 1)
    assert 1 - with_antibiotics > 1 - without + 0.25
    positive, other = _transition_rate(cohort, model.CONSOLIDATION, 1, "sputum_culture", 2)
    assert positive > other + 0.1
    stays, _ = _transition_rate(cohort, model.CARDIOMEGALY, 1, "diuretic", 1)
    assert stays > 0.95
    # treatment follows the finding (the confounding the posterior accounts for)
    edema = cohort.chain_states[:, :-1, model.EDEMA]
    diuretic = cohort.chain_outcomes[:, 1:, model.DRIVER_INDEX["diuretic"]]
    valid = np.arange(5)[None, :] < cohort.admissions.n_studies.to_numpy()[:, None] - 1
    assert diuretic[valid & (edema == 1)].mean() > 0.6
    assert diuretic[valid & (edema == 0)].mean() < 0.2


def _undriven_changes(cohort) -> tuple[int, int]:
    """(changes of a finding over intervals where no event acts on it, such intervals)."""
    n = cohort.admissions.n_studies.to_numpy()
    changes = total = 0
    for k in range(1, 6):
        valid = k < n
        driven = np.zeros((int(valid.sum()), len(model.FINDINGS)), dtype=bool)
        for name, outcome, finding, _, _ in model.EFFECTS:
            driven[:, finding] |= cohort.chain_outcomes[valid, k, model.DRIVER_INDEX[name]] == outcome
        changed = cohort.chain_states[valid, k] != cohort.chain_states[valid, k - 1]
        changes += int((changed & ~driven).sum())
        total += int((~driven).sum())
    return changes, total


def test_spontaneous_change_zero_leaves_only_event_driven_changes(cohort):
    """data.source.spontaneous_change=0: a finding changes only where an event acts on it,
    and the planted posterior stays exact (calibrated on the changes that remain)."""
    quiet = model.draw_cohort(SyntheticCXRConfig(n_patients=3000, spontaneous_change=0.0), np.random.default_rng(0))
    changes, total = _undriven_changes(quiet)
    assert total > 1000 and changes == 0
    assert _undriven_changes(cohort)[0] > 50  # the default has spontaneous changes
    posterior = model.chain_posteriors(quiet)[:, 0, 1]  # the first interval of each stay
    keep = ~np.isnan(posterior)
    truth = quiet.chain_states[:, 1][keep]
    assert abs(posterior[keep].mean() - truth.mean()) < 0.02


def test_events_show_the_drivers(tmp_path):
    config = SyntheticCXRConfig(n_patients=40, image_size=16)
    cohort = model.draw_cohort(config, np.random.default_rng(3))
    events = catalogue.EventWriter(cohort).events(np.random.default_rng(4), cohort.admissions,
                                                  cohort.studies[cohort.studies.hadm_id >= 0], cohort.intervals)
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in events.items()}
    intervals = cohort.intervals
    taps = tables["icu/procedureevents"].query("itemid == 225479")
    assert len(taps) == (intervals.thoracentesis == 1).sum()
    drains = tables["icu/outputevents"].query("itemid in (226590, 226593)")
    assert len(drains) == len(taps)
    furosemide = tables["hosp/prescriptions"].query("drug == 'Furosemide'")
    assert len(furosemide) == (intervals.diuretic == 1).sum()
    cultures = tables["hosp/microbiologyevents"].query("test_name == 'RESPIRATORY CULTURE'")
    assert (cultures.org_name != "").sum() == (intervals.sputum_culture == 2).sum()
    # every driver event lies strictly inside an interval of its stay that has the driver
    for rows, driver, column in ((taps, "thoracentesis", "starttime"), (furosemide, "diuretic", "starttime"),
                                 (cultures, "sputum_culture", "charttime")):
        spans = rows.assign(row=np.arange(len(rows)), time=pd.to_datetime(rows[column])).merge(
            intervals[intervals[driver] > 0], on="hadm_id")
        inside = spans[(spans.time > spans.start) & (spans.time < spans.end)]
        assert inside.row.nunique() == len(rows), driver
    # values are rounded as reported: few distinct strings per item
    heart_rate = tables["icu/chartevents"].query("itemid == 220045").value
    assert heart_rate.str.fullmatch(r"\d+").all()
    ph = tables["hosp/labevents"].query("itemid == 50820").value
    assert ph.str.fullmatch(r"7\.\d\d").all()


def _phantoms(n, rng, **findings):
    """n frontal phantoms of random adults at the reference pose, with given findings."""
    gender = rng.choice(["F", "M"], n)
    age = rng.uniform(20, 90, n)
    anatomy = phantom.draw_anatomy(rng, gender, age, np.array(["OTHER"] * n), 0.5)
    acquisition = phantom.draw_acquisition(rng, n)
    frame = pd.concat([anatomy, acquisition], axis=1)
    for name in ("ap", "cardiomegaly", "effusion_right", "effusion_left", "consolidation", "lobe", "edema"):
        frame[name] = findings.get(name, 0.0)
    return frame, gender, age


def _still(frame):
    return frame.assign(rotation=0.0, scale=1.0, shift_x=0.0, shift_y=0.0, gain=1.0, gamma=1.0, noise=0.0)


def test_phantom_draws_the_findings():
    size = 64
    frame, _, _ = _phantoms(24, np.random.default_rng(0))
    frame = _still(frame)

    def draw(**changes):
        return phantom.render_frontal(frame.assign(**changes), size, np.random.default_rng(1)).astype(float)

    normal = draw()
    v = (np.arange(size) + 0.5) / size * 2 - 1

    def rows(low, high):
        return (v >= low) & (v <= high)

    # effusion: the right lung base (image left, lower rows) brightens
    base = (slice(None), rows(0.25, 0.5), slice(0, size // 2 - 8))
    assert (draw(effusion_right=0.3)[base].mean(axis=(1, 2)) > normal[base].mean(axis=(1, 2)) + 8).all()
    # cardiomegaly: the bright run through the heart's row is wider
    def heart_width(images):
        row = np.argmin(np.abs(v[:, None] - (frame.costophrenic.to_numpy() - 0.16)), axis=0)
        profile = images[np.arange(len(images)), row]  # [n, size]
        lungs = np.median(profile[:, size // 4 - 4: size // 4 + 4], axis=1, keepdims=True)
        return (profile > lungs + 0.5 * (profile[:, size // 2: size // 2 + 1] - lungs))[:, 8:-8].sum(axis=1)
    assert (heart_width(draw(cardiomegaly=1)) >= heart_width(normal) + 3).all()
    # consolidation: the chosen lobe (right lower) brightens; edema: the perihilar fields
    assert (draw(consolidation=1.0, lobe=2)[base].mean(axis=(1, 2)) > normal[base].mean(axis=(1, 2)) + 5).all()
    hila = (slice(None), rows(-0.3, 0.1), slice(size // 8, size // 2 - 6))
    assert (draw(edema=0.5)[hila].mean(axis=(1, 2)) > normal[hila].mean(axis=(1, 2)) + 8).all()


def test_texture_change_zero_keeps_one_texture_per_patient():
    # consolidation on, so that the blobs' placement is part of the texture compared
    frame, _, _ = _phantoms(6, np.random.default_rng(0), consolidation=1.0, lobe=2)
    frame = _still(frame).assign(texture_seed=np.arange(6))
    twice = pd.concat([frame, frame], ignore_index=True)  # each patient imaged twice, nothing changed

    def difference(texture_change, pairs=twice):
        images = phantom.render_frontal(pairs, 48, np.random.default_rng(1), texture_change).astype(float)
        return np.abs(images[:6] - images[6:]).mean(axis=(1, 2))

    kept, mixed, redrawn = difference(0.0), difference(0.5), difference(1.0)
    assert (kept == 0).all()  # same patient, same pose, no pixel noise: the same image
    assert (redrawn > 0.3).all()
    assert (mixed > 0).all() and (mixed < redrawn).all()
    # another patient's texture (same anatomy, other texture seed) differs at 0 as well
    other = pd.concat([frame, frame.assign(texture_seed=frame.texture_seed + 100)], ignore_index=True)
    assert (difference(0.0, other) > 0.3).all()


def test_acquisition_jitter_scales_pose_and_exposure():
    full, half, none = (phantom.draw_acquisition(np.random.default_rng(0), 50, jitter) for jitter in (1.0, 0.5, 0.0))
    for name in ("rotation", "shift_x", "shift_y"):
        np.testing.assert_allclose(half[name], 0.5 * full[name])
        assert (none[name] == 0).all() and full[name].abs().max() > 0
    for name in ("scale", "gain", "gamma"):
        np.testing.assert_allclose(half[name] - 1, 0.5 * (full[name] - 1))
        assert (none[name] == 1).all()
    np.testing.assert_array_equal(half.noise, full.noise)  # pixel noise is not acquisition pose
    # the options reach the generator's image table: no pose jitter, one texture seed per patient
    config = SyntheticCXRConfig(n_patients=20, acquisition_jitter=0.0, texture_change=0.0)
    images = writers.image_table(model.draw_cohort(config, np.random.default_rng(0)), config)
    assert (images.rotation == 0).all() and (images.scale == 1).all() and (images.gamma == 1).all()
    seeds = images.groupby("subject_id").texture_seed
    assert (seeds.nunique() == 1).all() and seeds.first().nunique() == images.subject_id.nunique()


def test_sex_and_age_are_learnable_from_pixels():
    rng = np.random.default_rng(0)
    frame, gender, age = _phantoms(400, rng, ap=0.0)
    # findings and pose vary as in the data, so the cue must survive them
    frame["cardiomegaly"] = rng.random(400) < 0.2
    frame["edema"] = (rng.random(400) < 0.2) * 0.5
    images = phantom.render_frontal(frame, 32, rng)
    pixels = images.reshape(len(images), 16, 2, 16, 2).mean(axis=(2, 4)).reshape(len(images), -1) / 255
    train, test = slice(0, 300), slice(300, None)
    sex = LogisticRegression(max_iter=2000, C=1.0).fit(pixels[train], gender[train] == "M")
    assert roc_auc_score(gender[test] == "M", sex.predict_proba(pixels[test])[:, 1]) > 0.8
    years = Ridge(alpha=1.0).fit(pixels[train], age[train])
    assert np.corrcoef(years.predict(pixels[test]), age[test])[0, 1] > 0.5


def test_planted_posterior_is_calibrated(cohort):
    config = SyntheticCXRConfig()
    studies = cohort.studies
    images = studies.assign(dicom_id=studies.study_id.astype(str))  # one frontal image per study
    planted = writers.planted_pairs(cohort, images, config)
    inside = images[images.hadm_id >= 0]
    n_pairs = (cohort.admissions.n_studies * (cohort.admissions.n_studies - 1) // 2).sum()
    assert len(planted) == n_pairs and planted.prev_image_id.isin(inside.dicom_id).all()
    recorded = pd.DataFrame(model.record_chexpert(np.random.default_rng(5), studies[list(model.FINDINGS)].to_numpy(),
                                                  config), columns=list(model.FINDINGS), index=images.dicom_id)
    for finding in model.FINDINGS:
        target = recorded.loc[planted.target_image_id, finding].to_numpy()
        evaluable = ~np.isnan(target) & (target >= 0)
        p, y = planted[f"chexpert:{finding}"].to_numpy()[evaluable], target[evaluable]
        bins = np.digitize(p, [0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
        for b in np.unique(bins):
            if (bins == b).sum() > 300:
                assert abs(p[bins == b].mean() - y[bins == b].mean()) < 0.05, (finding, b)
        assert roc_auc_score(y, p) > (0.9 if finding == "Cardiomegaly" else 0.7)
    # ImaGenome columns: probabilities of the derived, flipped labels
    truth = pd.DataFrame(model.record_imagenome(np.random.default_rng(6), studies[list(model.FINDINGS)].to_numpy(),
                                                config), index=images.dicom_id)
    p = planted["imagenome:lung opacity"].to_numpy()
    y = truth.loc[planted.target_image_id, "lung opacity"].to_numpy()
    assert abs(p.mean() - y.mean()) < 0.02 and roc_auc_score(y, p) > 0.7


def test_source_reads_back_through_the_mimic_cxr_reader(tmp_path):
    pytest.importorskip("ehrlab.data.sources.mimic_cxr", reason="the MIMIC-CXR reader is not in this checkout")
    from ehrlab.data.sources.synthetic_cxr import SyntheticCXRSource

    selection = yaml.safe_load((REPO / "conf/data/event_selection/paper.yaml").read_text())
    source = SyntheticCXRSource(cache_dir=tmp_path, event_selection=selection, progress=False, **TINY)
    tables = source.read()
    images = tables.images
    assert set(images.view) <= {"AP", "PA"} and (images.age >= 18).all()
    assert {f"chexpert:{f}" for f in model.FINDINGS} | {f"imagenome:{f}" for f in model.DERIVED_IMAGENOME} <= set(
        images.columns)
    assert set(tables.events.table) >= {"chartevents", "labevents", "outputevents", "procedureevents"}
    # the paper's selection drops the phantom's routine chemistry, keeps its blood gases
    assert not tables.events.text.str.contains("Creatinine").any()
    assert tables.events.text.str.contains("itemid pO2").any()
    planted = tables.planted
    assert planted.prev_image_id.isin(images.image_id).any() and planted.target_image_id.isin(images.image_id).any()
    assert ((planted.iloc[:, 2:] > 0) & (planted.iloc[:, 2:] < 1)).all().all()
    # the folder is written once and reused; the event selection is part of the tables' key only
    root = source.root
    stamp = (root / "truth" / "config.json").stat().st_mtime_ns
    again = SyntheticCXRSource(cache_dir=tmp_path, event_selection=None, progress=False, **TINY)
    assert again.root == root and (root / "truth" / "config.json").stat().st_mtime_ns == stamp
    assert again.cache_key() != source.cache_key()
    assert SyntheticCXRSource(cache_dir=tmp_path, progress=False, n_patients=31).cache_key() != again.cache_key()
