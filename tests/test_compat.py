"""The AutoAttack internals asmix subclasses or sets are where asmix expects them.

asmix's adaptive APGDs (``asmix.attacks.autoattack``), min-margin APGDs (``asmix.attacks.margin``)
and the quick Square check override or call ``attack_single_run``, ``init_hyperparam``, the DLR losses
and Square's ``n_queries``; a release that moves them must fail here, loudly, not change numbers.
"""

import inspect
from importlib import metadata

import pytest
import torch
from torch import nn

from asmix.compat import register_autoattack


@pytest.fixture(scope="module")
def autoattack():
    register_autoattack()
    from autoattack import autopgd_base, square
    from autoattack.autoattack import AutoAttack

    return autopgd_base, square, AutoAttack


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_installed_release_is_inside_the_pinned_range():
    major, minor = (int(part) for part in metadata.version("pyautoattack").split(".")[:2])
    assert (major, minor) == (0, 2), "asmix pins pyautoattack>=0.2,<0.3: recheck tests/test_compat.py first"


def test_apgd_internals(autoattack):
    autopgd_base, _, _ = autoattack
    apgd = autopgd_base.APGDAttack
    assert parameters(apgd.attack_single_run) == ["self", "x", "y", "x_init"]
    assert inspect.signature(apgd.attack_single_run).parameters["x_init"].default is None
    assert parameters(apgd.init_hyperparam) == ["self", "x"]
    assert parameters(apgd.dlr_loss) == ["self", "x", "y"]
    assert {"predict", "n_iter", "norm", "n_restarts", "eps", "seed", "loss", "rho", "device"} <= set(
        parameters(apgd.__init__)
    )
    attack = apgd(nn.Linear(4, 3), n_iter=10, eps=0.1, norm="Linf", seed=3, device=torch.device("cpu"))
    for name in ("model", "n_iter", "eps", "norm", "n_restarts", "seed", "device", "y_target"):
        assert hasattr(attack, name), name
    assert attack.n_restarts == 1 and attack.seed == 3


def test_targeted_apgd_internals(autoattack):
    autopgd_base, _, _ = autoattack
    targeted = autopgd_base.APGDAttack_targeted
    assert issubclass(targeted, autopgd_base.APGDAttack)
    assert targeted.attack_single_run is autopgd_base.APGDAttack.attack_single_run
    assert targeted.init_hyperparam is autopgd_base.APGDAttack.init_hyperparam
    assert parameters(targeted.dlr_loss_targeted) == ["self", "x", "y"]
    assert "n_target_classes" in parameters(targeted.__init__)
    attack = targeted(nn.Linear(4, 5), n_iter=10, eps=0.1, n_target_classes=2, device=torch.device("cpu"))
    assert attack.n_target_classes == 2 and attack.y_target is None


def test_square_internals(autoattack):
    _, square, auto_attack = autoattack
    assert parameters(square.SquareAttack.attack_single_run) == ["self", "x", "y"]
    assert parameters(square.SquareAttack.init_hyperparam) == ["self", "x"]
    assert inspect.signature(square.SquareAttack.__init__).parameters["n_queries"].default == 5000
    adversary = auto_attack(nn.Linear(4, 10), norm="Linf", eps=0.1, version="standard", device=torch.device("cpu"))
    assert isinstance(adversary.square, square.SquareAttack) and adversary.square.n_queries == 5000
    adversary.square.n_queries = 100  # asmix's --square-queries sets this attribute
    assert adversary.square.n_queries == 100
    assert adversary.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    evaluation = inspect.signature(adversary.run_standard_evaluation).parameters
    assert evaluation["batch_size"].kind is inspect.Parameter.KEYWORD_ONLY  # asmix passes batch_size=
    adversary.attacks_to_run = ["square"]  # asmix runs one attack at a time this way
    adversary.verbose = False
    run = adversary.run_standard_evaluation(torch.rand(2, 4), torch.tensor([0, 1]), batch_size=2)
    assert isinstance(run, tuple) and run[0].shape == (2, 4)  # asmix unpacks (x_adv, _)
