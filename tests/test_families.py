"""Model families: every model names one, and the family decides what applies to it."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hydra.utils import instantiate
from support import model_arguments

from ehrlab.config import CONFIG_DIR
from ehrlab.data.schema import PAD_CODE
from ehrlab.data.tasks.base import TaskData
from ehrlab.errors import UserInputError
from ehrlab.families import FAMILIES, family_of

VOCABULARY = [PAD_CODE, "[UNK]", "DIAGNOSIS//ICD//9//401.9", "DIAGNOSIS//ICD//9//428.0"]
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_builds_a_member_of_a_family(model, make_config):
    model_cfg = make_config(f"model={model}").model
    paper_size = model in ("ehrxdiff", "ehrxdiff_wnull")  # 600 M parameters: built without memory
    with torch.device("meta") if paper_size else contextlib.nullcontext():
        built = instantiate(model_cfg, **model_arguments(model_cfg, VOCABULARY))
    family = family_of(built)
    assert family is FAMILIES[built.family]
    expected = {"halo": "generation", "gpt": "generation", "promptehr": "generation", "medgan": "generation",
                "corgan": "generation", "previous_image": "cxr_forecast",
                "previous_label": "cxr_forecast", "table_classifier": "cxr_forecast", "cxr_": "cxr_forecast",
                "ehrxdiff": "cxr_forecast"}
    assert family.name == next((name for prefix, name in expected.items() if model.startswith(prefix)), "risk")


def test_a_model_without_a_family_is_a_programming_error():
    with pytest.raises(TypeError, match="declares no known model family"):
        family_of(object())


@pytest.mark.parametrize(("family", "task_kind", "stage", "message"), [
    ("risk", "generation", "all", "is a risk predictor: use a risk task such as task=heart_failure"),
    ("generation", "risk", "all", "is a generator: use task=generation"),
    ("risk", "risk", "generate", "stage=generate does not apply to a risk predictor"),
])
def test_the_family_refuses_what_does_not_apply(family, task_kind, stage, message, make_config):
    model_class = type("SomeModel", (), {"family": family})
    task_data = TaskData(kind=task_kind, vocabulary=VOCABULARY, splits={})
    with pytest.raises(UserInputError, match=message):
        FAMILIES[family].check(make_config(f"stage={stage}"), model_class, task_data)


@pytest.mark.parametrize(("option", "message"), [
    ("cxr_evaluation.swap_events=yes", "swap_events='yes': must be true or false"),
    ("cxr_evaluation.drop_events=1.5", "drop_events=1.5: must be in"),
])
def test_the_cxr_family_refuses_bad_evaluation_options_before_training(option, message, make_config):
    model_class = type("SomeForecaster", (), {"family": "cxr_forecast"})
    task_data = TaskData(kind="cxr_forecast", vocabulary=VOCABULARY, splits={})
    with pytest.raises(UserInputError, match=message):
        FAMILIES["cxr_forecast"].check(make_config("stage=all", option), model_class, task_data)


@pytest.mark.parametrize(("family", "stage", "untrained"), [
    ("generation", "evaluate", True), ("generation", "generate", False), ("risk", "evaluate", False),
])
def test_only_a_generators_evaluation_runs_without_a_model(family, stage, untrained, make_config):
    assert FAMILIES[family].runs_untrained(make_config(f"stage={stage}")) is untrained


def test_the_cxr_family_forecasts_with_the_events_dropped_that_the_evaluation_asks_for():
    """cxr_evaluation.drop_events (Appendix D.7) reaches the model: the same events are
    dropped for every sampling seed, and none when it is 0."""
    import torch

    from ehrlab.families.cxr import forecast_test_split
    from ehrlab.models.cxr.base import LABELS, ImageForecaster

    class EventCounter(ImageForecaster):
        output = LABELS
        sampling_seeds = (0, 1)

        def compute_forecast(self, batch, seed):
            return {"label_probs": batch["event_mask"].sum(1, keepdim=True).float()}

    mask = torch.arange(50) < (torch.arange(8) * 6 + 2).unsqueeze(1)
    batch = {"events": torch.ones(8, 50, 2) * mask.unsqueeze(-1), "event_mask": mask, "pair_id": torch.arange(8)}

    class OneBatch:
        def predict_dataloader(self):
            return [batch]

    model = EventCounter(["chexpert:Edema"], event_dim=2, image_size=4, max_events=50)
    full = forecast_test_split(model, OneBatch())
    dropped = forecast_test_split(model, OneBatch(), drop_events=0.5, event_seed=0)
    assert (full[0]["label_probs"][:, 0] == mask.sum(1).numpy()).all()
    assert dropped[0]["label_probs"].sum() < 0.75 * full[0]["label_probs"].sum()
    assert (dropped[0]["label_probs"] == dropped[1]["label_probs"]).all()


def test_the_cxr_family_forecasts_with_the_swapped_events_that_the_evaluation_asks_for():
    """cxr_evaluation.swap_events reaches the datamodule with the run's seed, for every
    sampling seed; without it the pairs keep their own events."""
    import torch

    from ehrlab.families.cxr import forecast_test_split
    from ehrlab.models.cxr.base import LABELS, ImageForecaster

    class FirstEvent(ImageForecaster):
        output = LABELS
        sampling_seeds = (0, 1)

        def compute_forecast(self, batch, seed):
            return {"label_probs": batch["events"][:, 0, :1]}

    own = {"events": torch.arange(4.0).view(4, 1, 1), "event_mask": torch.ones(4, 1, dtype=torch.bool),
           "pair_id": torch.arange(4)}
    asked = []

    class Loaders:
        def predict_dataloader(self, swap_events_seed=None):
            asked.append(swap_events_seed)
            if swap_events_seed is None:
                return [own]
            return [{**own, "events": own["events"].roll(1, 0)}]

    model = FirstEvent(["chexpert:Edema"], event_dim=1, image_size=4, max_events=1)
    assert forecast_test_split(model, Loaders())[1]["label_probs"][:, 0].tolist() == [0, 1, 2, 3]
    swapped = forecast_test_split(model, Loaders(), swap_events=True, event_seed=7)
    assert [f["label_probs"][:, 0].tolist() for f in swapped] == [[3, 0, 1, 2]] * 2
    assert asked == [None, None, 7, 7]
