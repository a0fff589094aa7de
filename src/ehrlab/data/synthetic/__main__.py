"""Command line: write a synthetic MIMIC-III folder.

    python -m ehrlab.data.synthetic --out DIR [--n-patients N] [--seed S]

The folder is what ``data=synthetic`` reads (any MIMIC-III reader can read it too): see
``ehrlab.data.synthetic`` for the generating model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ehrlab.cli import exit_on_user_error
from ehrlab.data.synthetic.cohorts import COHORTS
from ehrlab.data.synthetic.config import SyntheticConfig
from ehrlab.data.synthetic.generator import generate_synthetic_mimic3
from ehrlab.data.synthetic.writers import CONFIG_FILE, PLANTED_RISK_FILE, write_tables

_DEFAULTS = SyntheticConfig()


def _write(out_dir: Path, config: SyntheticConfig) -> str:
    """Generate and write; returns the summary the command prints."""
    statistics = write_tables(out_dir, config, generate_synthetic_mimic3(config))
    contents = {
        "PATIENTS.csv.gz": f"{statistics['patients']:,} patients",
        "ADMISSIONS.csv.gz": f"{statistics['admissions']:,} admissions",
        "DIAGNOSES_ICD.csv.gz": f"{statistics['diagnosis_rows']:,} diagnoses, "
                                f"{statistics['distinct_codes']:,} distinct ICD-9 codes",
        PLANTED_RISK_FILE: "the generator's own risk of each cohort's disease per patient",
        "README.md": "the generating model and this draw's numbers",
        CONFIG_FILE: "the generator options of this draw",
    }
    width = max(map(len, contents))
    lines = [f"Wrote a synthetic MIMIC-III folder (seed {config.seed}) to {out_dir.resolve()}:"]
    for name, what in contents.items():
        size_kb = (out_dir / name).stat().st_size / 1024
        lines.append(f"  {name:<{width}}  {size_kb:8.1f} kB  {what}")
    cases = ", ".join(f"{cohort} {statistics[f'{cohort}_cases']:,}"
                      for cohort in COHORTS)
    lines.append(f"Cases per cohort: {cases}.")
    lines.append(f"Read it as MIMIC-III: data=mimic3 data.root={out_dir.resolve()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ehrlab.data.synthetic",
        description="Write a seeded synthetic MIMIC-III folder (PATIENTS, ADMISSIONS, "
                    "DIAGNOSES_ICD as gzipped CSV, plus the planted risk and a README).")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--n-patients", type=int, default=_DEFAULTS.n_patients,
                        help=f"patients to generate (default {_DEFAULTS.n_patients})")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                        help=f"random seed (default {_DEFAULTS.seed}); same seed, same bytes")
    args = parser.parse_args(argv)
    if args.n_patients < 1:  # named as the command's option, not as the Hydra key
        parser.error(f"--n-patients {args.n_patients}: generate at least 1 patient")
    config = SyntheticConfig(n_patients=args.n_patients, seed=args.seed)
    print(exit_on_user_error(_write, args.out, config))


if __name__ == "__main__":
    main()
