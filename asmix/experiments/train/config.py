"""Settings of ``train-mixer``: one frozen, validated dataclass, and the per-dataset run sizes."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Literal, get_args

from asmix.attacks.adaptive import LITE_BUDGET, AttackBudget, lite_budget
from asmix.attacks.pgd import PGD, ThreatModel
from asmix.checks import check_choice, check_choices
from asmix.errors import AsmixError
from asmix.experiments.settings import config_dict
from asmix.mixer import MixerInputs
from asmix.mixing import MixSettings, check_alpha
from asmix.runtime import RunSettings

Setting = Literal["A", "B", "C"]
"""Training attacks (Section 4.2): A gray-box PGD, B white-box PGD, C APGD-CE + APGD-T (the paper's recipe)."""
SETTINGS: tuple[Setting, ...] = get_args(Setting)

TrainAttack = Literal["apgd-ce", "apgd-t", "alpha-first", "square"]
"""Setting C's attacks, whose iterates become attacked rows: APGD-CE (one copy per image), APGD-T (one per target
class), the alpha-first stage (drives the mixer's logit down, then attacks the class) and a short Square run."""
TRAIN_ATTACKS: tuple[TrainAttack, ...] = get_args(TrainAttack)
DEFAULT_TRAIN_ATTACKS: tuple[TrainAttack, ...] = ("apgd-ce", "apgd-t")
"""The authors' setting C (METHOD.md section 8)."""

PseudoLabelRule = Literal["paper", "oracle", "rob-right"]
"""paper: clean 0, attacked 1 (the authors' code); oracle: also asks whether g and h are right (Section 4.4);
rob-right: 1 where h is right on the row (how far h can be trusted, clean or attacked)."""
PSEUDO_LABEL_RULES: tuple[PseudoLabelRule, ...] = get_args(PseudoLabelRule)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``train-mixer`` that changes the trained mixer (paper defaults: Table 6/7, App. D.1 and
    the authors' code, ../shared METHOD.md section 8).

    ``threat``: the norm and radius eps the mixer is trained for (each training attack draws its radius as
    eps * U(``eps_range``)) and the steps of the validation PGD (at ``val_eps``, default eps); ``mix``: the
    logit scales of g and h (training mixes probabilities, eq. 3.4); ``run``: the global batch and the seed.
    ``lite_square_queries``: Square's queries in the AutoAttack-lite that chooses the head and gives the verdict
    (AutoAttack's standard is 5000; the lite 300 let Square-vulnerable heads through on the demo pair).
    ``train_attacks``: setting C's attacks (``TRAIN_ATTACKS``), each copy with ``train_square_queries`` for
    Square; ``train_bias``: added to the mixer's logit in training and in the training attacks (the authors'
    code: 0.4; the evaluation head's ``alpha_bias`` replaces it); ``recipe``: the ``RECIPES`` entry the
    settings started from (a record; ``from_recipe`` applies it)."""

    setting: Setting = "C"
    train_attacks: tuple[TrainAttack, ...] = DEFAULT_TRAIN_ATTACKS
    epochs: int = 10
    threat: ThreatModel = ThreatModel()
    mix: MixSettings = MixSettings()
    run: RunSettings = RunSettings(batch_size=128)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    ema_decay: float = 0.8
    grad_clip: float = 10.0
    accum_steps: int = 1
    c_ce: float = 0.0
    c_bce: float = 1.5
    c_prod: float = 0.2
    pseudo_labels: PseudoLabelRule = "oracle"
    eps_range: tuple[float, float] = (0.4, 1.1)
    steps_range: tuple[int, int] = (5, 20)
    apgd_steps_df: int = 75
    target_classes: int = 9
    train_square_queries: int = 100
    attack_bce_max: float = 0.4
    val_eps: float | None = None
    scale: float = 2.0
    train_bias: float = 0.0
    width: int | None = None
    blocks: int = 2
    stages: int = 2
    clamp_std: float = 0.6
    bn_momentum: float = 0.01
    mixer_inputs: MixerInputs = "both"
    std_layers: tuple[str, str] | None = None
    rob_layers: tuple[str, str] | None = None
    bf16: bool = False
    alpha_range: tuple[float, float] = (0.0, 1.0)
    alpha_bias: float = 0.0
    choose_head: bool = True
    target_clean_acc: float | None = None
    range_min_alpha: float = 0.5
    range_max_width: float = 0.2
    lite_square_queries: int = LITE_BUDGET.square_queries
    recipe: Recipe = "default"

    def __post_init__(self) -> None:
        check_choice(self.setting, Setting, "setting")
        check_choice(self.recipe, Recipe, "recipe")
        check_train_attacks(self.train_attacks)
        if self.setting != "C" and tuple(self.train_attacks) != DEFAULT_TRAIN_ATTACKS:
            raise AsmixError(
                f"train attacks {','.join(self.train_attacks)} are setting C's; setting {self.setting} runs PGD "
                f"(use --setting C or leave out --train-attacks)"
            )
        if "square" in self.train_attacks and self.threat.norm != "linf":
            raise AsmixError("the square training attack needs norm linf (its rows are drawn per example in linf)")
        check_choice(self.pseudo_labels, PseudoLabelRule, "pseudo labels")
        if self.mix != MixSettings(std_scale=self.mix.std_scale, rob_scale=self.mix.rob_scale):
            raise AsmixError(
                "train-mixer mixes g's softmax and h's softmax (eq. 3.4): only the logit scales can change"
            )
        check_choice(self.mixer_inputs, MixerInputs, "mixer inputs")
        for name in (
            "epochs",
            "accum_steps",
            "apgd_steps_df",
            "target_classes",
            "train_square_queries",
            "lite_square_queries",
        ):
            if getattr(self, name) < 1:
                raise AsmixError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        numbers = {
            name: getattr(self, name)
            for name in (
                "lr",
                "weight_decay",
                "ema_decay",
                "grad_clip",
                "c_ce",
                "c_bce",
                "c_prod",
                "attack_bce_max",
                "scale",
                "train_bias",
                "alpha_bias",
                "clamp_std",
                "bn_momentum",
            )
        }
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise AsmixError(f"{name.replace('_', '-')} must be a finite number, got {value}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise AsmixError(
                f"lr and grad-clip must be positive and weight decay >= 0, got {self.lr}, "
                f"{self.grad_clip}, {self.weight_decay}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise AsmixError(f"EMA decay must be in [0, 1), got {self.ema_decay}")
        if min(self.c_ce, self.c_bce, self.c_prod) < 0 or self.c_ce + self.c_bce + self.c_prod == 0:
            raise AsmixError("loss weights c_CE, c_BCE, c_prod must be >= 0 and not all 0")
        low, high = self.eps_range
        if self.threat.eps <= 0 or not 0.0 < low <= high:
            raise AsmixError(
                f"eps-max must be positive and eps-range LOW:HIGH with 0 < LOW <= HIGH, got "
                f"{self.threat.eps}, {low}:{high}"
            )
        low, high = self.steps_range
        if not 1 <= low <= high:
            raise AsmixError(f"steps range must be LOW:HIGH with 1 <= LOW <= HIGH, got {low}:{high}")
        if not 0.0 <= self.attack_bce_max <= 1.0:
            raise AsmixError(
                f"attack-bce-max (the largest w of (1-w)*loss + w*BCE) must be in [0, 1], got {self.attack_bce_max}"
            )
        if self.scale <= 0:
            raise AsmixError(f"sigmoid scale must be positive, got {self.scale}")
        check_alpha(self.alpha_range[0]), check_alpha(self.alpha_range[1])
        if self.alpha_range[0] > self.alpha_range[1]:
            raise AsmixError(f"alpha range must be MIN:MAX with MIN <= MAX, got {self.alpha_range}")
        if self.target_clean_acc is not None and not self.choose_head:
            raise AsmixError("a target clean accuracy chooses the head: it needs the head choice")
        if self.target_clean_acc is not None and not 0.0 < self.target_clean_acc <= 1.0:
            raise AsmixError(f"target clean accuracy must be a fraction in (0, 1], got {self.target_clean_acc}")
        check_alpha(self.range_min_alpha)
        if not 0.0 < self.range_max_width <= 1.0:
            raise AsmixError(f"range-max-width must be in (0, 1], got {self.range_max_width}")
        PGD(eps=self.threat.eps * self.eps_range[1], steps=high, norm=self.threat.norm)
        self.validation_threat.pgd()

    @property
    def validation_threat(self) -> ThreatModel:
        """The threat model of validation and of the verdict: ``threat`` at radius ``val_eps`` if given."""
        return self.threat if self.val_eps is None else replace(self.threat, eps=self.val_eps)

    @property
    def lite_budget(self) -> AttackBudget:
        """The AutoAttack-lite of the head choice and the verdict, with ``lite_square_queries``."""
        return lite_budget(self.lite_square_queries)

    def attack_copies(self, attack: TrainAttack) -> int:
        """Attacked copies per clean image that ``attack`` makes in setting C: one per target class for APGD-T,
        else one."""
        return self.target_classes if attack == "apgd-t" else 1

    @property
    def copies(self) -> int:
        """Attacked copies per clean image: in setting C those of each of ``train_attacks`` (by default APGD-CE plus
        one APGD-T per target class), else one."""
        return sum(map(self.attack_copies, self.train_attacks)) if self.setting == "C" else 1

    @classmethod
    def from_recipe(cls, recipe: Recipe, dataset: str, *, given: Collection[str] = (), **settings) -> TrainConfig:
        """A config of ``settings`` where ``recipe``'s values (``recipe_settings``) replace those not named in
        ``given`` (the ones a user set: they override the recipe)."""
        names = {field.name for field in fields(cls)}
        chosen = {name: value for name, value in recipe_settings(recipe, dataset).items() if name in names}
        return cls(**(settings | {name: value for name, value in chosen.items() if name not in given}), recipe=recipe)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(config_dict(self)))


def check_train_attacks(attacks: tuple[str, ...]) -> tuple[TrainAttack, ...]:
    """``attacks`` if they are known, at least one and none twice."""
    check_choices(attacks, TrainAttack, "train attack")
    if not attacks or len(set(attacks)) != len(attacks):
        raise AsmixError(
            f"train attacks must name each of {', '.join(TRAIN_ATTACKS)} at most once and one at least, got "
            f"{','.join(attacks) or 'none'}"
        )
    return tuple(attacks)


def parse_train_attacks(text: str) -> tuple[TrainAttack, ...]:
    """``apgd-ce,square`` -> the named attacks, checked, in ``TRAIN_ATTACKS`` order (the order their copies come)."""
    named = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    check_train_attacks(named)
    return tuple(attack for attack in TRAIN_ATTACKS if attack in named)


def parse_range(text: str, *, kind: type = float, name: str = "range") -> tuple:
    """``LOW:HIGH`` -> (LOW, HIGH) of ``kind``."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return kind(parts[0]), kind(parts[1])
    except ValueError as error:
        raise AsmixError(f"{name} must look like LOW:HIGH, got {text!r}") from error


Recipe = Literal["default", "paper"]
"""Named sets of settings: default (asmix's: ``TrainConfig``'s defaults and the dataset's ``RunSize``) and paper (the
authors' public code, ``RECIPES["paper"]``)."""

RECIPES: Mapping[Recipe, Mapping[str, Any]] = MappingProxyType(
    {
        "default": MappingProxyType({}),
        "paper": MappingProxyType(
            {
                "setting": "C",
                "train_attacks": DEFAULT_TRAIN_ATTACKS,
                "n_train": None,
                "epochs": 3,
                "target_classes": 9,
                "apgd_steps_df": 75,
                "pseudo_labels": "paper",
                "lr": 5e-5,
                "weight_decay": 1e-5,
                "grad_clip": 10.0,
                "c_ce": 0.0,
                "c_bce": 1.5,
                "c_prod": 0.3,
                "train_bias": 0.4,
                "ema_decay": 0.0,
                "eps_range": (0.4, 1.1),
                "attack_bce_max": 0.4,
            }
        ),
    }
)
"""Each recipe's settings by ``TrainConfig`` or ``RunSize`` field (``n_train`` None: all training images). paper is
METHOD.md section 8 (CIFAR-10's loss weights; ``DATASET_RECIPES`` has CIFAR-100's); it leaves out the authors'
exponential learning-rate warm-up over the first 1/25 of the steps (asmix's cosine schedule has none) and AMP
(``bf16``, on by default on CUDA)."""

DATASET_RECIPES: Mapping[tuple[Recipe, str], Mapping[str, Any]] = MappingProxyType(
    {("paper", "cifar100"): MappingProxyType({"c_prod": 0.2})}
)
"""A recipe's settings that differ on one dataset."""


def recipe_settings(recipe: Recipe, dataset: str) -> dict[str, Any]:
    """The settings ``recipe`` fixes on ``dataset``, by ``TrainConfig`` or ``RunSize`` field."""
    check_choice(recipe, Recipe, "recipe")
    return dict(RECIPES[recipe]) | dict(DATASET_RECIPES.get((recipe, dataset), {}))


@dataclass(frozen=True)
class RunSize:
    """How much data and work a run gets by default: smaller on the demo data (a few CPU minutes)."""

    n_train: int | None = None
    n_val: int = 1000
    epochs: int = 3
    batch_size: int = 128
    steps_range: tuple[int, int] = (5, 20)
    apgd_steps_df: int = 75
    target_classes: int = 9
    val_steps: int = 20
    n_compare: int = 1000


def default_run_size(dataset: str, recipe: Recipe = "default") -> RunSize:
    """Defaults per dataset, with ``recipe``'s budget (data, epochs, attack iterations) where it sets one; every
    value can be overridden from the CLI."""
    names = {field.name for field in fields(RunSize)}
    chosen = {name: value for name, value in recipe_settings(recipe, dataset).items() if name in names}
    return replace(_dataset_run_size(dataset), **chosen)


def _dataset_run_size(dataset: str) -> RunSize:
    if dataset == "demo":
        return RunSize(
            n_train=2048,
            n_val=500,
            epochs=4,
            batch_size=64,
            steps_range=(5, 10),
            apgd_steps_df=10,
            target_classes=2,
            val_steps=10,
        )
    return RunSize()
