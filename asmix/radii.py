"""Certified radii of the mixed classifier (Section 3.1, Appendix A) and Gaussian smoothing: Lemma 3.2, Thm 3.5,
Thm A.2, Clopper-Pearson bounds and certified accuracy, as pure functions over probabilities, plus the Monte Carlo
estimate of a smoothed classifier's probabilities."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn

from asmix.checks import check_choice
from asmix.errors import AsmixError
from asmix.mixing import check_alpha
from asmix.runtime import batch_slices

SmoothingOutput = Literal["probs", "votes"]
"""probs: smooth h's softmax (App. A.1); votes: smooth its argmax (Cohen et al.)."""
SMOOTHING_OUTPUTS: tuple[SmoothingOutput, ...] = get_args(SmoothingOutput)


def lemma32_threshold(alpha: float) -> float:
    """The margin (1 - alpha) / alpha that h needs for h_alpha to keep h's class (Lemma 3.2)."""
    if not 0.0 < alpha <= 1.0:
        raise AsmixError(f"Lemma 3.2 needs alpha in (0, 1], got {alpha}")
    return (1.0 - alpha) / alpha


def satisfies_lemma32(margin: torch.Tensor, alpha: float) -> torch.Tensor:
    """Where h's margin (p_y - max_{i != y} p_i under attack) meets Lemma 3.2 for ``alpha``.

    The lemma also needs alpha >= 1/2; below it nothing is guaranteed and all entries are False.
    """
    if alpha < 0.5:
        return torch.zeros_like(margin, dtype=torch.bool)
    return margin >= lemma32_threshold(alpha)


def top_two(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top class, its probability, runner-up probability)`` per row of an (N, c) tensor."""
    values, indices = probs.topk(2, dim=1)
    return indices[:, 0], values[:, 0], values[:, 1]


def lipschitz_radius(
    p_top: torch.Tensor,
    p_runner_up: torch.Tensor,
    alpha: float,
    lipschitz: float | torch.Tensor,
) -> torch.Tensor:
    """Thm 3.5 with one Lipschitz constant L for every class of softmax(h):

        r = (alpha * (p_y - p_y') + alpha - 1) / (2 * alpha * L)

    p_y' is the runner-up (the min over i != y is there when all L_i are equal); a radius <= 0 certifies nothing; at
    alpha = 1 it is the usual (p_y - p_y') / (2L). ``lipschitz`` may be a per-example tensor (App. C.3)."""
    check_alpha(alpha)
    lipschitz = torch.as_tensor(lipschitz, dtype=p_top.dtype, device=p_top.device)
    if (lipschitz <= 0).any():
        raise AsmixError("the Lipschitz constant must be positive")
    if alpha == 0.0:
        return torch.full_like(p_top, float("-inf"))
    return (alpha * (p_top - p_runner_up) + alpha - 1.0) / (2.0 * alpha * lipschitz)


def lipschitz_radius_per_class(probs: torch.Tensor, alpha: float, lipschitz: torch.Tensor) -> torch.Tensor:
    """Thm 3.5 (eq. 3.5) with a Lipschitz constant per class, shape (c,) or (N, c):

    r = min_{i != y} (alpha * (p_y - p_i) + alpha - 1) / (alpha * (L_y + L_i)),  y = argmax p
    """
    check_alpha(alpha)
    if alpha == 0.0:
        return torch.full(probs.shape[:1], float("-inf"), dtype=probs.dtype, device=probs.device)
    lipschitz = torch.as_tensor(lipschitz, dtype=probs.dtype, device=probs.device).expand_as(probs)
    if (lipschitz <= 0).any():
        raise AsmixError("Lipschitz constants must be positive")
    top = probs.argmax(dim=1, keepdim=True)
    p_top, lip_top = probs.gather(1, top), lipschitz.gather(1, top)
    radii = (alpha * (p_top - probs) + alpha - 1.0) / (alpha * (lip_top + lipschitz))
    radii = radii.scatter(1, top, float("inf"))
    return radii.min(dim=1).values


def smoothing_lipschitz(sigma: float) -> float:
    """l_2 Lipschitz constant sqrt(2/pi)/sigma of each output of a Gaussian smoothing of a [0, 1]
    function with noise N(0, sigma^2 I) (Salman et al.; used with Thm 3.5 in Appendix A.2)."""
    _check_sigma(sigma)
    return math.sqrt(2.0 / math.pi) / sigma


def smoothing_radius(p_top: torch.Tensor, p_runner_up: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Thm A.2: r = sigma/2 * (PhiInv(alpha * p_y) - PhiInv(alpha * p_y' + 1 - alpha)), l_2.

    ``p_top``/``p_runner_up`` are the smoothed probabilities of the top two classes (or a lower and
    an upper bound). A radius <= 0 certifies nothing; at alpha = 1 it is Salman et al.'s
    sigma/2 * (PhiInv(p_y) - PhiInv(p_y')).
    """
    check_alpha(alpha)
    _check_sigma(sigma)
    if alpha == 0.0:
        return torch.full_like(p_top, float("-inf"))
    normal = torch.distributions.Normal(0.0, 1.0)
    p_top = p_top.double()
    p_runner_up = p_runner_up.double()
    high = normal.icdf((alpha * p_top).clamp(0.0, 1.0))
    low = normal.icdf((alpha * p_runner_up + 1.0 - alpha).clamp(0.0, 1.0))
    radius = sigma / 2.0 * (high - low)
    return torch.nan_to_num(radius, nan=float("-inf")).float()


def clopper_pearson(successes: torch.Tensor, n: int, confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided Clopper-Pearson interval for a binomial proportion at ``confidence`` (each side
    holds with probability 1 - (1 - confidence)/2); exact, never narrower than the truth allows."""
    error = _check_confidence(confidence)
    return clopper_pearson_lower(successes, n, error / 2), clopper_pearson_upper(successes, n, error / 2)


def clopper_pearson_lower(successes: torch.Tensor, n: int, error: float) -> torch.Tensor:
    """One-sided lower bound: P(p < bound) <= error. Beta(error; k, n - k + 1), 0 at k = 0."""
    from scipy.stats import beta

    k = torch.as_tensor(successes).double().cpu().numpy()
    bound = beta.ppf(error, k, n - k + 1)
    return torch.nan_to_num(torch.as_tensor(bound, dtype=torch.float64), nan=0.0).where(
        torch.as_tensor(k) > 0, torch.tensor(0.0, dtype=torch.float64)
    )


def clopper_pearson_upper(successes: torch.Tensor, n: int, error: float) -> torch.Tensor:
    """One-sided upper bound: P(p > bound) <= error. Beta(1 - error; k + 1, n - k), 1 at k = n."""
    from scipy.stats import beta

    k = torch.as_tensor(successes).double().cpu().numpy()
    bound = beta.ppf(1.0 - error, k + 1, n - k)
    return torch.nan_to_num(torch.as_tensor(bound, dtype=torch.float64), nan=1.0).where(
        torch.as_tensor(k) < n, torch.tensor(1.0, dtype=torch.float64)
    )


def bounded_top_two(counts: torch.Tensor, n: int, confidence: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top class, lower bound of its probability, upper bound of every other class's)`` from
    per-class counts (N, c) of ``n`` categorical draws each.

    All 2c one-sided Clopper-Pearson bounds hold together with probability >= ``confidence``
    (union bound), so the class picked from the same draws needs no separate selection samples.
    The runner-up bound is also capped by 1 - lower(top), as the probabilities sum to 1.
    """
    error = _check_confidence(confidence)
    classes = counts.shape[1]
    per_bound = error / (2 * classes)
    top = counts.argmax(dim=1)
    lower = clopper_pearson_lower(counts.gather(1, top[:, None])[:, 0], n, per_bound).float()
    others = counts.double().scatter(1, top[:, None], -1.0)
    upper = clopper_pearson_upper(others.max(dim=1).values.clamp_min(0), n, per_bound).float()
    return top, lower, torch.minimum(upper, 1.0 - lower)


def certified_accuracy(radii: torch.Tensor, correct: torch.Tensor, at: torch.Tensor | list[float]) -> torch.Tensor:
    """Share of examples that are correct with a certified radius >= r, for each r in ``at``
    (Figures 6 and 7). Negative radii certify nothing, not even at r = 0."""
    at = torch.as_tensor(at, dtype=torch.float32)
    if len(radii) == 0:
        return torch.zeros_like(at)
    radii = radii.float().reshape(-1, 1)
    certified = correct.bool().reshape(-1, 1) & (radii >= 0) & (radii >= at.reshape(1, -1))
    return certified.float().mean(dim=0)


@torch.no_grad()
def smoothed_probabilities(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n_samples: int,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    output: SmoothingOutput = "probs",
    draw_counts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Monte Carlo estimate of h(x) = E_xi[softmax(base(x + xi))], xi ~ N(0, sigma^2 I) (Assumption A.1), or of the
    one-hot argmax with ``output="votes"`` (Cohen et al.): ``(mean probabilities (N, c), counts (N, c) or None)``. With
    ``draw_counts`` each noise sample also draws a class from its output, so the counts are multinomial with the
    smoothed probabilities, as Clopper-Pearson needs. Noise from the CPU ``generator``; no clipping (the theorem is on
    R^d)."""
    _check_sigma(sigma)
    if n_samples <= 0:
        raise AsmixError(f"n-samples must be positive, got {n_samples}")
    check_choice(output, SmoothingOutput, "smoothing output")
    device = x.device
    means, all_counts = [], []
    for index in range(len(x)):
        point = x[index : index + 1]
        summed, counts = None, None
        for part in batch_slices(n_samples, batch_size):
            size = part.stop - part.start
            noise = torch.randn((size, *point.shape[1:]), generator=generator).to(device, point.dtype) * sigma
            logits = model(point + noise).float()
            values = torch.softmax(logits, dim=1)
            if output == "votes":
                values = torch.zeros_like(values).scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)
            summed = values.sum(dim=0) if summed is None else summed + values.sum(dim=0)
            if draw_counts:
                draws = torch.multinomial(values.cpu(), 1, generator=generator)[:, 0]
                batch_counts = torch.bincount(draws, minlength=values.shape[1])
                counts = batch_counts if counts is None else counts + batch_counts
        means.append((summed / n_samples).cpu())
        if draw_counts:
            all_counts.append(counts)
    if not means:
        return torch.empty(0), (torch.empty(0, dtype=torch.long) if draw_counts else None)
    return torch.stack(means), (torch.stack(all_counts) if draw_counts else None)


def _check_sigma(sigma: float) -> None:
    if not sigma > 0:
        raise AsmixError(f"sigma must be positive, got {sigma}")


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise AsmixError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence
