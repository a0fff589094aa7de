"""Synthetic-EHR evaluation suite (seed 002, §3 and Appendix G); reads only final long tables.

Modules by concern: `records` (long table -> sparse matrices), `prevalence`, `structure`,
`chapters`, `privacy`, `discriminator`, `bootstrap`, `plots`, `report`, and `suite`, which
runs them all.
"""

from ehrlab.evaluation.synthetic.suite import evaluate_synthetic, plot_paths

__all__ = ["evaluate_synthetic", "plot_paths"]
