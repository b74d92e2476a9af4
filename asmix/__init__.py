"""asmix: adaptive smoothing of an accurate classifier g and a robust classifier h (Bai et al.).

The certify experiment is ``asmix.experiments.certify.certify`` (the name ``asmix.certify`` is the
module of certified-radius formulas).
"""

from asmix.errors import AsmixError
from asmix.mixing import MixedClassifier, mix_logits
from asmix.models import load_model
from asmix.data import load_data
from asmix.attacks import PGD
from asmix.mixer import MixingNetwork, load_mixer, save_mixer
from asmix.experiments.sweep import SweepConfig, SweepResult, sweep_alpha
from asmix.experiments.train import TrainConfig, TrainResult, judge, select_head, train_mixer
from asmix.experiments.evaluate import EvalConfig, EvalResult, evaluate
from asmix.experiments.margins import MarginsConfig, MarginsResult, margins
from asmix.experiments.certify import CertifyConfig, CertifyResult

__all__ = [
    "AsmixError", "CertifyConfig", "CertifyResult", "EvalConfig", "EvalResult", "MarginsConfig", "MarginsResult",
    "MixedClassifier", "MixingNetwork", "PGD", "SweepConfig", "SweepResult", "TrainConfig", "TrainResult",
    "evaluate", "judge", "load_data", "load_mixer", "load_model", "margins", "mix_logits",
    "save_mixer", "select_head", "sweep_alpha", "train_mixer",
]
__version__ = "0.1.0"
