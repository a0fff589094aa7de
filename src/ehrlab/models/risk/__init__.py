"""Risk prediction: will a patient develop a condition, from the visits before the window.

- :mod:`~ehrlab.models.risk.base`: the backbone contract (:class:`RiskBackbone`) and the
  family's LightningModule (:class:`RiskPredictor`: CE loss, val/test metrics in percent,
  selection on validation F1).
- :mod:`~ehrlab.models.risk.lstm`: the LSTM backbone with MedDiffusion's time embedding.
- :mod:`~ehrlab.models.risk.diffusion`, :mod:`~ehrlab.models.risk.denoiser`: the diffusion
  augmentation of visit embeddings and its noise-prediction networks.
- :mod:`~ehrlab.models.risk.meddiffusion`: MedDiffusion (seed 000), any backbone + diffusion.
"""

from ehrlab.models.risk.base import RiskBackbone, RiskPredictor
from ehrlab.models.risk.diffusion import DiffusionAugmentation
from ehrlab.models.risk.lstm import LSTMBackbone
from ehrlab.models.risk.meddiffusion import MedDiffusion

__all__ = ["DiffusionAugmentation", "LSTMBackbone", "MedDiffusion", "RiskBackbone", "RiskPredictor"]
