"""Chest X-ray forecasting (seed 004, EHRXDiff): the previous image and the events between two
images → the later image, or its labels.

- :mod:`ehrlab.models.cxr.base`: :class:`~ehrlab.models.cxr.base.ImageForecaster`, the family's
  contract with the runner (``forecast(batch, seed)``, ``trainable``, ``sampling_seeds``).
- :mod:`ehrlab.models.cxr.table_encoder`: the table encoder of Appendix B.1, shared by the
  table classifiers, the CLIP pretraining and EHRXDiff's conditioner.
- :mod:`ehrlab.models.cxr.baselines`: the four baselines of §4.4.
"""
