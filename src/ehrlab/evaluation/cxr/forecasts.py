"""One call that judges a model's forecasts on seed 004's three axes (§4.3): clinical
consistency (Tables 2, 6, 7, 8), demographic consistency and realism (Table 3).

It reads final records only: the `ForecastReference` of a split (the pairs, their labels,
images and demographics, the synthetic source's true posterior) and the model's predictions,
one dict per sampling seed, each either ``{"images": [N, S, S]}`` (uint8, or float in [0, 1])
or ``{"label_probs": [N, F]}`` in the reference's row and finding order, with an optional
``"seed"``. Image forecasts are read by the evaluator (`evaluators.py`); label forecasts are
scored as they are (clinical consistency only).

Rows of every table: the model (mean ± sample std over its sampling seeds, §4.5: "three
predictions using different random seeds"), ``gt`` (the true target image through the
evaluator: what the evaluator can read at best, Table 2's GT row) and ``ceiling`` (the true
posterior of a synthetic source, when the reference has one: what any forecast can reach).

Metric keys (`test/` for the model, `test/gt/`, `test/ceiling/` for the reference rows):
``auroc_all|same|diff`` (the headline label set's weighted macro AUROC: the first of
LABEL_SETS present), ``<set>/auroc_all|same|diff`` (weighted, Table 2),
``<set>/auroc_macro_all|same|diff`` (unweighted, Table 6), ``<set>/auroc/<finding>/<subset>``
(Tables 7, 8), ``fid`` (model only), ``age_pearson``, ``sex_auroc``, ``race_auroc`` (image
rows); ``<key>_std`` beside each model key when there is more than one seed. NaN means not
computable; the report says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ehrlab.data.cxr.contract import LABEL_SEPARATOR, LABEL_SETS, ForecastReference
from ehrlab.errors import UserInputError
from ehrlab.evaluation.cxr import metrics
from ehrlab.evaluation.cxr.evaluators import CXREvaluator, EvaluatorConfig
from ehrlab.evaluation.cxr.fid import FrechetDistance, feature_network
from ehrlab.evaluation.cxr.report import write_outputs


@dataclass
class EvaluationSettings:
    """The ``cxr_evaluation:`` config node.

    evaluator: `EvaluatorConfig` options (architecture, densenet / vit sizes, epochs,
    batch_size, learning_rate, weight_decay, patience, seed, weights); fid_features: a
    TorchScript feature network for FID instead of the evaluator's features; grid_pairs: rows
    of the previous | target | prediction figure; batch_size: images per evaluator call;
    drop_events: the fraction of each test pair's events dropped before forecasting (the
    missing-event robustness study of Appendix D.7; 0 keeps them all); swap_events: forecast
    each test pair with another patient's events instead of its own (a forecaster that reads
    the events the right way loses Diff AUROC by it; one that ignores them does not move).
    Both may be combined (the swapped events are then thinned).
    """

    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    fid_features: str | None = None
    grid_pairs: int = 8
    batch_size: int = 128
    drop_events: float = 0.0
    swap_events: bool = False

    def __post_init__(self):
        if not 0 <= self.drop_events < 1:
            raise UserInputError(f"cxr_evaluation.drop_events={self.drop_events}: must be in [0, 1).")
        if not isinstance(self.swap_events, bool):
            raise UserInputError(f"cxr_evaluation.swap_events={self.swap_events!r}: must be true or false.")

    @classmethod
    def from_config(cls, node) -> EvaluationSettings:
        """From the config node (a dict or an OmegaConf node; None gives the defaults)."""
        if node is not None and not isinstance(node, dict):
            from omegaconf import OmegaConf

            node = OmegaConf.to_container(node, resolve=True)
        node = dict(node or {})
        unknown = sorted(set(node) - {f.name for f in fields(cls)})
        if unknown:
            raise UserInputError(f"cxr_evaluation: unknown option(s) {unknown}; known: "
                                 f"{sorted(f.name for f in fields(cls))}")
        return cls(evaluator=EvaluatorConfig.from_settings(node.pop("evaluator", None)), **node)

    def forecast_options(self) -> dict:
        """The keyword arguments of `evaluate_forecasts` these settings decide."""
        return {"grid_pairs": self.grid_pairs, "fid_features": self.fid_features, "batch_size": self.batch_size,
                "test_events": self.test_events()}

    def test_events(self) -> str | None:
        """How the test pairs' events were changed before forecasting, for the report (None:
        each pair had its own events)."""
        changes = []
        if self.swap_events:
            changes.append("each test pair was forecast with another patient's events instead of its own "
                           "(`cxr_evaluation.swap_events`)")
        if self.drop_events:
            whose = "those events" if self.swap_events else "each pair's events"
            changes.append(f"{self.drop_events:.0%} of {whose} were dropped at random "
                           "(`cxr_evaluation.drop_events`, Appendix D.7)")
        return "; ".join(changes) + "." if changes else None


def label_sets(findings: list[str], order: tuple[str, ...] = LABEL_SETS) -> dict[str, list[int]]:
    """Column indices of each label set present, in `order` (the first is the headline)."""
    prefixes = [f.split(LABEL_SEPARATOR, 1)[0] if LABEL_SEPARATOR in f else "" for f in findings]
    return {name: [i for i, p in enumerate(prefixes) if p == name] for name in order if name in prefixes}


def _finding_name(column: str) -> str:
    return column.split(LABEL_SEPARATOR, 1)[1] if LABEL_SEPARATOR in column else column


def _clinical(reference: ForecastReference, scores: np.ndarray, sets: dict[str, list[int]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for index, (name, columns) in enumerate(sets.items()):
        result = metrics.clinical_consistency(reference.prev_labels[:, columns], reference.target_labels[:, columns],
                                              scores[:, columns],
                                              [_finding_name(reference.findings[c]) for c in columns])
        for key, value in result.items():
            if not key.startswith("n/"):
                out[f"{name}/{key}"] = value
        if index == 0:
            for subset in metrics.SUBSETS:
                out[f"auroc_{subset}"] = result[f"auroc_{subset}"]
    return out


def _evaluator_scores(evaluator: CXREvaluator, label_probs: np.ndarray, findings: list[str]) -> np.ndarray:
    """The evaluator's probabilities in the reference's finding order (NaN for a finding the
    evaluator does not read, e.g. a user's evaluator trained on other labels)."""
    scores = np.full((len(label_probs), len(findings)), np.nan, dtype=np.float64)
    for f, finding in enumerate(findings):
        if finding in evaluator.findings:
            scores[:, f] = label_probs[:, evaluator.findings.index(finding)]
    return scores


def _demographics(reference: ForecastReference, read: dict[str, np.ndarray]) -> tuple[dict[str, float], list[str]]:
    values, reasons = {}, []
    for key, (value, reason) in {"age_pearson": metrics.age_pearson(reference.age, read["age"]),
                                 "sex_auroc": metrics.sex_auroc(reference.sex, read["sex_prob"]),
                                 "race_auroc": metrics.race_auroc(reference.race, read["race_probs"])}.items():
        values[key] = value
        if reason:
            reasons.append(f"{reason}: test/{key} is NaN (switched off).")
    return values, reasons


def _check(prediction: dict, n: int, n_findings: int) -> str:
    if "images" in prediction:
        shape = np.shape(prediction["images"])
        if len(shape) not in (3, 4) or shape[0] != n:
            raise ValueError(f"prediction images {shape}: expected [{n}, S, S], one per reference pair")
        return "image"
    if "label_probs" in prediction:
        if np.shape(prediction["label_probs"]) != (n, n_findings):
            raise ValueError(f"prediction label_probs {np.shape(prediction['label_probs'])}: expected "
                             f"[{n}, {n_findings}] in the reference's row and finding order")
        return "labels"
    raise ValueError(f"a prediction needs 'images' or 'label_probs'; got keys {sorted(prediction)}")


def _aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean over seeds, and the sample standard deviation (`_std`) when there are several."""
    out = {}
    for key in per_seed[0]:
        values = np.array([row[key] for row in per_seed], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else math.nan
        if len(per_seed) > 1:
            out[f"{key}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return out


def _notes(reference: ForecastReference, sets: dict[str, list[int]], evaluator: CXREvaluator | None) -> list[str]:
    """Lines for what the reference does not allow: findings whose rows hold one class only
    in a subset (left out of the macros), findings the evaluator does not read."""
    notes = []
    if not sets:
        notes.append("No label columns in the reference: clinical consistency (Tables 2, 6, 7, 8) is switched off.")
    masks = metrics.same_diff_masks(reference.prev_labels, reference.target_labels)
    for name, columns in sets.items():
        for subset, mask in masks.items():
            for c in columns:
                labels = reference.target_labels[mask[:, c], c]
                if not 0 < labels.sum() < labels.size:
                    notes.append(f"{reference.findings[c]} ({subset}): {labels.size} evaluated pairs, "
                                 f"{'none' if labels.size == 0 else 'one class only'}: no AUROC, left out of the "
                                 f"{name} macros.")
    if evaluator is not None:
        missing = [f for f in reference.findings if f not in evaluator.findings]
        if missing:
            notes.append(f"The evaluator does not read {missing}: their image-based AUROCs are NaN.")
    return notes


def evaluate_forecasts(reference: ForecastReference, predictions: list[dict], evaluator: CXREvaluator | None,
                       out_dir: str | Path, label_sets_order: tuple[str, ...] = LABEL_SETS, grid_pairs: int = 8,
                       fid_features: str | Path | None = None, model_name: str = "model",
                       batch_size: int = 128, test_events: str | None = None) -> dict[str, float]:
    """Score `predictions` against `reference`; write out_dir/report.md, evaluation.json and a
    figure (previous | true target | prediction for the first `grid_pairs` pairs, or per-finding
    AUROC bars for a label model); return the flat metrics (keys in the module docstring).
    `test_events`: a sentence for the report when the forecasts were made with changed events.

    `evaluator` reads image forecasts and the true targets (the gt row); it may be None only
    when every prediction is labels (then there is no gt row). `fid_features`: a TorchScript
    feature network instead of the evaluator's features (fid.py). Everything written to
    out_dir may hold patient-level images: keep it with the run, not in shared logs.
    """
    if not predictions:
        raise ValueError("evaluate_forecasts needs at least one prediction")
    n, findings = len(reference.pair_id), list(reference.findings)
    kinds = {_check(p, n, len(findings)) for p in predictions}
    if len(kinds) > 1:
        raise ValueError("predictions mix images and label probabilities; give one kind per model")
    output = kinds.pop()
    if output == "image" and evaluator is None:
        raise ValueError("image forecasts need an evaluator to read them")
    sets = label_sets(findings, label_sets_order)
    notes = _notes(reference, sets, evaluator)
    rows: dict[str, list[dict[str, float]]] = {}

    fid_sentence = None
    if evaluator is not None:
        gt_read = evaluator.predict(reference.target_images, batch_size)
        gt_row = _clinical(reference, _evaluator_scores(evaluator, gt_read["label_probs"], findings), sets)
        demographics, reasons = _demographics(reference, gt_read)
        notes.extend(reasons)
        rows["gt"] = [{**gt_row, **demographics}]
    if output == "image":
        features, fid_sentence = feature_network(evaluator, fid_features)
        notes.append(fid_sentence)
        fid_to_targets = FrechetDistance(reference.target_images, features, evaluator.image_size, batch_size)
        per_seed = []
        for prediction in predictions:
            read = evaluator.predict(prediction["images"], batch_size)
            row = _clinical(reference, _evaluator_scores(evaluator, read["label_probs"], findings), sets)
            row.update(_demographics(reference, read)[0])
            row["fid"] = fid_to_targets(prediction["images"])
            per_seed.append(row)
        if n < 2:
            notes.append("Fewer than two pairs: test/fid is NaN.")
        elif n <= features.num_features:
            notes.append(f"FID from {n} image pairs on {features.num_features}-d features: the covariances are "
                         "rank-deficient, so the value is biased by the sample size; compare FIDs at equal n only.")
    else:
        per_seed = []
        for prediction in predictions:
            scores = np.asarray(prediction["label_probs"], dtype=np.float64)
            bad = metrics.nonfinite_scores(scores, ~np.isnan(reference.target_labels))
            if bad:
                notes.append(f"{bad} evaluated (pair, finding) cells have a NaN or infinite predicted probability: "
                             "they are left out of that prediction's AUROCs.")
            per_seed.append(_clinical(reference, scores, sets))
    rows["model"] = per_seed
    if reference.planted is not None:
        rows["ceiling"] = [_clinical(reference, np.asarray(reference.planted, dtype=np.float64), sets)]

    flat: dict[str, float] = {}
    prefixes = {"model": "test/", "gt": "test/gt/", "ceiling": "test/ceiling/"}
    aggregated = {name: _aggregate(values) for name, values in rows.items()}
    for name, values in aggregated.items():
        flat.update({prefixes[name] + key: value for key, value in values.items()})

    masks = metrics.same_diff_masks(reference.prev_labels, reference.target_labels)
    evaluation = {
        "model": model_name,
        "output": output,
        "n_pairs": n,
        "test_events": test_events,
        "seeds": [p.get("seed") for p in predictions],
        "label_sets": {name: [findings[c] for c in columns] for name, columns in sets.items()},
        "headline_set": next(iter(sets), None),
        "metrics": flat,
        "rows": aggregated,
        "per_seed": per_seed,
        "evaluated_pairs": {subset: {findings[c]: int(mask[:, c].sum()) for c in range(len(findings))}
                            for subset, mask in masks.items()},
        "notes": notes,
        "fid_features": fid_sentence,
        "evaluator": None if evaluator is None else {
            "origin": evaluator.origin, "config": evaluator.config, "training": evaluator.training,
            "validation": evaluator.validation, "findings": evaluator.findings},
    }
    write_outputs(evaluation, reference, predictions, Path(out_dir), grid_pairs)
    return flat
