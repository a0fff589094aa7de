"""The chest X-ray forecasting family through the runner: the phantom source, the
cxr_forecast task, the four baselines of seed 004 §4.4 and the evaluation, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ehrlab import pipeline
from ehrlab.errors import UserInputError

# A phantom small enough for a unit test: ~40 patients, 32² images, a two-epoch evaluator.
TINY_CXR = ["data=synthetic_cxr", "task=cxr_forecast", "data.source.n_patients=40", "data.source.image_size=32",
            "cxr_evaluation.evaluator.epochs=2", "cxr_evaluation.grid_pairs=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """stage=all of each baseline on the same prepared data (one evaluator, trained once)."""
    from support import compose_config

    done = {}
    for model in ("previous_label", "previous_image", "table_classifier"):
        run_dir = tmp_path_factory.mktemp(model)
        done[model] = run_dir, pipeline.run(compose_config([*TINY_CXR, f"model={model}"], run_dir, cache_dir))
    return done


def test_previous_label_is_perfect_on_same_and_wrong_on_diff(runs):
    """Seed 004 Table 2's Previous-label row: 1.000 on Same, 0.000 on Diff, by construction."""
    _, metrics = runs["previous_label"]
    assert metrics["test/auroc_same"] == pytest.approx(1.0)
    assert metrics["test/auroc_diff"] == pytest.approx(0.0)
    assert 0.0 < metrics["test/auroc_all"] < 1.0
    # the phantom's true posterior is reported beside it, and no image metric for a label model
    assert 0.5 < metrics["test/ceiling/auroc_same"] <= 1.0
    assert "test/fid" not in metrics


def test_previous_image_is_judged_through_the_evaluator(runs):
    run_dir, metrics = runs["previous_image"]
    for key in ("test/auroc_all", "test/auroc_same", "test/auroc_diff", "test/gt/auroc_all", "test/fid",
                "test/sex_auroc", "test/age_pearson"):
        assert key in metrics, key
    assert metrics["test/fid"] > 0  # previous images are not the targets
    forecast = np.load(run_dir / "forecasts" / "seed_0.npz")
    n_test = json.loads((run_dir / "data_stats.json").read_text())["split_pairs"]["test"]
    assert forecast["images"].shape == (n_test, 32, 32) and forecast["images"].dtype == np.uint8
    assert len(list((run_dir / "forecasts" / "seed_0").glob("*.png"))) == n_test
    report = (run_dir / "evaluation" / "report.md").read_text()
    assert "PreviousImage" in report and "FID" in report
    assert (run_dir / "evaluation" / "evaluation.json").is_file()
    assert list((run_dir / "evaluation").glob("*.png"))
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # a rule: nothing was trained


def test_rules_forecast_what_they_copy(runs, cache_dir):
    """Previous image: the forecast is the cached previous image, pixel for pixel."""
    from ehrlab.data.tasks.base import load_task_data

    run_dir, _ = runs["previous_image"]
    (folder,) = (cache_dir / "tasks").glob("cxr_forecast-*")
    reference = load_task_data(folder).reference("test")
    forecast = np.load(run_dir / "forecasts" / "seed_0.npz")
    np.testing.assert_array_equal(forecast["pair_id"], reference.pair_id)
    np.testing.assert_array_equal(forecast["images"], reference.prev_images)


def test_a_trained_table_classifier_reloads_to_the_same_evaluation(runs, make_config, tmp_path):
    run_dir, metrics = runs["table_classifier"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    again = pipeline.run(make_config(*TINY_CXR, "model=table_classifier", "stage=evaluate",
                                     f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"))
    for key in ("test/auroc_all", "test/auroc_same", "test/auroc_diff"):
        assert again[key] == pytest.approx(metrics[key], nan_ok=True)


def test_patient_images_never_reach_the_logger(make_config, runs, monkeypatch):
    """The forecast grid shows patients' images: it stays in the run directory."""
    logged = []
    monkeypatch.setattr(pipeline, "log_results", lambda logger, metrics, plots: logged.extend(plots))
    pipeline.run(make_config(*TINY_CXR, "model=previous_image"))
    pipeline.run(make_config(*TINY_CXR, "model=previous_label"))
    assert [path.name for path in logged] == ["finding_auroc.png"]


def test_one_evaluator_serves_every_model_of_the_same_data(runs, cache_dir):
    assert len(list((cache_dir / "cxr_evaluators").iterdir())) == 1


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=previous_image", "task=heart_failure"], "is a chest X-ray forecaster: use task=cxr_forecast"),
    ([*TINY_CXR, "model=lstm"], "is a risk predictor"),
])
def test_a_model_and_a_task_of_different_families_are_refused(overrides, message, make_config, runs):
    with pytest.raises(UserInputError, match=message):
        pipeline.run(make_config(*overrides))


def write_folder(root, *, image_hours=(0, 24, 40), events=True, broken_image=None):
    """A cxr_folder dataset (README's format): one patient, one stay, images at the given
    hours, one event between each pair."""
    from PIL import Image

    root.mkdir()
    rows = ["subject_id,image_id,path,time,view,label:Edema"]
    for n, hour in enumerate(image_hours):
        Image.fromarray(np.full((16, 16), 40 * n, dtype=np.uint8)).save(root / f"{n}.png")
        rows.append(f"1,{n},{n}.png,2150-01-0{1 + hour // 24}T{hour % 24:02d}:00:00,PA,{n % 2}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    if broken_image is not None:
        (root / f"{broken_image}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    event_rows = ["subject_id,time,table,item,value,unit"]
    if events:
        event_rows += [f"1,2150-01-01T{hour:02d}:30:00,meds,Furosemide,40,mg" for hour in range(0, 24, 4)]
    (root / "events.csv").write_text("\n".join(event_rows) + "\n")
    return root


@pytest.mark.parametrize(("folder", "message"), [
    ({"broken_image": 1}, "1.png"),  # an unreadable image is named
    ({"image_hours": (0, 48)}, "48"),  # the only two images are exactly 48 h apart: no pair
    ({"events": False}, "event"),  # a folder with no events: no pair has one
])
def test_bad_chest_xray_input_is_one_message_and_leaves_no_prepared_data(folder, message, make_config, tmp_path,
                                                                         cache_dir):
    root = write_folder(tmp_path / "folder", **folder)
    before = set((cache_dir / "tasks").glob("*")) if (cache_dir / "tasks").exists() else set()
    with pytest.raises(UserInputError, match=message):
        pipeline.run(make_config("data=cxr_folder", f"data.root={root}", "task=cxr_forecast", "model=previous_label",
                                 "data.image_size=16"))
    after = set((cache_dir / "tasks").glob("*")) if (cache_dir / "tasks").exists() else set()
    assert after == before  # nothing half-written, no staging folder left


def test_a_missing_image_stops_the_command_with_exit_status_2(tmp_path, cache_dir):
    from support import run_cli

    root = write_folder(tmp_path / "folder")
    (root / "2.png").unlink()
    result = run_cli("run.py", "data=cxr_folder", f"data.root={root}", "task=cxr_forecast", "model=previous_label",
                     "logger=none", env_extra={"EHRLAB_CACHE": str(cache_dir)})
    assert result.returncode == 2
    assert "2.png" in result.stderr and "Traceback" not in result.stderr


# ehrxdiff_small shrunk further: 32² images, parts and UNet of a few channels, 5 DDIM steps.
TINY_EHRXDIFF = [
    *TINY_CXR, "model=ehrxdiff_small", "data.image_size=32",
    "pretrain.autoencoder.model.architecture.block_out_channels=[8,8,8]",
    "pretrain.clip.model.architecture.clip_dim=32", "pretrain.clip.model.architecture.embed_dim=16",
    "pretrain.clip.model.architecture.image.n_layers=1", "pretrain.clip.model.architecture.image.n_heads=2",
    "pretrain.clip.model.architecture.table.n_layers=1",
    "model.n_context=8", "model.context_dim=16", "model.unet.block_out_channels=[16,16]",
    "model.unet.attention_levels=[1]", "model.unet.n_heads=2", "model.sampling_steps=5",
]


NO_CONDITION = ["model.conditioning.table=false", "model.conditioning.vae_cross_attention=false",
                "model.conditioning.clip_image=false", "model.conditioning.vae_concat=false"]


@pytest.mark.parametrize("overrides", [["model.prediction=x0"], NO_CONDITION, ["model.table_context=pooled"]])
def test_a_bad_ehrxdiff_option_is_refused_before_its_parts_are_trained(make_config, cache_dir, tmp_path, overrides):
    def parts() -> set[str]:
        folder = cache_dir / "pretrained"
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    before = parts()
    with pytest.raises(UserInputError, match="model.prediction|model.conditioning|model.table_context"):
        pipeline.run(make_config(*TINY_EHRXDIFF, *overrides, "seed=7", run_dir=tmp_path / "bad"))
    assert parts() == before


def test_one_command_trains_the_parts_once_then_ehrxdiff_and_evaluates_three_sampling_seeds(
        make_config, runs, cache_dir, tmp_path, caplog):
    """Issue 12 item 7: the autoencoder and the CLIP encoders are trained first (once per data,
    part config and seed) and reused by the next run; the run records the checkpoints it used."""
    import logging

    import yaml

    first = pipeline.run(make_config(*TINY_EHRXDIFF, run_dir=tmp_path / "first"))
    for key in ("test/auroc_all", "test/auroc_all_std", "test/fid", "test/fid_std",
                "pretrain/autoencoder/test/psnr", "pretrain/clip/test/retrieval_top1_image_to_events"):
        assert key in first, key
    config = yaml.safe_load((tmp_path / "first" / "config.yaml").read_text())
    parts = {name: Path(config["model"][f"{name}_checkpoint"]) for name in ("autoencoder", "clip")}
    for name, checkpoint in parts.items():
        assert checkpoint.is_file() and checkpoint.parent.parent.parent == cache_dir / "pretrained", checkpoint
    written = {name: checkpoint.stat().st_mtime_ns for name, checkpoint in parts.items()}
    assert sorted(p.name for p in (tmp_path / "first" / "forecasts").glob("seed_*.npz")) == [
        "seed_0.npz", "seed_1.npz", "seed_2.npz"]
    with caplog.at_level(logging.INFO, logger="ehrlab.pipeline"):
        second = pipeline.run(make_config(*TINY_EHRXDIFF, run_dir=tmp_path / "second"))
    assert {name: checkpoint.stat().st_mtime_ns for name, checkpoint in parts.items()} == written
    assert sum("reusing" in record.getMessage() for record in caplog.records) == 2
    # the same parts and the same seed: the same model, whether the parts were trained now or read back
    for key in ("test/auroc_all", "test/fid", "pretrain/autoencoder/test/psnr"):
        assert second[key] == pytest.approx(first[key], nan_ok=True), key
    assert (tmp_path / "first" / "forecasts" / "seed_1.npz").read_bytes() == \
        (tmp_path / "second" / "forecasts" / "seed_1.npz").read_bytes()
    # Table 10's run as the README writes it: the CLIP part is not trained, the autoencoder is
    # still read back (the switch does not change a part's cache key).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ehrlab.pipeline"):
        pipeline.run(make_config(*TINY_EHRXDIFF, "pretrain.clip.train=false", "model.train_clip=true", "stage=train",
                                 run_dir=tmp_path / "table10"))
    messages = [record.getMessage() for record in caplog.records]
    assert any("part clip: not pretrained" in message for message in messages), messages
    assert sum("reusing" in message for message in messages) == 1
    config = yaml.safe_load((tmp_path / "table10" / "config.yaml").read_text())
    assert config["model"]["clip_checkpoint"] is None
    assert Path(config["model"]["autoencoder_checkpoint"]) == parts["autoencoder"]

