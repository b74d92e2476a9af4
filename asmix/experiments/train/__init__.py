"""Training the mixing network (Section 4.4): one module per phase, ``loop.train_mixer`` calls them in order.

config (settings), data (which examples), adversary (training attacks), loss (pseudo-labels and eq. 4.2),
checkpoint (resume, EMA), validation (per epoch), selection (the evaluation head), comparison (the verdict).
"""

from asmix.experiments.train.adversary import TrainingRows, attack_rows, training_rows
from asmix.experiments.train.comparison import NO_GAIN, JudgedModel, Verdict, judge
from asmix.experiments.train.config import (
    PSEUDO_LABEL_RULES,
    RECIPES,
    SETTINGS,
    TRAIN_ATTACKS,
    RunSize,
    TrainConfig,
    default_run_size,
    parse_range,
    parse_train_attacks,
    recipe_settings,
)
from asmix.experiments.train.data import VAL_SPLITS, TrainData, load_train_data
from asmix.experiments.train.loop import EpochRecord, TrainResult, train_mixer
from asmix.experiments.train.loss import composite_loss, pseudo_labels
from asmix.experiments.train.selection import HeadSelection, select_head
from asmix.experiments.train.validation import Validation, validate

__all__ = [
    "EpochRecord",
    "HeadSelection",
    "JudgedModel",
    "NO_GAIN",
    "PSEUDO_LABEL_RULES",
    "RECIPES",
    "RunSize",
    "SETTINGS",
    "TRAIN_ATTACKS",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingRows",
    "Validation",
    "VAL_SPLITS",
    "Verdict",
    "attack_rows",
    "composite_loss",
    "default_run_size",
    "judge",
    "load_train_data",
    "parse_range",
    "parse_train_attacks",
    "pseudo_labels",
    "recipe_settings",
    "select_head",
    "train_mixer",
    "training_rows",
    "validate",
]
