"""Chest X-ray forecasting (seed 004, EHRXDiff): the previous image and the events between two
images → the later image, or its labels.

- :mod:`ehrlab.models.cxr.base`: :class:`~ehrlab.models.cxr.base.ImageForecaster`, the family's
  contract with the runner (``forecast(batch, seed)``, ``trainable``, ``sampling_seeds``).
- :mod:`ehrlab.models.cxr.table_encoder`: the table encoder of Appendix B.1, shared by the
  table classifiers, the CLIP pretraining and EHRXDiff's conditioner.
- :mod:`ehrlab.models.cxr.baselines`: the four baselines of §4.4.
- :mod:`ehrlab.models.cxr.parts`: loading one part of a model from another run's checkpoint.
- :mod:`ehrlab.models.cxr.autoencoder`: EHRXDiff's KL autoencoder (§3.3.1), a part trained in
  its own run (``model=cxr_vae``).
- :mod:`ehrlab.models.cxr.clip`: the CXR-EHR CLIP image and table encoders and their
  contrastive pretraining (Appendix B.1; ``model=cxr_clip``).
- :mod:`ehrlab.models.cxr.adapter`: the adapter A_fusion that fuses the conditions (§3.3.2).
- :mod:`ehrlab.models.cxr.augment`: random rotation and scaling with torch ops (Appendix B.2).
- :mod:`ehrlab.models.cxr.ehrxdiff`: EHRXDiff and EHRXDiff_w_null (§3, §3.4), the latent
  diffusion model assembled from those parts.
"""
