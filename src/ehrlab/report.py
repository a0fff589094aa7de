"""Aggregate a multirun: `python -m ehrlab.report <multirun dir> [<more multirun dirs>] [--metrics test/ eval/]`.

Reads every job's status (`status.json`), metrics (`metrics.json`) and the overrides Hydra
recorded for it, groups completed jobs that differ only in `seed`, and writes mean ± std
over seeds:
- a Markdown table to stdout and `<dir>/summary.md`, each cell with its number of jobs n,
  followed by every job that is not in the table (failed, incomplete, unreadable, or
  missing: expected from `multirun.yaml` but without a directory);
- `<dir>/summary.csv` (one row per group and metric: mean, std, n);
- for a 2-D grid (two swept keys besides the seed, e.g. λ_S × λ_D) a heatmap PNG per
  metric, like Figures 4–7 of seed 000;
- for a comparison of models (``model=`` swept, optionally with ``augment=none,diffusion``,
  as ``sweep=table2`` does) seed 000's Table 2 (PR-AUC, F1 and kappa, best mean per column
  in bold) and, when ``augment`` is swept, Figure 3: each backbone plain and +diffusion as
  paired bars (``figure3_paired_bars.png``), and every augmentation member (diffusion, the
  GANs of Table 4) against the plain backbone in numbers, with the per-seed paired
  difference.
Standard deviations are sample standard deviations (ddof = 1) over the seeds; a cell of one
job shows its value alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ehrlab.cli import exit_on_user_error
from ehrlab.config import model_label
from ehrlab.errors import UserInputError
from ehrlab.generator_report import generator_sections, is_generator_comparison

DEFAULT_PREFIXES = ("test/", "eval/", "synthetic/", "data/planted_ceiling/")
TABLE2_METRICS = ("test/pr_auc", "test/f1", "test/kappa")  # seed 000 Table 2's columns
HEATMAP_METRICS = ("test/pr_auc", "test/f1", "test/kappa", "test/roc_auc", "eval/prevalence_r2", "eval/nnaar")
# Job states besides "completed", in the order the report lists them.
PROBLEM_STATES = ("failed", "incomplete", "unreadable", "missing")
INCOMPLETE = "killed, crashed hard or still running"


@dataclass
class Job:
    """One job of the sweep: found on disk, or expected from multirun.yaml and missing."""

    number: int | None
    overrides: list[str]
    state: str  # "completed" or one of PROBLEM_STATES
    detail: str = ""
    directory: Path | None = None
    metrics: dict = field(default_factory=dict)

    def settings(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.overrides if "=" in o and not o.startswith("hydra"))


def _job_number(directory: Path) -> int | None:
    """Hydra's sweep subdir starts with the job number (`<num>_<model>_<data>_<task>`)."""
    match = re.match(r"(\d+)(?:_|$)", directory.name)
    return int(match.group(1)) if match else None


def _is_job_dir(directory: Path) -> bool:
    return directory.is_dir() and any(
        (directory / name).exists() for name in ("status.json", "metrics.json", ".hydra/overrides.yaml"))


def _read_overrides(directory: Path) -> list[str] | None:
    path = directory / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def _read_json(path: Path) -> tuple[dict | None, str]:
    """(content, "") or (None, why it cannot be used)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"unreadable {path.name} ({error})"
    if not isinstance(content, dict):
        return None, f"{path.name} is not a JSON object"
    return content, ""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def read_job(directory: Path) -> Job:
    """A job directory's state under the job-status contract: `status.json` says running,
    completed or failed, and `metrics.json` exists only for completed jobs. Jobs from before
    the contract (no status.json) count as completed when they have metrics.json."""
    job = Job(_job_number(directory), _read_overrides(directory) or [], "completed", directory=directory)
    status_path, metrics_path = directory / "status.json", directory / "metrics.json"
    if status_path.exists():
        status, why = _read_json(status_path)
        if status is None:
            job.state, job.detail = "unreadable", why
            return job
        state = status.get("status")
        if state == "failed":
            error = _one_line(status.get("error") or "no error message recorded")
            job.state = "failed"
            job.detail = f"{status['error_type']}: {error}" if status.get("error_type") else error
            return job
        if state == "running":
            # SIGKILL, an out-of-memory kill or a hard crash leave the job at "running"
            job.state = "incomplete"
            job.detail = INCOMPLETE + (f" (started {status['started']})" if status.get("started") else "")
            return job
        if state != "completed":
            job.state, job.detail = "unreadable", f"unknown status {state!r} in status.json"
            return job
        if not metrics_path.exists():
            job.state, job.detail = "unreadable", "status.json says completed but metrics.json is missing"
            return job
    elif not metrics_path.exists():
        job.state, job.detail = "incomplete", f"{INCOMPLETE} (neither status.json nor metrics.json)"
        return job
    metrics, why = _read_json(metrics_path)
    if metrics is None:
        job.state, job.detail = "unreadable", why
    else:
        job.metrics = metrics
    return job


def _expands_like_basic_sweeper(target: str | None) -> bool:
    """Hydra's basic sweeper or a subclass of it (such as ehrlab's own, which only changes how
    failures are reported); an optimiser's sweeper (Optuna, Nevergrad) chooses its jobs as it goes."""
    module, _, name = str(target).rpartition(".")
    try:
        sweeper = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        return False
    # By name: Hydra's plugin scan re-executes plugin modules, so after a Hydra run in this
    # process the class found here need not be the BasicSweeper object imported above.
    basic = f"{BasicSweeper.__module__}.{BasicSweeper.__qualname__}"
    return isinstance(sweeper, type) and any(f"{c.__module__}.{c.__qualname__}" == basic for c in sweeper.__mro__)


def expected_overrides(multirun_dir: Path) -> tuple[list[list[str]] | None, str]:
    """Each job's overrides, by job number, as Hydra's basic sweeper expands the sweep that
    `multirun.yaml` records (its sweep files' params, then the command line), or (None, why
    not)."""
    path = multirun_dir / "multirun.yaml"
    if not path.is_file():
        return None, "no multirun.yaml in the directory: jobs that never started cannot be counted."
    try:
        config = OmegaConf.load(path)
        sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
        target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        if sweeper is None or not _expands_like_basic_sweeper(target):
            return None, (f"multirun.yaml names the sweeper {target}, whose jobs this report cannot enumerate: "
                          "jobs that never started are not counted.")
        params = OmegaConf.to_container(sweeper.get("params") or OmegaConf.create({}), resolve=False)
        task = OmegaConf.to_container(OmegaConf.select(config, "hydra.overrides.task", default=[]), resolve=False)
        arguments = [f"{key}={value}" for key, value in params.items()] + [str(o) for o in task]
        # without a config loader: glob() over config groups cannot be expanded (reported below)
        overrides = OverridesParser.create().parse_overrides(arguments)
        return BasicSweeper.split_arguments(overrides, max_batch_size=None)[0], ""
    except (OSError, yaml.YAMLError, OmegaConfBaseException, HydraException) as error:
        return None, f"cannot expand the sweep of {path} ({_one_line(error)}): jobs that never started are not counted."


@dataclass
class Sweep:
    jobs: list[Job]  # found or expected, in job-number order
    notes: list[str]  # what could not be checked, and why
    n_expected: int | None  # jobs multirun.yaml expands to, when it could be expanded


def collect_jobs(multirun_dir: Path) -> Sweep:
    """Every job directory of the sweep and every expected job without one."""
    found = [read_job(d) for d in sorted(multirun_dir.iterdir()) if _is_job_dir(d)]
    expected, note = expected_overrides(multirun_dir)
    notes = [note] if note else []
    if expected is not None and found and all(job.number is None for job in found):
        notes.append("no job directory starts with its job number: jobs that never started cannot be told apart.")
        expected = None
    if expected is not None:
        numbered = {job.number for job in found if job.number is not None}
        for job in found:
            if job.number is not None and job.number < len(expected) and not job.overrides:
                job.overrides = list(expected[job.number])
        found += [Job(number, list(overrides), "missing", "no job directory (never started)")
                  for number, overrides in enumerate(expected) if number not in numbered]
        beyond = sorted(job.directory.name for job in found if job.number is not None and job.number >= len(expected))
        if beyond:
            notes.append(f"{', '.join(beyond)}: beyond the {len(expected)} jobs of multirun.yaml "
                         "(left from an earlier sweep into this directory?); summarised with the others.")
    found.sort(key=lambda job: (job.number is None, job.number or 0, job.directory.name if job.directory else ""))
    return Sweep(found, notes, len(expected) if expected is not None else None)


def completed_table(jobs: list[Job]) -> tuple[pd.DataFrame, list[str]]:
    """One row per completed job (its settings as `setting:<key>`, then its metrics), and the
    keys to group by: the settings other than the seed that vary across *all* jobs, failed
    and missing ones included, so that a swept key still shows when all but one of its
    values failed."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.settings()))
    rows = [{"job": job.directory.name, **{f"setting:{k}": job.settings().get(k, "(default)") for k in keys},
             **job.metrics} for job in jobs if job.state == "completed"]
    varying = [k for k in keys if k not in NOT_GROUPED and len({job.settings().get(k, "(default)") for job in jobs}) > 1]
    return pd.DataFrame(rows), [k for k in varying if not _set_per_model(k, jobs, varying)]


# Seeds are averaged over (`split_seed` draws the data's split, `seed` the rest); `sweep=` only
# chose which jobs ran (it sets no job setting).
NOT_GROUPED = ("seed", "split_seed", "sweep")


def _set_per_model(key: str, jobs: list[Job], varying: list[str]) -> bool:
    """A `model.*` setting that has one value per model when models are compared (e.g.
    TabDDPM's `model.sampling_steps`, which exists for that model only): part of the model's
    row, not a grouping of its own."""
    if key == "model" or "model" not in varying or not key.startswith("model."):
        return False
    values: dict[str, set[str]] = {}
    for job in jobs:
        values.setdefault(job.settings().get("model", "(default)"), set()).add(job.settings().get(key, "(default)"))
    return all(len(v) == 1 for v in values.values())


def summarize(jobs: pd.DataFrame, group_keys: list[str],
              prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> pd.DataFrame:
    """Mean, std and n of every selected metric per group of jobs (one row per group and metric)."""
    group_keys = [f"setting:{k}" for k in group_keys]
    metrics = [c for c in jobs if c.startswith(prefixes) and pd.api.types.is_numeric_dtype(jobs[c])]
    if not metrics:
        raise UserInputError(f"no metric starts with {list(prefixes)}; choose others with --metrics.")
    long = jobs.melt(id_vars=group_keys or None, value_vars=metrics, var_name="metric").dropna(subset=["value"])
    by = [*group_keys, "metric"]
    summary = long.groupby(by, sort=True, dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()
    return summary.rename(columns={"count": "n", **{k: k.removeprefix("setting:") for k in group_keys}})


def with_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with each row's `cell` text. A metric whose means all lie in [-1, 1] (an
    AUROC, a correlation, a share) gets three decimals, where differences between settings are
    often in the third; others (percentages, losses, counts) two."""
    digits = np.where(summary.groupby("metric")["mean"].transform(lambda means: means.abs().max()) <= 1, 3, 2)
    cells = [f"{mean:.{d}f} (n = 1)" if n == 1  # one job has no spread: no "± 0.00"
             else f"{mean:.{d}f} ± {std:.{d}f} (n = {n})"
             for mean, std, n, d in zip(summary["mean"], summary["std"], summary["n"], digits, strict=True)]
    return summary.assign(cell=cells)


def _header(n: pd.Series) -> str:
    low, high = int(n.min()), int(n.max())
    if low == high == 1:
        return "one completed job per cell (n = 1): its value, no standard deviation"
    if low == high:
        return f"mean ± sample std over the n = {low} completed jobs (seeds) of each cell"
    single = ", a cell with n = 1 shows its value alone" if low == 1 else ""
    return (f"mean ± sample std over the n completed jobs (seeds) of each cell; n differs between cells "
            f"({low} to {high}){single}")


def markdown_table(summary: pd.DataFrame, group_keys: list[str]) -> str:
    cells = with_cells(summary)
    wide = cells.pivot_table(index=group_keys, columns="metric", values="cell", aggfunc="first") if group_keys \
        else cells.set_index("metric")[["cell"]].T
    return _header(summary["n"]) + "\n\n" + to_markdown(wide.reset_index(drop=not group_keys))


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a small DataFrame."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def job_counts(sweep: Sweep) -> str:
    counts = Counter(job.state for job in sweep.jobs)
    if sweep.n_expected is not None:
        total = f"{sweep.n_expected} job{'s' * (sweep.n_expected != 1)} expected (multirun.yaml)"
    else:
        total = f"{len(sweep.jobs)} job director{'ies' if len(sweep.jobs) != 1 else 'y'}"
    parts = [f"{counts[state]} {state}" for state in ("completed", *PROBLEM_STATES) if counts[state]]
    return f"{total}: {', '.join(parts)}."


def problem_list(jobs: list[Job]) -> list[str]:
    """One line per job that is not in the table, failed first, then by job number."""
    lines = []
    for state in PROBLEM_STATES:
        for job in (j for j in jobs if j.state == state):
            name = f"job {job.number}" if job.number is not None else "job"
            where = f" [{job.directory.name}]" if job.directory else ""
            settings = " ".join(job.overrides) or "no overrides recorded"
            lines.append(f"- {name} ({settings}){where}: {state}: {job.detail}")
    return lines


def heatmaps(summary: pd.DataFrame, group_keys: list[str], out_dir: Path) -> list[Path]:
    """Mean-metric landscapes over a 2-D grid (Figures 4–7 of seed 000)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(group_keys) != 2:
        return []
    row_key, col_key = group_keys
    paths = []
    for metric in [m for m in HEATMAP_METRICS if m in set(summary["metric"])]:
        grid = summary.loc[summary["metric"] == metric].pivot(index=row_key, columns=col_key, values="mean")
        grid = grid.sort_index(key=_numeric_key).sort_index(axis=1, key=_numeric_key)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", origin="lower")
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xlabel(col_key)
        ax.set_ylabel(row_key)
        values = grid.to_numpy(dtype=float)
        middle = (np.nanmin(values) + np.nanmax(values)) / 2
        for (i, j), value in np.ndenumerate(values):
            if np.isnan(value):
                continue  # no completed job in this cell: left blank
            # dark text on the bright end of viridis, light text on the dark end
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if value > middle else "white")
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_title(f"{metric} (mean over seeds)")
        fig.tight_layout()
        path = out_dir / f"heatmap_{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def is_model_comparison(group_keys: list[str]) -> bool:
    """The sweep compares models: it varies `model` and/or `augment` (and the seed), nothing else."""
    return bool(group_keys) and set(group_keys) <= {"model", "augment"}


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    augment = frame["augment"] if "augment" in frame else pd.Series("none", index=frame.index)
    return frame.assign(label=[model_label(m, a if a != "(default)" else None) for m, a in zip(frame["model"], augment)])


def model_table(summary: pd.DataFrame) -> str:
    """Seed 000's Table 2 layout: one row per model (``X+diffusion`` for ``augment=diffusion``;
    ``lstm+diffusion`` is MedDiffusion), PR-AUC, F1 and kappa as mean ± std, the best mean of
    each column in bold."""
    metrics = [m for m in TABLE2_METRICS if m in set(summary["metric"])]
    if not metrics:
        return ""
    frame = _labelled(summary.loc[summary["metric"].isin(metrics)])
    frame = with_cells(frame)
    best = frame.groupby("metric")["mean"].transform("max")
    frame.loc[frame["mean"] == best, "cell"] = "**" + frame["cell"] + "**"
    wide = frame.pivot_table(index="label", columns="metric", values="cell", aggfunc="first")[metrics]
    wide = wide.reset_index().rename(columns={"label": "model"})
    return ("## Table 2 layout (seed 000)\n\nThe best mean of each column in bold; `lstm+diffusion` is "
            "MedDiffusion.\n\n" + to_markdown(wide))


def paired_differences(completed: pd.DataFrame, metric: str = "test/pr_auc") -> pd.DataFrame:
    """Figure 3 (and Table 4) in numbers: per backbone and augmentation member, the plain and
    augmented means and the difference (augmented − plain) paired by seed: mean ± std, and in
    how many seeds it is positive."""
    if not {"setting:augment", "setting:seed", metric} <= set(completed.columns):
        return pd.DataFrame()
    model = completed["setting:model"] if "setting:model" in completed else pd.Series("model", index=completed.index)
    frame = completed.assign(backbone=model)
    wide = frame.pivot_table(index=["backbone", "setting:seed"], columns="setting:augment", values=metric,
                             aggfunc="first")
    if "none" not in wide.columns:
        return pd.DataFrame()
    rows = []
    for augment in [a for a in wide.columns if a != "none"]:
        pairs = wide[["none", augment]].dropna()
        for backbone, group in pairs.groupby(level=0):
            difference = group[augment] - group["none"]
            rows.append({"backbone": backbone, "augment": augment, "plain": group["none"].mean(),
                         "augmented": group[augment].mean(), "difference": difference.mean(),
                         "difference_std": difference.std(), "seeds_improved": int((difference > 0).sum()),
                         "seeds": len(difference)})
    return pd.DataFrame(rows)


def paired_table(differences: pd.DataFrame, metric: str = "test/pr_auc") -> str:
    if differences.empty:
        return ""
    rows = pd.DataFrame({
        "backbone": differences["backbone"],
        "augment": differences["augment"],
        "plain": differences["plain"].map("{:.2f}".format),
        "augmented": differences["augmented"].map("{:.2f}".format),
        "difference, paired by seed": [
            f"{d:+.2f}" + (f" ± {s:.2f}" if n > 1 else "")
            for d, s, n in zip(differences["difference"], differences["difference_std"], differences["seeds"])],
        "seeds improved": [f"{k} of {n}" for k, n in zip(differences["seeds_improved"], differences["seeds"])],
    })
    return f"## Augmented vs plain, paired by seed ({metric}, mean over seeds)\n\n" + to_markdown(rows)


def paired_bars(summary: pd.DataFrame, out_dir: Path) -> Path | None:
    """Figure 3 of seed 000: per backbone, one bar per augmentation (plain first; error bars:
    sample std over seeds), one panel per Table 2 metric. Table 4's sweep (one backbone, ten
    members) becomes one group of ten bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in TABLE2_METRICS if m in set(summary["metric"])]
    frame = summary.loc[summary["metric"].isin(metrics)]
    augments = sorted(frame["augment"].unique(), key=lambda a: (a != "none", a != "diffusion", a))
    if frame.empty or len(augments) < 2:
        return None
    backbones = sorted(frame["model"].unique())
    positions = np.arange(len(backbones))
    width = 0.8 / len(augments)
    colours = plt.get_cmap("tab10" if len(augments) > 2 else "Paired")(np.arange(len(augments)) % 10)
    fig, axes = plt.subplots(len(metrics), 1, squeeze=False, sharex=True,
                             figsize=(max(6.0, 0.35 * len(backbones) * len(augments) + 2), 2.6 * len(metrics)))
    for ax, metric in zip(axes[:, 0], metrics):
        for index, (augment, colour) in enumerate(zip(augments, colours)):
            rows = frame.loc[(frame["metric"] == metric) & (frame["augment"] == augment)].set_index("model")
            rows = rows.reindex(backbones)
            offset = (index - (len(augments) - 1) / 2) * width
            ax.bar(positions + offset, rows["mean"], width=width, yerr=rows["std"].fillna(0.0), capsize=2,
                   color=colour, label="plain" if augment == "none" else f"+{augment}")
        ax.set_ylabel(metric.removeprefix("test/"))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize=7, ncol=max(1, len(augments) // 5))
    axes[0, 0].set_title("Plain vs augmented (mean ± std over seeds)", fontsize=10)
    axes[-1, 0].set_xticks(positions, backbones, rotation=30 if len(backbones) > 1 else 0, ha="right")
    fig.tight_layout()
    path = out_dir / "figure3_paired_bars.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _numeric_key(index: pd.Index) -> pd.Index:
    converted = pd.to_numeric(index, errors="coerce")
    return index if converted.isna().any() else converted


def _sweep_of(multirun_dir: Path) -> Sweep:
    if not multirun_dir.is_dir():
        raise UserInputError(f"{multirun_dir} is not a directory: give a multirun directory (multirun/<date>/<time>_<id>).")
    sweep = collect_jobs(multirun_dir)
    if not sweep.jobs:
        below = sorted(str(p.parent) for p in multirun_dir.glob("*/multirun.yaml"))
        hint = f" The multirun directories below it: {', '.join(below)}." if below else ""
        raise UserInputError(
            f"no job directory in {multirun_dir} (one holding status.json, metrics.json or .hydra/overrides.yaml): "
            f"give a multirun directory, multirun/<date>/<time>_<id>.{hint}")
    return sweep


def report(multirun_dir: Path, prefixes: tuple[str, ...] = DEFAULT_PREFIXES, also: tuple[Path, ...] = ()) -> str:
    """Summarise the sweep in ``multirun_dir``, together with the sweeps in ``also`` as one table
    (e.g. sweep=table2 and the augmentation baselines' sweep); the files go to ``multirun_dir``."""
    sweeps = [_sweep_of(directory) for directory in (multirun_dir, *also)]
    expected = [s.n_expected for s in sweeps]
    sweep = Sweep([job for s in sweeps for job in s.jobs], [note for s in sweeps for note in s.notes],
                  None if None in expected else sum(expected))
    multirun_dir_names = ", ".join(str(d) for d in (multirun_dir, *also))
    counts = job_counts(sweep)
    problems = problem_list(sweep.jobs)
    if not any(job.state == "completed" for job in sweep.jobs):
        raise UserInputError("\n".join([f"no completed job in {multirun_dir_names}, nothing to summarise. {counts}",
                                         *problems]))
    completed, group_keys = completed_table(sweep.jobs)
    summary = summarize(completed, group_keys, prefixes)
    summary.to_csv(multirun_dir / "summary.csv", index=False)
    text = f"# Summary of {multirun_dir_names}\n\n{counts}\n\n"
    if is_model_comparison(group_keys) and is_generator_comparison(summary):
        # Hundreds of evaluation metrics: seed 002's tables instead of one table of all of them.
        sections, plots = generator_sections(summary, multirun_dir)
        text += sections + "\n"
    elif is_model_comparison(group_keys):
        text += markdown_table(summary, group_keys) + "\n"
        if "model" not in summary:  # one model, several augmentations (sweep=table4)
            models = completed["setting:model"].unique() if "setting:model" in completed else ["model"]
            summary = summary.assign(model=models[0])
        sections = [model_table(summary)]
        plots = []
        if "augment" in group_keys:
            differences = paired_differences(completed)
            differences.to_csv(multirun_dir / "paired_differences.csv", index=False)
            sections.append(paired_table(differences))
            plots = [p for p in [paired_bars(summary, multirun_dir)] if p is not None]
        text += "".join(f"\n{section}\n" for section in sections if section)
    else:
        text += markdown_table(summary, group_keys) + "\n"
        plots = heatmaps(summary, group_keys, multirun_dir)
    if problems:
        text += "\n## Jobs not in the table\n\n" + "\n".join(problems) + "\n"
    if sweep.notes:
        text += "\n## Notes\n\n" + "\n".join(f"- {note}" for note in sweep.notes) + "\n"
    if plots:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    (multirun_dir / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ehrlab.report", description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dirs", type=Path, nargs="+",
                        help="one sweep, or several summarised as one table (written to the first)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_PREFIXES),
                        help="metric name prefixes to summarise (default: %(default)s)")
    args = parser.parse_args(argv)
    first, *also = args.multirun_dirs
    print(exit_on_user_error(report, first, tuple(args.metrics), tuple(also)))


if __name__ == "__main__":
    main()
