"""Risk prediction: will a patient develop a condition, from the visits before the window.

- :mod:`~ehrlab.models.risk.base`: the backbone contract (:class:`RiskBackbone`) and the
  family's LightningModule (:class:`RiskPredictor`: CE loss, val/test metrics in percent,
  selection on validation F1).
- Seed 000's Table 2 backbones, one module each: :mod:`~ehrlab.models.risk.lstm` (with
  MedDiffusion's time embedding; without it, Table 2's LSTM), ``dipole``, ``retain``,
  ``sand``, ``adacare``, ``lsan``, ``retainex``, ``timeline``, ``tlstm``, ``hitanet``,
  ``medskim`` (each cites its paper and says what plays the hidden state h_k).
- :mod:`~ehrlab.models.risk.layers`: the building blocks those backbones share (masked
  softmax, positional encodings, the transformer encoder layer, the Eq. 3.3 time embedding,
  visit reversal, packed RNNs).
- :mod:`~ehrlab.models.risk.diffusion`, :mod:`~ehrlab.models.risk.denoiser`: the diffusion
  augmentation of visit embeddings and its noise-prediction networks.
- :mod:`~ehrlab.models.risk.meddiffusion`: MedDiffusion (seed 000), any backbone + diffusion
  (``augment=diffusion``).
- :mod:`~ehrlab.models.risk.adversarial`, :mod:`~ehrlab.models.risk.gans`: Table 4's GAN
  generators in MedDiffusion's framework (``augment=ehrgan|gcgan|actgan|medgan[_att]``).
- Table 2's augmentation baselines, each ending in the LSTM classifier:
  :mod:`~ehrlab.models.risk.ehrgan_aug`, :mod:`~ehrlab.models.risk.tabddpm_aug`,
  :mod:`~ehrlab.models.risk.maskehr_aug`.
- :mod:`~ehrlab.models.risk.layers`: building blocks shared by the backbones.
"""

from ehrlab.models.risk.adacare import AdaCareBackbone
from ehrlab.models.risk.adversarial import GANAugmentedPredictor
from ehrlab.models.risk.base import RiskBackbone, RiskPredictor
from ehrlab.models.risk.diffusion import DiffusionAugmentation
from ehrlab.models.risk.dipole import DipoleBackbone
from ehrlab.models.risk.ehrgan_aug import EhrGANAugmentation
from ehrlab.models.risk.hitanet import HiTANetBackbone
from ehrlab.models.risk.lsan import LSANBackbone
from ehrlab.models.risk.lstm import LSTMBackbone
from ehrlab.models.risk.maskehr_aug import MaskEHRAugmentation
from ehrlab.models.risk.meddiffusion import MedDiffusion
from ehrlab.models.risk.medskim import MedSkimBackbone
from ehrlab.models.risk.retain import RetainBackbone
from ehrlab.models.risk.retainex import RetainExBackbone
from ehrlab.models.risk.sand import SAnDBackbone
from ehrlab.models.risk.tabddpm_aug import TabDDPMAugmentation
from ehrlab.models.risk.timeline import TimelineBackbone
from ehrlab.models.risk.tlstm import TLSTMBackbone

__all__ = [
    "AdaCareBackbone", "DiffusionAugmentation", "DipoleBackbone", "EhrGANAugmentation", "GANAugmentedPredictor",
    "HiTANetBackbone", "LSANBackbone", "LSTMBackbone", "MaskEHRAugmentation", "MedDiffusion", "MedSkimBackbone",
    "RetainBackbone", "RetainExBackbone", "RiskBackbone", "RiskPredictor", "SAnDBackbone", "TLSTMBackbone",
    "TabDDPMAugmentation", "TimelineBackbone",
]
