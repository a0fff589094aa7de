"""The synthetic-EHR evaluation suite's user-facing defaults (seed 002 §3, §4.1), written once.

Everything else takes them from here:

- `evaluate_synthetic` (suite.py): its keyword defaults;
- `python -m ehrlab.evaluate`: its option defaults (and what --help shows);
- `python run.py`: conf/config.yaml's `evaluate:` block, which the runner passes to
  `evaluate_synthetic`, repeats them so that `evaluate.n_bootstrap=5` is a plain Hydra
  override of a listed key and `--cfg job` shows them; tests/evaluation/
  test_evaluation_defaults.py fails when the block and these values part. The block's
  `seed` is the run's `${seed}`, not this one.

Plain Python on purpose: the command line's --help imports this without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteDefaults:
    """Defaults of the options a user sets from the command line or the run config."""

    n_bootstrap: int = 100  # resamples for the 95% confidence intervals (0: none)
    seed: int = 0  # bootstrap, attack samples, discriminator splits and training
    discriminator_epochs: int = 5  # LSTM discriminator (Appendix E.1)
    discriminators: tuple[str, ...] = ("lstm", "random_forest")  # Appendix E.1, E.2


DEFAULTS = SuiteDefaults()
