"""Evaluate synthetic EHR from any tool: `python -m ehrlab.evaluate --train A --test B --synthetic C --out DIR`.

Each input is a long table (`subject_id, visit_id, code`, optional `time`) in Parquet
(`.parquet`, `.pq`) or CSV (`.csv`, `.csv.gz`, anything else). Writes `DIR/metrics.json`
(the flat scalar metrics), `DIR/evaluation.json`, `DIR/report.md` and `DIR/plots/`.
Inputs that cannot be compared print one message (`error: ...`) and exit with status 2
before anything is written: a bad path, a missing column, an empty set, integer codes in
one file and code strings in another, or a set sharing no code with the training set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ehrlab.errors import UserInputError
from ehrlab.evaluation.synthetic.defaults import DEFAULTS
from ehrlab.serialization import write_json


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ehrlab.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="real training records")
    parser.add_argument("--test", type=Path, required=True, help="real held-out records")
    parser.add_argument("--synthetic", type=Path, required=True, help="synthetic records")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    # Defaults are the suite's own (one place, shared with evaluate_synthetic and conf/config.yaml).
    parser.add_argument("--n-bootstrap", type=int, default=DEFAULTS.n_bootstrap,
                        help="bootstrap resamples for 95%% intervals (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="seed of the resamples, attack samples and discriminators (default: %(default)s)")
    parser.add_argument("--discriminator-epochs", type=int, default=DEFAULTS.discriminator_epochs,
                        help="LSTM discriminator epochs (default: %(default)s)")
    parser.add_argument("--discriminators", nargs="*", default=list(DEFAULTS.discriminators),
                        help=f"any of: lstm random_forest (default: {' '.join(DEFAULTS.discriminators)})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ehrlab.evaluation.synthetic import evaluate_synthetic  # after parsing: --help needs no torch
    from ehrlab.evaluation.synthetic.records import read_long_table

    try:
        tables = {role: read_long_table(getattr(args, role), f"--{role}") for role in ("train", "test", "synthetic")}
        metrics = evaluate_synthetic(
            tables["train"],
            tables["test"],
            tables["synthetic"],
            args.out,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            discriminator_epochs=args.discriminator_epochs,
            discriminators=tuple(args.discriminators),
            progress=not args.no_progress,
        )
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json(args.out / "metrics.json", metrics)
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
