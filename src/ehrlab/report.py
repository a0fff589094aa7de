"""Aggregate a multirun: `python -m ehrlab.report <multirun dir> [--metrics test/ eval/]`.

Reads every job's metrics.json and the overrides Hydra recorded for it, groups jobs that
differ only in `seed`, and writes mean ± std over seeds:
- a Markdown table to stdout and `<dir>/summary.md`,
- `<dir>/summary.csv` (one row per group and metric: mean, std, n),
- for a 2-D grid (two swept keys besides the seed, e.g. λ_S × λ_D) a heatmap PNG per
  metric, like Figures 4–7 of seed 000.
Standard deviations are sample standard deviations (ddof = 1) over the seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from ehrlab.cli import exit_on_user_error
from ehrlab.errors import UserInputError

DEFAULT_PREFIXES = ("test/", "eval/", "synthetic/", "data/planted_ceiling/")
HEATMAP_METRICS = ("test/pr_auc", "test/f1", "test/kappa", "test/roc_auc", "eval/prevalence_r2", "eval/nnaar")


def load_jobs(multirun_dir: Path) -> pd.DataFrame:
    """One row per job: its swept/overridden settings and its metrics."""
    rows = []
    for metrics_path in sorted(multirun_dir.glob("**/metrics.json")):
        job_dir = metrics_path.parent
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        settings = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))
        rows.append({"job": job_dir.name, **{f"setting:{k}": v for k, v in settings.items()},
                     **json.loads(metrics_path.read_text())})
    if not rows:
        raise UserInputError(f"no metrics.json under {multirun_dir}: is it a multirun directory of finished jobs?")
    return pd.DataFrame(rows)


def summarize(jobs: pd.DataFrame, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> tuple[pd.DataFrame, list[str]]:
    """Mean, std and n of every selected metric per group of jobs differing only in seed."""
    settings = [c for c in jobs if c.startswith("setting:") and c != "setting:seed"]
    group_keys = [c for c in settings if jobs[c].nunique(dropna=False) > 1]
    metrics = [c for c in jobs if c.startswith(prefixes) and pd.api.types.is_numeric_dtype(jobs[c])]
    if not metrics:
        raise UserInputError(f"no metric starts with {list(prefixes)}; choose others with --metrics.")
    long = jobs.melt(id_vars=group_keys or None, value_vars=metrics, var_name="metric").dropna(subset=["value"])
    by = [*group_keys, "metric"]
    summary = long.groupby(by, sort=True, dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()
    summary = summary.rename(columns={"count": "n", **{k: k.removeprefix("setting:") for k in group_keys}})
    return summary, [k.removeprefix("setting:") for k in group_keys]


def markdown_table(summary: pd.DataFrame, group_keys: list[str]) -> str:
    cell = summary.apply(lambda r: f"{r['mean']:.2f} ± {0.0 if pd.isna(r['std']) else r['std']:.2f}", axis=1)
    wide = summary.assign(cell=cell).pivot_table(index=group_keys or None, columns="metric", values="cell",
                                                 aggfunc="first") if group_keys else \
        summary.assign(cell=cell).set_index("metric")[["cell"]].T
    n = int(summary["n"].max())
    header = f"mean ± std over {n} seed(s) per row\n\n"
    return header + to_markdown(wide.reset_index(drop=not group_keys))


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a small DataFrame."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


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
        middle = (pd.Series(values.ravel()).min() + pd.Series(values.ravel()).max()) / 2
        for (i, j), value in pd.DataFrame(values).stack().items():
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


def _numeric_key(index: pd.Index) -> pd.Index:
    converted = pd.to_numeric(index, errors="coerce")
    return index if converted.isna().any() else converted


def report(multirun_dir: Path, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> str:
    if not multirun_dir.is_dir():
        raise UserInputError(f"{multirun_dir} is not a directory: give a multirun directory (multirun/<date>/<time>_<id>).")
    summary, group_keys = summarize(load_jobs(multirun_dir), prefixes)
    table = markdown_table(summary, group_keys)
    summary.to_csv(multirun_dir / "summary.csv", index=False)
    plots = heatmaps(summary, group_keys, multirun_dir)
    text = f"# Summary of {multirun_dir}\n\n{table}\n"
    if plots:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    (multirun_dir / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ehrlab.report", description=__doc__.split("\n")[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_PREFIXES),
                        help="metric name prefixes to summarise (default: %(default)s)")
    args = parser.parse_args(argv)
    print(exit_on_user_error(report, args.multirun_dir, tuple(args.metrics)))


if __name__ == "__main__":
    main()
