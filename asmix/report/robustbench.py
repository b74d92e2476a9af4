"""Results the RobustBench leaderboard takes: its ``model_info`` JSON for the mixed model and a filled claim
summary, rendered from an ``EvalResult`` of the leaderboard protocol (``evaluate --robustbench``)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from asmix.checks import threat_model_name
from asmix.errors import AsmixError
from asmix.io import atomic_write_json, atomic_write_text

LEADERBOARD_EXAMPLES = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}
"""How many test images the leaderboard evaluates (the first N; ImageNet: RobustBench's 5,000-image subset)."""

TO_FILL = ["link", "name", "authors", "venue", "additional_data", "footnote"]
"""model_info fields only the user knows: left empty (null) for them to fill."""


def radius_text(eps: float) -> str:
    """The radius as RobustBench writes it: ``8/255`` where it is a fraction of 255, else the number."""
    fraction = Fraction(eps).limit_denominator(255)
    if fraction.denominator == 255 and abs(float(fraction) - eps) < 1e-9:
        return f"{fraction.numerator}/255"
    return f"{eps:g}"


def forward_passes(result) -> int:
    """Forward passes of the mixed model per input: g and h each once (the mixer reads their features), one at a
    fixed alpha of 0 or 1."""
    if not result.adaptive and result.config.alpha in (0.0, 1.0):
        return 1
    return 2


def model_info(result, dataset: str) -> dict[str, Any]:
    """RobustBench's ``model_info/<dataset>/<threat>/<name>.json`` for the mixed row (percent strings, as the
    leaderboard's files hold them); the fields in ``TO_FILL`` are null."""
    models = result.models
    parts = [models.get("std", "g"), models.get("rob", "h")] + (["mixing network"] if result.adaptive else [])
    clean = result.rows["mixed"]["clean"]
    robust = result.rows["mixed"]["aa"]
    return {
        "link": None,
        "name": None,
        "authors": None,
        "additional_data": None,
        "number_forward_passes": forward_passes(result),
        "dataset": dataset,
        "venue": None,
        "architecture": " + ".join(parts),
        "eps": radius_text(result.config.threat.eps),
        "clean_acc": f"{100 * clean.accuracy:.2f}",
        "reported": f"{100 * robust.accuracy:.2f}",
        "autoattack_acc": f"{100 * robust.accuracy:.2f}",
        "footnote": None,
        "unreliable": bool(robust.unreliable),
    }


def claim_markdown(
    result, info: dict[str, Any], model_name: str, deviations: list[str], provenance: dict[str, Any]
) -> str:
    """A claim summary to paste into RobustBench's "add a model" issue: what was measured, how, and what the
    user still has to fill in."""
    n = result.n_examples
    clean, robust = result.rows["mixed"]["clean"], result.rows["mixed"]["aa"]
    lines = [
        f"# RobustBench claim: {model_name}",
        "",
        "| field | value |",
        "|---|---|",
        f"| dataset | {info['dataset']} |",
        f"| threat model | {threat_model_name(result.config.threat.norm)}, eps = {info['eps']} |",
        f"| architecture | {info['architecture']} |",
        f"| forward passes per input | {info['number_forward_passes']} |",
        f"| clean accuracy | {info['clean_acc']}% ({round(clean.accuracy * n)}/{n}) |",
        f"| AutoAttack (standard) accuracy | {info['autoattack_acc']}% ({round(robust.accuracy * n)}/{n}) |",
        f"| potentially unreliable (Square lowered accuracy after the gradient attacks) | {info['unreliable']} |",
        "",
        "## Evaluation",
        "",
        f"Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square with {result.config.square_queries} queries) from "
        f"the AutoAttack package on the mixed model's logits, seed {result.config.run.seed}, on the first {n} test "
        f"images; accuracy after each attack: "
        + ", ".join(f"{name} {100 * value:.2f}%" for name, value in (robust.trail or {}).items())
        + ".",
        "",
        f"Command: `{provenance.get('command')}`; versions: {provenance.get('versions')}; device: "
        f"{provenance.get('device')}; commit: {provenance.get('git_commit') or 'unknown'}.",
        "",
    ]
    if deviations:
        lines += ["## NOT the leaderboard protocol", "", *(f"- {item}" for item in deviations), ""]
    lines += [
        "## To fill in before submitting",
        "",
        f"In `{model_name}.json`: {', '.join(f'`{field}`' for field in TO_FILL)} (null here: asmix cannot know "
        "them; `additional_data` is true if g, h or the mixer saw data beyond the training set).",
        "",
    ]
    return "\n".join(lines)


def check_model_name(model_name: str) -> None:
    """``model_name`` names files in the ``--robustbench`` folder: a plain file name, not a path out of it."""
    if not model_name or Path(model_name).name != model_name or model_name in (".", "..") or "\\" in model_name:
        raise AsmixError(f"--model-name {model_name!r} must be a file name (no folders), e.g. Bai2023Improving")


def write_robustbench(
    result, directory: str | Path, *, dataset: str, model_name: str, deviations: list[str]
) -> list[Path]:
    """``DIR/<model_name>.json`` (RobustBench's schema, no asmix keys) and ``DIR/<model_name>.md`` (the claim)."""
    from asmix.provenance import provenance

    check_model_name(model_name)
    directory = Path(directory)
    info = model_info(result, dataset)
    return [
        atomic_write_json(directory / f"{model_name}.json", info, stamp=False),
        atomic_write_text(
            directory / f"{model_name}.md", claim_markdown(result, info, model_name, deviations, provenance())
        ),
    ]


def protocol_deviations(result, dataset: str, standard_eps: float) -> list[str]:
    """How a run differs from the leaderboard's protocol (none for a faithful run)."""
    deviations = []
    expected = LEADERBOARD_EXAMPLES.get(dataset)
    if expected is None:
        deviations.append(f"{dataset} has no RobustBench leaderboard")
    elif result.n_examples != expected:
        deviations.append(f"{result.n_examples} test images, not the leaderboard's {expected}")
    if abs(result.config.threat.eps - standard_eps) > 1e-12:
        deviations.append(f"eps {radius_text(result.config.threat.eps)}, not the standard {radius_text(standard_eps)}")
    if result.config.square_queries != 5000:
        deviations.append(f"Square with {result.config.square_queries} queries, not 5000")
    return deviations
