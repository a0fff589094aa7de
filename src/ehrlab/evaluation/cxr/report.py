"""evaluation/report.md, evaluation.json and the figure of a chest X-ray forecasting run, in
the shapes of seed 004's Tables 2 (weighted macro AUROC, All / Same / Diff per label set),
3 (FID, age, sex, race), 6 (unweighted macro, CheXpert's), 7 and 8 (per finding).

The figure is previous | true target | prediction for the first `grid_pairs` pairs of the
reference (its fixed order, so every model of a task shows the same patients), or, for a
label model, its per-finding AUROCs beside the gt and ceiling rows. Both hold results of
patients (the grid their images): they stay in the run's evaluation folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ehrlab.data.cxr.contract import LABEL_SEPARATOR, ForecastReference
from ehrlab.evaluation.cxr.evaluators import as_float_images
from ehrlab.serialization import write_json

SUBSET_TITLES = {"all": "All", "same": "Same", "diff": "Diff"}
ROW_TITLES = {"gt": "GT (true target through the evaluator)", "ceiling": "Ceiling (true posterior)"}
GRID_FILE = "forecast_grid.png"
BARS_FILE = "finding_auroc.png"


def _number(rows: dict, row: str, key: str, digits: int = 3) -> str:
    values = rows.get(row, {})
    value = values.get(key, math.nan)
    if value is None or not math.isfinite(value):
        return "–"
    std = values.get(f"{key}_std")
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None and math.isfinite(std) else text


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body] + [""]


def _row_order(evaluation: dict) -> list[tuple[str, str]]:
    """(row key, title): gt, the model, ceiling, those present."""
    titles = {**ROW_TITLES, "model": evaluation["model"]}
    return [(row, titles[row]) for row in ("gt", "model", "ceiling") if row in evaluation["rows"]]


def _clinical_tables(evaluation: dict) -> list[str]:
    rows = evaluation["rows"]
    lines = []
    for name, columns in evaluation["label_sets"].items():
        headline = " (headline: `test/auroc_*`)" if name == evaluation["headline_set"] else ""
        lines += [f"### Table 2 shape — {name}, weighted macro AUROC{headline}", "",
                  f"Weights: evaluated pairs per finding. Keys `test/{name}/auroc_all|same|diff`.", ""]
        lines += _table(["", "All", "Same", "Diff"],
                        [[title] + [_number(rows, row, f"{name}/auroc_{s}") for s in SUBSET_TITLES]
                         for row, title in _row_order(evaluation)])
        lines += [f"### Table 6 shape — {name}, unweighted macro AUROC", "",
                  f"Keys `test/{name}/auroc_macro_all|same|diff` (the paper's CheXpert metric).", ""]
        lines += _table(["", "All", "Same", "Diff"],
                        [[title] + [_number(rows, row, f"{name}/auroc_macro_{s}") for s in SUBSET_TITLES]
                         for row, title in _row_order(evaluation)])
        names = [c.split(LABEL_SEPARATOR, 1)[1] for c in columns]
        lines += [f"### Tables 7 / 8 shape — {name}, AUROC per finding", ""]
        body = []
        for subset, subset_title in SUBSET_TITLES.items():
            counts = evaluation["evaluated_pairs"][subset]
            body.append([f"**{subset_title}** (pairs)"] + [str(counts[c]) for c in columns])
            body += [[title] + [_number(rows, row, f"{name}/auroc/{f}/{subset}") for f in names]
                     for row, title in _row_order(evaluation)]
        lines += _table([""] + names, body)
    return lines


def _demographic_table(evaluation: dict) -> list[str]:
    rows = evaluation["rows"]
    lines = ["### Table 3 shape — realism and demographics", "",
             ("FID ↓ (true targets vs predictions), age Pearson ↑, sex AUROC ↑, race AUROC ↑ (one-vs-rest macro "
             "over Asian / Black / White; other and unknown races left out). Keys `test/fid`, `test/age_pearson`, "
             "`test/sex_auroc`, `test/race_auroc`."), ""]
    body = [[title, _number(rows, row, "fid", 2)] + [_number(rows, row, k) for k in
                                                     ("age_pearson", "sex_auroc", "race_auroc")]
            for row, title in _row_order(evaluation) if row != "ceiling"]
    return lines + _table(["", "FID", "Age (Pearson)", "Sex (AUROC)", "Race (AUROC)"], body)


def _evaluator_section(evaluator: dict | None) -> list[str]:
    if evaluator is None:
        return ["## Evaluator", "", "None given: no gt row and no image metrics.", ""]
    validation = evaluator.get("validation") or {}
    training = evaluator.get("training") or {}
    trained = (f"Training: {training.get('epochs_run', '?')} epochs (best {training.get('best_epoch', '?')}), "
               f"{training.get('n_train', '?')} training / {training.get('n_val', '?')} validation images, "
               f"{training.get('seconds', '?')} s." if training else "Training: not recorded.")
    lines = ["## Evaluator", "", f"Origin: {evaluator['origin']}. Options: `{evaluator['config']}`.", trained, "",
             ("What it reads on validation images it was not trained on. A finding it cannot read (AUROC near "
              "0.5) makes that finding's forecast numbers meaningless."), ""]
    auroc = validation.get("auroc", {})
    if auroc:
        lines += _table(["finding", "validation AUROC", "images"],
                        [[f, "–" if a is None or not math.isfinite(a) else f"{a:.3f}", str(validation["n"][f])]
                         for f, a in auroc.items()])
    summary = {"weighted macro AUROC": validation.get("auroc_weighted"), "sex AUROC": validation.get("sex_auroc"),
               "age Pearson": validation.get("age_pearson"), "race AUROC": validation.get("race_auroc")}
    lines.append(", ".join(f"{k}: {'–' if v is None or not math.isfinite(v) else f'{v:.3f}'}"
                           for k, v in summary.items()) if validation else "No validation metrics recorded.")
    return lines + [""]


def write_report(evaluation: dict, path: Path) -> Path:
    seeds = evaluation["seeds"]
    lines = [f"# Chest X-ray forecasting evaluation — {evaluation['model']}", "",
             f"{evaluation['n_pairs']} test pairs; {evaluation['output']} forecasts; {len(seeds)} sampling seed(s)"
             + (" (mean ± sample std over seeds)" if len(seeds) > 1 else "") + ". Rows: GT = the true target image "
             "read by the evaluator; ceiling = the synthetic source's true posterior (when known). Same / Diff per "
             "(pair, finding): the target label equals the previous one (a missing previous label counts as 0) or "
             "not; a finding with one class in a subset has no AUROC (–) and is left out of the macros.", ""]
    if evaluation.get("test_events"):
        lines += [f"**Events changed at test time:** {evaluation['test_events']}", ""]
    if evaluation["label_sets"]:
        lines += ["## Clinical consistency", ""] + _clinical_tables(evaluation)
    if evaluation["output"] == "image" or "gt" in evaluation["rows"]:
        lines += ["## Realism and demographic consistency", ""] + _demographic_table(evaluation)
    lines += _evaluator_section(evaluation["evaluator"])
    if evaluation["notes"]:
        lines += ["## Notes (what is switched off and why)", ""] + [f"- {note}" for note in evaluation["notes"]] + [""]
    figure = evaluation.get("figure")
    if figure:
        lines += ["## Figure", "", f"![{figure}]({figure})", ""]
    path.write_text("\n".join(lines))
    return path


def forecast_grid(reference: ForecastReference, images: np.ndarray, pairs: int, path: Path) -> Path:
    """previous | true target | prediction, one row per pair of the first `pairs` reference rows."""
    pairs = min(pairs, len(reference.pair_id))
    columns = (("previous", reference.prev_images), ("true target", reference.target_images), ("prediction", images))
    figure, axes = plt.subplots(pairs, 3, figsize=(6, 2 * pairs), squeeze=False)
    for r in range(pairs):
        for c, (title, stack) in enumerate(columns):
            axis = axes[r, c]
            axis.imshow(as_float_images(stack[r:r + 1])[0, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(title)
        axes[r, 0].set_ylabel(f"pair {reference.pair_id[r]}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def finding_bars(evaluation: dict, path: Path) -> Path:
    """AUROC per finding (All / Same / Diff) of the label model, the gt and the ceiling rows."""
    rows = evaluation["rows"]
    order = _row_order(evaluation)
    columns = [(name, c.split(LABEL_SEPARATOR, 1)[1]) for name, cs in evaluation["label_sets"].items() for c in cs]
    figure, axes = plt.subplots(1, 3, figsize=(max(8, 1.2 * len(columns) * 1.5), 4), sharey=True, squeeze=False)
    x = np.arange(len(columns))
    width = 0.8 / max(len(order), 1)
    for axis, subset in zip(axes[0], SUBSET_TITLES):
        for i, (row, title) in enumerate(order):
            values = [rows[row].get(f"{name}/auroc/{f}/{subset}", math.nan) for name, f in columns]
            axis.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(np.asarray(values, float), nan=0.0), width,
                     label=title)
        axis.axhline(0.5, color="grey", linewidth=0.5)
        axis.set_xticks(x, [f for _, f in columns], rotation=60, ha="right", fontsize=7)
        axis.set_title(SUBSET_TITLES[subset])
    axes[0, 0].set_ylabel("AUROC (undefined shown as 0)")
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_outputs(evaluation: dict, reference: ForecastReference, predictions: list[dict], out_dir: Path,
                  grid_pairs: int) -> None:
    """The figure, evaluation.json and report.md in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if evaluation["output"] == "image" and grid_pairs > 0 and len(reference.pair_id):
        evaluation["figure"] = forecast_grid(reference, predictions[0]["images"], grid_pairs, out_dir / GRID_FILE).name
    elif evaluation["output"] == "labels" and evaluation["label_sets"]:
        evaluation["figure"] = finding_bars(evaluation, out_dir / BARS_FILE).name
    write_json(out_dir / "evaluation.json", evaluation)
    write_report(evaluation, out_dir / "report.md")
