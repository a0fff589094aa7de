"""ehrlab's entry point: `python run.py model=<m> data=<d> task=<t> trainer=<t> [stage=...]`.

It only composes the Hydra config (conf/, plus the sweep group from sweeps/) and hands it to
`ehrlab.pipeline.run`; `ehrlab.cli` turns errors into messages and exit codes. See README.md.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ehrlab.config import register_sweeps, resume_in_place, set_run_id

# Run directories and everything in them (predictions and synthetic records carry patient
# ids) are readable by their owner only.
os.umask(0o077)
set_run_id()
register_sweeps()
sys.argv = resume_in_place(sys.argv)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from ehrlab import pipeline
    from ehrlab.cli import run_job

    run_job(pipeline.run, cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()
