"""The synthetic-EHR suite's defaults live in one place (evaluation/synthetic/defaults.py):
`evaluate_synthetic`, `python -m ehrlab.evaluate` and conf/config.yaml's `evaluate:` block
all agree with it; so do the chest X-ray evaluation's settings and its `cxr_evaluation:` block."""

import dataclasses
import inspect
import subprocess
import sys

from support import compose_config

from ehrlab.evaluate import _parser
from ehrlab.evaluation.synthetic import evaluate_synthetic
from ehrlab.evaluation.synthetic.defaults import DEFAULTS

REQUIRED = ["--train", "a", "--test", "b", "--synthetic", "c", "--out", "d"]


def _signature_defaults() -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(evaluate_synthetic).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def test_the_suite_and_the_command_line_take_the_defaults_from_one_place():
    defaults = dataclasses.asdict(DEFAULTS)
    signature = _signature_defaults()
    assert {name: signature[name] for name in defaults} == defaults
    args = vars(_parser().parse_args(REQUIRED))
    assert {name: args[name] for name in defaults} == {**defaults, "discriminators": list(DEFAULTS.discriminators)}


def test_the_run_config_block_equals_the_defaults_and_follows_the_run_seed(tmp_path, cache_dir):
    block = compose_config([], tmp_path, cache_dir, shrink=False).evaluate
    assert set(block) <= set(_signature_defaults())  # the runner passes it as **kwargs
    values = {name: list(value) if name == "discriminators" else value for name, value in block.items()}
    expected = dataclasses.asdict(DEFAULTS) | {"discriminators": list(DEFAULTS.discriminators)}
    assert values == expected  # seed: the run's default seed 0 is the suite's too
    assert compose_config(["seed=7"], tmp_path, cache_dir, shrink=False).evaluate.seed == 7


def test_a_run_overrides_listed_settings_plainly_and_adds_others_with_a_plus(tmp_path, cache_dir):
    cfg = compose_config(["evaluate.n_bootstrap=5", "+evaluate.random_forest_trees=10"], tmp_path, cache_dir)
    assert cfg.evaluate.n_bootstrap == 5 and cfg.evaluate.random_forest_trees == 10
    assert set(cfg.evaluate) <= set(_signature_defaults())


def test_command_line_help_shows_the_defaults_without_loading_the_suite():
    script = ("import sys\nfrom ehrlab.evaluate import _parser\nprint(_parser().format_help())\n"
              "assert 'ehrlab.evaluation.synthetic.suite' not in sys.modules and 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"(default: {DEFAULTS.n_bootstrap})" in result.stdout
    assert f"(default: {DEFAULTS.discriminator_epochs})" in result.stdout


def test_the_run_configs_cxr_evaluation_block_equals_the_evaluations_defaults(tmp_path, cache_dir):
    from ehrlab.evaluation.cxr import EvaluationSettings

    block = compose_config([], tmp_path, cache_dir, shrink=False).cxr_evaluation
    assert EvaluationSettings.from_config(block) == EvaluationSettings()
