"""A sweeper that runs every job of a multirun, then names each failed one.

Hydra's basic sweeper raises the first failed job's exception once its batch is done: the
user sees one traceback and no word of the other failures. This sweeper expands and
launches jobs exactly as the basic one does (same cartesian product, same `multirun.yaml`,
any launcher: basic, joblib, submitit), but collects the failed jobs of every batch and ends
with one `MultirunFailed` listing each (job number, its overrides, one line of why), which
Hydra prints without a traceback and turns into a non-zero exit status. Each job's own
directory holds the details (`status.json`, and the traceback of a crash in its log).
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class MultirunFailed(CompactHydraException):
    """Some jobs of a multirun failed; the message lists them, one line each."""


@dataclass
class EhrlabSweeperConf:
    _target_: str = "hydra_plugins.ehrlab_sweeper.ehrlab_sweeper.EhrlabSweeper"
    max_batch_size: Any = None
    params: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="ehrlab", node=EhrlabSweeperConf, provider="ehrlab")


def failure_reason(error: BaseException | None) -> str:
    """One line: the user error's message, or the exception type and first line of a crash."""
    if error is None:
        return "failed without an exception"
    from ehrlab.cli import one_line_reason

    return one_line_reason(error)


class EhrlabSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params = self._parse_config()
        params.extend(arguments)
        overrides = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(params)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[list[JobReturn]] = []
        failures: list[str] = []
        first_job = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first_job)
            for number, result in enumerate(results, start=first_job):
                if result.status != JobStatus.COMPLETED:
                    failures.append(f"  job {number} ({' '.join(result.overrides or [])}): "
                                    f"{failure_reason(result._return_value)}")
            first_job += len(batch)
            returns.append(results)
        if failures:
            raise MultirunFailed(f"ehrlab: {len(failures)} of {first_job} jobs failed (details in each job's "
                                 f"status.json under {sweep_dir}):\n" + "\n".join(failures))
        return returns
