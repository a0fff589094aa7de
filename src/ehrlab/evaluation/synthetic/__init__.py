"""Synthetic-EHR evaluation suite (seed 002, §3 and Appendix G); reads only final long tables.

Modules by concern: `records` (long table -> sparse matrices), `prevalence`, `structure`,
`chapters`, `privacy`, `discriminator`, `bootstrap`, `plots`, `report`, `defaults` (the
suite's defaults, for the suite, its command line and the run config), and `suite`, which
runs them all.
"""

__all__ = ["evaluate_synthetic", "plot_paths"]


def __getattr__(name: str):
    # The suite is imported on first use: it loads torch and scikit-learn, which
    # `python -m ehrlab.evaluate --help` (it reads only `defaults`) should not wait for.
    if name in __all__:
        from ehrlab.evaluation.synthetic import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
