"""asmix: adaptive smoothing of an accurate classifier g and a robust classifier h (Bai et al.)."""

from asmix.errors import AsmixError
from asmix.mixing import MixedClassifier, mix_logits
from asmix.models import load_model
from asmix.data import load_data
from asmix.attacks import PGD
from asmix.experiments.sweep import SweepConfig, SweepResult, sweep_alpha

__all__ = ["AsmixError", "MixedClassifier", "PGD", "SweepConfig", "SweepResult", "load_data", "load_model",
           "mix_logits", "sweep_alpha"]
__version__ = "0.1.0"
