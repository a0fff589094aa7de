"""ehrlab's entry point: `python run.py model=<m> data=<d> task=<t> trainer=<t> [stage=...]`.

It only composes the Hydra config (conf/, plus the sweep group from sweeps/) and hands it to
`ehrlab.pipeline.run`. See README.md.
"""

import hydra
from omegaconf import DictConfig

from ehrlab.config import register_sweeps, set_run_id

set_run_id()
register_sweeps()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from ehrlab import pipeline
    from ehrlab.cli import exit_on_user_error

    exit_on_user_error(pipeline.run, cfg)


if __name__ == "__main__":
    main()
