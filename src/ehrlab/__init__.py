"""ehrlab: an experiment runner for machine learning on electronic health records."""

__version__ = "0.1.0"
