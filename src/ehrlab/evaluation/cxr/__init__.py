"""Seed 004's evaluation of chest X-ray forecasts (EHRXDiff §4.3): clinical consistency,
demographic consistency and realism, from final records only (`ForecastReference`,
`ImageSet`, the predictions), never from a model's internals.

    settings = EvaluationSettings.from_config(cfg.get("cxr_evaluation"))
    evaluator = load_or_train_evaluator(settings.evaluator, data_key=task_cache_key,
                                        image_set=task_data.image_set, cache_dir=cache_dir)
    metrics = evaluate_forecasts(task_data.reference("test"), predictions, evaluator, out_dir,
                                 **settings.forecast_options())

`EvaluationSettings` reads the ``cxr_evaluation:`` config node (evaluator options, FID
feature file, grid size, inference batch size).
"""

from ehrlab.evaluation.cxr.evaluators import (
    CXREvaluator,
    EvaluatorCache,
    EvaluatorConfig,
    load_or_train_evaluator,
    train_evaluator,
)
from ehrlab.evaluation.cxr.forecasts import EvaluationSettings, evaluate_forecasts, label_sets

__all__ = ["CXREvaluator", "EvaluationSettings", "EvaluatorCache", "EvaluatorConfig", "evaluate_forecasts",
           "label_sets", "load_or_train_evaluator", "train_evaluator"]
