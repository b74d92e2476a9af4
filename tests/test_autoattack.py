"""AutoAttack wrappers: the unreliable flag, the per-attack trail, seeding, and the adaptive APGD."""

from __future__ import annotations

import pytest
import torch
from conftest import StandInMixer
from torch import nn

from asmix.attacks.adaptive import (
    ADAPTIVE_STAGES,
    AlphaAPGD,
    AlphaAPGDTargeted,
    AttackBudget,
    adaptive_autoattack,
    autoattack_lite,
    stage_points,
)
from asmix.attacks.autoattack import accuracy_trail, potentially_unreliable, standard_autoattack
from asmix.attacks.objectives import alpha_down_term
from asmix.compat import register_autoattack
from asmix.errors import AsmixError
from asmix.mixing import MixedClassifier, MixParts


def tiny_linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 10)).eval()


class TinyAlpha(StandInMixer):
    """A stand-in mixing network: alpha = sigmoid(w * mean pixel + b), differentiable in x."""

    def __init__(self, weight: float = 8.0, bias: float = -2.0) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(weight)
            self.linear.bias.fill_(bias)

    def logit(self, x):
        return self.linear(x.mean(dim=(1, 2, 3)).unsqueeze(1)).squeeze(1)


def adaptive_mix() -> MixedClassifier:
    rob = tiny_linear(1)
    with torch.no_grad():
        rob[1].weight.mul_(0.3)
    return MixedClassifier(tiny_linear(0), rob, TinyAlpha()).eval()


def predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.fixture
def data():
    torch.manual_seed(1)
    x = torch.rand(24, 1, 6, 6)
    return x, tiny_linear(0)(x).argmax(1)


@pytest.mark.parametrize(
    "trail, flagged",
    [
        ({"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.447}, True),  # 0.3 points
        ({"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.449}, False),  # 0.1 points
        ({"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.448}, True),  # exactly 0.2
        ({"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.45}, False),
        ({"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45}, False),  # no Square
        ({"clean": 0.9, "square": 0.1}, False),  # nothing before
        ({"clean": 0.9, "apgd-ce": 0.5, "square": 0.5, "apgd-ce-alpha": 0.2}, False),  # later APGD ignored
    ],
)
def test_unreliable_flag(trail, flagged):
    assert potentially_unreliable(trail) is flagged


def test_unreliable_flag_matches_the_package_check(caplog):
    checks = register_autoattack().checks
    trail = {"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.44}
    import logging

    logger = logging.getLogger("asmix-test-square")
    with caplog.at_level(logging.WARNING, logger="asmix-test-square"):
        checks.check_square_sr(trail, logger=logger)
    assert "unreliable" in caplog.text
    assert potentially_unreliable(trail)


def test_accuracy_trail_counts_examples():
    robust = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert accuracy_trail(robust, ("clean", "apgd-ce", "square")) == {"clean": 0.75, "apgd-ce": 0.5, "square": 0.25}
    with pytest.raises(ValueError):
        accuracy_trail(robust, ("clean",))


def test_standard_autoattack_trail_is_consistent_and_seeded(data):
    x, y = data
    model = tiny_linear(0)
    rng_before = torch.random.get_rng_state()
    run = standard_autoattack(model, x, y, eps=0.1, seed=3, square_queries=50)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert run.stages == ("clean", "apgd-ce", "apgd-t", "fab-t", "square")
    trail = list(run.trail.values())
    assert trail[0] == 1.0 and all(a >= b for a, b in zip(trail, trail[1:]))
    assert 0 < trail[-1] < 1  # some examples broken, some robust at this radius
    assert (run.x_adv - x).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        still_correct = model(run.x_adv).argmax(1) == y
    assert torch.equal(still_correct, run.robust[:, -1])
    again = standard_autoattack(model, x, y, eps=0.1, seed=3, square_queries=50)
    assert torch.equal(again.x_adv, run.x_adv) and torch.equal(again.robust, run.robust)


def test_standard_autoattack_breaks_a_model_at_a_large_radius(data):
    x, y = data
    run = standard_autoattack(tiny_linear(0), x, y, eps=0.5, seed=0, square_queries=20)
    assert run.trail["clean"] == 1.0 and run.trail["apgd-ce"] == 0.0 and run.trail["square"] == 0.0


def test_standard_autoattack_rejects_unknown_attack(data):
    x, y = data
    with pytest.raises(AsmixError, match="unknown AutoAttack"):
        standard_autoattack(tiny_linear(0), x, y, eps=0.1, attacks=("apgd-ce", "pgd"))


@pytest.mark.parametrize(
    "ours, package_attack, extra",
    [
        (AlphaAPGD, "APGDAttack", {"loss": "ce"}),
        (AlphaAPGDTargeted, "APGDAttack_targeted", {"n_target_classes": 2}),
    ],
)
@pytest.mark.parametrize("adaptive, weight", [(False, 0.5), (True, 0.0)])
def test_alpha_apgd_equals_the_package_attack_when_the_alpha_term_is_constant(
    data, ours, package_attack, extra, adaptive, weight
):
    """A fixed alpha (the term has no gradient) or a zero weight leaves the package's attack unchanged."""
    x, _ = data
    mixed = adaptive_mix() if adaptive else MixedClassifier(tiny_linear(0), tiny_linear(1), 0.7)
    y = predicted(mixed, x)
    package = getattr(register_autoattack().autopgd_base, package_attack)(mixed, n_iter=15, eps=0.1, seed=5, **extra)
    extra = {k: v for k, v in extra.items() if k != "loss"}
    attack = ours(mixed, eps=0.1, n_iter=15, seed=5, alpha_weight=weight, **extra)
    with torch.no_grad():
        plain, adapted = package.perturb(x, y), attack.perturb(x, y)
    assert (plain != x).any()
    torch.testing.assert_close(adapted, plain)


def test_alpha_apgd_pushes_alpha_down(data):
    x, _ = data
    mixed = adaptive_mix()
    y = predicted(mixed, x)
    results = {}
    for weight in (0.0, 0.95):
        attack = AlphaAPGD(mixed, eps=0.1, n_iter=20, seed=0, alpha_weight=weight)
        # best_loss=True returns the highest-loss point for every example, fooled or not
        with torch.no_grad():
            x_adv = attack.perturb(x, y, best_loss=True)
            results[weight] = mixed(x_adv, return_alpha=True)[1].mean().item()
    with torch.no_grad():
        clean_alpha = mixed(x, return_alpha=True)[1].mean().item()
    assert results[0.95] < clean_alpha - 0.1
    assert results[0.95] < results[0.0]


def test_targeted_alpha_apgd_pushes_alpha_down(data):
    x, _ = data
    mixed = adaptive_mix()
    y = predicted(mixed, x)
    with torch.no_grad():
        runner_up = mixed(x).sort(1)[1][:, -2]
    mean_alpha = {}
    for weight in (0.0, 0.95):
        attack = AlphaAPGDTargeted(mixed, eps=0.1, n_iter=20, seed=0, n_target_classes=1, alpha_weight=weight)
        attack.init_hyperparam(x)
        attack.y_target = runner_up
        torch.manual_seed(0)
        # one run of the package's inner loop: its first output is the highest-loss point per example
        x_best = attack.attack_single_run(x, y)[0]
        with torch.no_grad():
            mean_alpha[weight] = mixed(x_best, return_alpha=True)[1].mean().item()
    assert mean_alpha[0.95] < mean_alpha[0.0] - 0.05


def test_alpha_term_is_bce_of_the_logit_with_label_one():
    logit = torch.tensor([-2.0, 0.0, 3.0])
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logit), torch.ones(3), reduction="none")
    torch.testing.assert_close(alpha_down_term(MixParts(None, None, torch.sigmoid(logit), logit)), expected)
    assert alpha_down_term(MixParts(None, None, 0.5)) == 0.0  # a fixed alpha has no term
    with pytest.raises(AsmixError, match="alpha weight"):
        AlphaAPGD(adaptive_mix(), eps=0.1, alpha_weight=2.0)


def test_adaptive_autoattack_equals_standard_for_fixed_alpha(data):
    x, _ = data
    mixed = MixedClassifier(tiny_linear(0), tiny_linear(1), 0.6)
    y = predicted(mixed, x)
    standard = standard_autoattack(mixed, x, y, eps=0.04, seed=1, square_queries=30)
    adaptive = adaptive_autoattack(mixed, x, y, eps=0.04, seed=1, budget=AttackBudget(square_queries=30))
    assert 0 < standard.trail["square"] < 1
    assert adaptive.stages == standard.stages
    assert torch.equal(adaptive.robust, standard.robust) and torch.equal(adaptive.x_adv, standard.x_adv)


def test_adaptive_autoattack_is_at_least_as_strong_and_reports_alpha_per_stage(data):
    x, _ = data
    mixed = adaptive_mix()
    y = predicted(mixed, x)
    standard = standard_autoattack(mixed, x, y, eps=0.04, seed=1, square_queries=30)
    budget = AttackBudget(apgd_steps=20, target_classes=2, square_queries=30)
    adaptive = adaptive_autoattack(mixed, x, y, eps=0.04, seed=1, standard=standard, budget=budget)
    assert 0 < standard.trail["square"] < 1  # the adaptive stages had examples left to attack
    assert adaptive.stages == (*standard.stages, *ADAPTIVE_STAGES)
    assert not (adaptive.robust[:, -1] & ~standard.robust[:, -1]).any()  # worst case: robust only if every stage fails
    assert (adaptive.robust[:, 1:] <= adaptive.robust[:, :-1]).all()
    with torch.no_grad():
        assert torch.equal(mixed(adaptive.x_adv).argmax(1) == y, adaptive.robust[:, -1])
    means = adaptive.mean_alpha
    assert set(means) == set(adaptive.stages) and 0 < means["clean"] < 1
    attacked = ~adaptive.alpha[:, -1].isnan()  # Square-alpha ran on the examples still robust before it
    assert torch.equal(attacked, adaptive.robust[:, -2])


def test_stage_points_give_every_example_a_perturbed_point_in_the_ball(data):
    x, _ = data
    mixed = adaptive_mix()
    y = predicted(mixed, x)
    budget = AttackBudget(apgd_steps=5, target_classes=2, square_queries=10)
    points = stage_points(mixed, x, y, eps=0.02, seed=3, budget=budget)
    assert list(points) == list(ADAPTIVE_STAGES)
    for name, point in points.items():
        assert point.shape == x.shape and (point - x).abs().max() <= 0.02 + 1e-6, name
        assert ((point - x).flatten(1).abs().amax(1) > 0).all(), name  # where it failed too: not the clean input
        fooled = predicted(mixed, point) != y
        assert not fooled.all(), name  # a small radius: some examples keep the stage's closest point
    again = stage_points(mixed, x, y, eps=0.02, seed=3, budget=budget, stages=("square-alpha",))
    assert list(again) == ["square-alpha"] and torch.equal(again["square-alpha"], points["square-alpha"])
    with pytest.raises(AsmixError, match="unknown adaptive stage"):
        stage_points(mixed, x, y, eps=0.02, stages=("fab",))


class MagnitudeDetector(StandInMixer):
    """A mixer that flags large perturbations: its logit grows with the mean |x - 0.5|. Clean images here are
    0.5 everywhere, and g can be fooled through one pixel, so an attack that keeps the rest still wins."""

    def __init__(self, slope: float = 4000.0, threshold: float = 0.02) -> None:
        super().__init__()
        self.slope, self.threshold = slope, threshold

    def logit(self, x):
        return self.slope * ((x - 0.5).abs().mean(dim=(1, 2, 3)) - self.threshold)


def _one_pixel_pair():
    """g: a linear model fooled by moving pixel 0 alone; h: always right (a perfectly robust stand-in)."""
    g = nn.Sequential(nn.Flatten(), nn.Linear(36, 10)).eval()
    with torch.no_grad():
        g[1].weight.zero_()
        g[1].bias.copy_(torch.linspace(0, 1, 10))  # class 9 wins on clean images
        g[1].weight[8, 0], g[1].bias[8] = 40.0, -21.5  # class 8: -1.5 on clean images, +2.5 with pixel 0 up by 0.1
        g[1].weight[8] += 0.001 * torch.randn(36)
    h = nn.Sequential(nn.Flatten(), nn.Linear(36, 10)).eval()
    with torch.no_grad():
        h[1].weight.zero_()
        h[1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(9), 10).float() * 20)
    return g, h


def test_adaptive_attack_beats_a_mixer_that_only_flags_large_perturbations():
    torch.manual_seed(0)
    g, h = _one_pixel_pair()
    mixed = MixedClassifier(g, h, MagnitudeDetector()).eval()
    x = torch.full((12, 1, 6, 6), 0.5)
    y = torch.full((12,), 9)
    with torch.no_grad():
        assert (mixed(x).argmax(1) == y).all()
    budget = AttackBudget(apgd_steps=40, target_classes=2, square_queries=100)
    standard = standard_autoattack(mixed, x, y, eps=0.1, seed=0, square_queries=100)
    worst = adaptive_autoattack(mixed, x, y, eps=0.1, seed=0, standard=standard, budget=budget)
    assert standard.trail["square"] == 1.0  # every standard attack moves many pixels and is flagged
    assert worst.trail[ADAPTIVE_STAGES[-1]] <= 0.25
    lite = autoattack_lite(mixed, x, y, eps=0.1, budget=budget)
    assert lite.trail[ADAPTIVE_STAGES[-1]] <= 0.25


def stage_lines(events) -> list[str]:
    return [event.line() for event in events]


def assert_robust_never_grows(events, examples: int) -> None:
    counts = [event.robust for event in events]
    assert all(event.examples == examples for event in events)
    assert all(a >= b for a, b in zip(counts, counts[1:])), stage_lines(events)


def test_standard_autoattack_reports_each_stage_and_target_with_its_robust_count(data):
    x, y = data
    events = []
    run = standard_autoattack(tiny_linear(0), x, y, eps=0.05, seed=3, square_queries=30, on_stage=events.append)
    assert_robust_never_grows(events, len(x))
    finished = [event for event in events if event.step == event.total]
    assert [event.stage for event in finished] == list(run.stages)
    assert [event.robust for event in finished] == run.robust.sum(0).tolist()  # the run's own counts
    targets = [event for event in events if event.stage == "apgd-t" and event.step < event.total]
    assert targets and targets[0].step == 0 and targets[0].total == 9 and targets[0].unit == "target"
    assert [event.step for event in targets] == list(range(len(targets)))
    assert stage_lines(events)[0] == f"clean done, {len(x)}/{len(x)} robust"
    assert f"apgd-t 0/9 targets, {run.robust[:, 1].sum()}/{len(x)} robust" in stage_lines(events)
    queries = [event for event in events if event.stage == "square" and event.unit == "query"]
    assert run.robust[:, 3].sum() > 0 and queries  # Square ran, and reported inside its query loop
    assert all(event.total == 30 for event in queries) and queries[-1].step > queries[0].step
    assert [event.step for event in queries] == sorted(event.step for event in queries)
    assert queries[0].robust == run.robust[:, 3].sum().item()
    assert f"square 1/30 queries, {queries[1].robust}/{len(x)} robust" in stage_lines(events)
    with torch.no_grad():  # reporting leaves the package attacks as they were: same numbers without it
        again = standard_autoattack(tiny_linear(0), x, y, eps=0.05, seed=3, square_queries=30)
    assert torch.equal(again.robust, run.robust) and torch.equal(again.x_adv, run.x_adv)


def test_adaptive_autoattack_reports_the_adaptive_stages_after_the_standard_ones(data):
    x, _ = data
    mixed = adaptive_mix()
    y = predicted(mixed, x)
    events = []
    budget = AttackBudget(apgd_steps=10, target_classes=2, square_queries=20)
    run = adaptive_autoattack(mixed, x, y, eps=0.04, seed=1, budget=budget, on_stage=events.append)
    assert_robust_never_grows(events, len(x))
    finished = [event for event in events if event.step == event.total]
    assert [event.stage for event in finished] == list(run.stages)
    assert [event.robust for event in finished] == run.robust.sum(0).tolist()
    order = list(dict.fromkeys(event.stage for event in events))
    assert order == ["clean", "apgd-ce", "apgd-t", "fab-t", "square", *ADAPTIVE_STAGES]
    queries = [event for event in events if event.stage == "square-alpha" and event.unit == "query"]
    assert queries and all(event.total in (1, 20) for event in queries)  # inside Square's loop too (1: done)
    assert [event.step for event in queries[:3]] == [0, 1, 2]
    targets = [event.step for event in events if event.stage == "apgd-t-alpha" and event.unit == "target"]
    assert targets[0] == 0 and all(event.total in (1, 2) for event in events if event.stage == "apgd-t-alpha")
