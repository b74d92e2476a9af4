"""The model card of a trained mixer: README.md beside mixer.safetensors, rendered from its mixer.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asmix.io import atomic_write_text
from asmix.report import alpha_text, percent

CARD = "README.md"


def mixer_card(document: dict[str, Any]) -> str:
    """Markdown: base models and the sha256 of their weights, the evaluation head, the training recipe, the data
    fingerprint and the verdict, all read from a mixer.json ``document``."""
    models, weights = document.get("models") or {}, document.get("base_weights") or {}
    architecture, training = document.get("architecture") or {}, document.get("training") or {}
    low, high = architecture.get("alpha_range", [None, None])
    lines = [
        "# asmix mixing network",
        "",
        "A mixing network alpha_theta(x) for adaptive smoothing (Bai et al., arXiv 2301.12554): it reads features "
        "of both base models and sets, per input, the weight alpha of h_alpha(x) = log((1 - alpha) softmax(g(x)) "
        "+ alpha softmax(h(x))). It only works with the base models below, with exactly these weights.",
        "",
        "## Base models",
        "",
        "| role | spec | weights sha256 |",
        "|---|---|---|",
    ]
    for role, name in (("std", "g (accurate)"), ("rob", "h (robust)")):
        lines.append(f"| {name} | `{models.get(role, 'unknown')}` | `{weights.get(role, 'not recorded')}` |")
    lines += [
        "",
        "## Evaluation head",
        "",
        f"alpha range ({low}, {high}), bias {architecture.get('alpha_bias')}, sigmoid scale "
        f"{architecture.get('scale')}; taps g {architecture.get('std_layers') or 'none (reads h alone)'}, "
        f"h {architecture.get('rob_layers')}.",
    ]
    selection = document.get("selection")
    if selection:
        lines += [
            "",
            f"Chosen for clean accuracy >= {percent(selection['target_clean_acc'])}% on "
            f"{selection['n_examples']} held-out examples by adaptive AutoAttack-lite "
            f"(clean {percent(selection['clean_acc'])}%).",
        ]
    lines += [
        "",
        "## Training",
        "",
        f"Setting {training.get('setting')}, {training.get('epochs')} epochs, batch {training.get('batch_size')}, "
        f"{document.get('n_train')} training images, {document.get('n_val')} held out; "
        f"{training.get('norm')} eps {training.get('eps_max')} "
        f"(radius eps x U{tuple(training.get('eps_range') or ())}), "
        f"pseudo-labels {training.get('pseudo_labels')}, seed {training.get('seed')}.",
        "",
        f"Training data sha256: `{document.get('data_fingerprint')}`",
        "",
        "<details><summary>All training settings</summary>",
        "",
        "```json",
        json.dumps(training, indent=2),
        "```",
        "",
        "</details>",
    ]
    verdict = document.get("verdict")
    lines += ["", "## Verdict", ""]
    if verdict:
        lines += [
            verdict["line"],
            "",
            f"On {verdict['n_examples']} held-out examples the head choice did not see, adaptive AutoAttack-lite "
            f"{verdict['norm']} eps {verdict['eps']:.4g}:",
            "",
            "| model | clean | AutoAttack-lite (worst case) | mean alpha clean | mean alpha attacked |",
            "|---|---|---|---|---|",
        ]
        for row in (verdict["mixer"], verdict["fixed"]):
            lines.append(
                f"| {row['name']} | {row['clean_correct']}/{verdict['n_examples']} | "
                f"{row['attacked_correct']}/{verdict['n_examples']} | {alpha_text(row.get('alpha_clean'))} | "
                f"{alpha_text(row.get('alpha_attacked'))} |"
            )
    else:
        lines.append("Not measured (trained with --no-verdict or without --target-clean-acc).")
    provenance = document.get("provenance") or {}
    if provenance:
        lines += [
            "",
            "## Provenance",
            "",
            f"`{provenance.get('command')}` on {provenance.get('device')}, "
            f"started {provenance.get('started')}, versions {provenance.get('versions')}, commit "
            f"{provenance.get('git_commit') or 'unknown'}.",
        ]
    lines += [
        "",
        "Load it with `asmix evaluate --std SPEC --rob SPEC --mixer DIR` (or `--mixer hf:ORG/NAME` from the "
        "local Hugging Face cache).",
        "",
    ]
    return "\n".join(lines)


def write_mixer_card(directory: str | Path) -> Path:
    """Render ``directory/mixer.json`` as ``directory/README.md`` (atomically)."""
    directory = Path(directory)
    document = json.loads((directory / "mixer.json").read_text())
    return atomic_write_text(directory / CARD, mixer_card(document))
