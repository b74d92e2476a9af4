"""Results the RobustBench leaderboard takes: its ``model_info`` JSON for the mixed model and a filled claim
summary, rendered from an ``EvalResult`` of the leaderboard protocol (``evaluate --robustbench``)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from asmix.checks import threat_model_name
from asmix.errors import AsmixError
from asmix.io import atomic_write_json, atomic_write_text

LEADERBOARD_EXAMPLES = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}
"""How many test images the leaderboard evaluates (the first N; ImageNet: RobustBench's 5,000-image subset)."""

USER_FIELDS = ("link", "name", "authors", "additional_data", "venue", "reported", "footnote")
"""model_info fields only the user knows: null until they fill them in (``reported`` also by ``--reported``); a rerun
into the same folder keeps what they wrote unless the command line gives the field again."""

ADAPTIVE_NOTE = (
    "External: adaptive AutoAttack (asmix attack aa-adaptive), standard AutoAttack followed by APGD and Square "
    "stages that also attack the mixing network; an input counts as robust only if it survives every stage."
)
"""The footnote sentence that says which attack gave ``external``."""

FOOTNOTE_BREAK = "<br>"
"""How RobustBench's footnotes separate sentences."""


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


def model_info(
    result, dataset: str, *, architectures: dict[str, str] | None = None, reported: float | None = None
) -> dict[str, Any]:
    """RobustBench's ``model_info/<dataset>/<threat>/<name>.json`` for the mixed row (percent strings, as the
    leaderboard's files hold them): ``autoattack_acc`` is standard AutoAttack's, ``external`` the adaptive worst case
    (with a mixing network and aa-adaptive run), ``reported`` the user's claim in percent (null without one);
    ``architectures`` names g and h (``LoadedPair.architectures``), else their specs stand in."""
    names = architectures or {}
    models = result.models
    parts = [names.get(role) or models.get(role, default) for role, default in (("std", "g"), ("rob", "h"))]
    clean = result.rows["mixed"]["clean"]
    robust = result.rows["mixed"]["aa"]
    adaptive = result.rows["mixed"].get("aa-adaptive") if result.adaptive else None
    info = {
        "link": None,
        "name": None,
        "authors": None,
        "additional_data": None,
        "number_forward_passes": forward_passes(result),
        "dataset": dataset,
        "venue": None,
        "architecture": " + ".join(parts + (["mixing network"] if result.adaptive else [])),
        "eps": radius_text(result.config.threat.eps),
        "clean_acc": f"{100 * clean.accuracy:.2f}",
        "reported": None if reported is None else f"{check_reported(reported):.2f}",
        "autoattack_acc": f"{100 * robust.accuracy:.2f}",
    }
    if adaptive is not None:
        info["external"] = f"{100 * adaptive.accuracy:.2f}"
    info["footnote"] = ADAPTIVE_NOTE if adaptive is not None else None
    info["unreliable"] = bool(robust.unreliable or (adaptive is not None and adaptive.unreliable))
    return info


def check_reported(reported: float) -> float:
    """``--reported`` is a percentage."""
    if not 0.0 <= reported <= 100.0:
        raise AsmixError(f"--reported {reported:g} must be a percentage between 0 and 100 (e.g. 68.06)")
    return reported


def merge_model_info(existing: dict[str, Any], measured: dict[str, Any], given: frozenset[str] = frozenset()):
    """A rerun's ``model_info``: the measured numbers of ``measured``, the ``USER_FIELDS`` the user filled in
    ``existing`` (unless ``given`` on the command line), and any field asmix does not write kept as it was. The
    footnote keeps the user's text and gains or loses ``ADAPTIVE_NOTE`` with ``external``."""
    merged = dict(measured)
    for field in USER_FIELDS:
        if field not in given and existing.get(field) is not None:
            merged[field] = existing[field]
    sentences = [part for part in (merged["footnote"] or "").split(FOOTNOTE_BREAK) if part and part != ADAPTIVE_NOTE]
    if "external" in measured:
        sentences.append(ADAPTIVE_NOTE)
    merged["footnote"] = FOOTNOTE_BREAK.join(sentences) or None
    return merged | {key: value for key, value in existing.items() if key not in merged and key != "external"}


def read_model_info(path: str | Path) -> dict[str, Any]:
    """The ``model_info`` JSON already at ``path`` (empty where there is none), checked before the work that
    updates it."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AsmixError(f"cannot update {path}: it is not readable JSON ({error}); fix it or move it away") from error
    if not isinstance(info, dict):
        raise AsmixError(f"cannot update {path}: it holds a {type(info).__name__}, not a model_info object")
    return info


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
        *(
            [f"| adaptive AutoAttack (aa-adaptive, `external`) accuracy | {info['external']}% |"]
            if "external" in info
            else []
        ),
        f"| reported (the paper's claim) | {'not given' if info.get('reported') is None else info['reported'] + '%'} |",
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
    missing = [field for field in USER_FIELDS if info.get(field) is None]
    if missing:
        lines += [
            "## To fill in before submitting",
            "",
            f"In `{model_name}.json`: {', '.join(f'`{field}`' for field in missing)} (null: asmix cannot know "
            "them; `additional_data` is true if g, h or the mixer saw data beyond the training set; `reported` can "
            "also come from `--reported`). A rerun into this folder keeps what you fill in.",
            "",
        ]
    return "\n".join(lines)


def check_model_name(model_name: str) -> None:
    """``model_name`` names files in the ``--robustbench`` folder: a plain file name, not a path out of it."""
    if not model_name or Path(model_name).name != model_name or model_name in (".", "..") or "\\" in model_name:
        raise AsmixError(f"--model-name {model_name!r} must be a file name (no folders), e.g. Bai2023Improving")


def write_robustbench(
    result,
    directory: str | Path,
    *,
    dataset: str,
    model_name: str,
    deviations: list[str],
    architectures: dict[str, str] | None = None,
    reported: float | None = None,
) -> list[Path]:
    """``DIR/<model_name>.json`` (RobustBench's schema, no asmix keys; merged into the file already there, see
    ``merge_model_info``) and ``DIR/<model_name>.md`` (the claim), both written atomically."""
    from asmix.provenance import provenance

    check_model_name(model_name)
    directory = Path(directory)
    path = directory / f"{model_name}.json"
    measured = model_info(result, dataset, architectures=architectures, reported=reported)
    given = frozenset({"reported"} if reported is not None else ())
    info = merge_model_info(read_model_info(path), measured, given)
    return [
        atomic_write_json(path, info, stamp=False),
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
