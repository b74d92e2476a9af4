"""The model card of a trained mixer: README.md beside mixer.safetensors, rendered from its mixer.json, with the
YAML metadata the Hugging Face Hub reads (written with huggingface_hub's model-card tools)."""

from __future__ import annotations

import json
from pathlib import Path

from asmix.io import atomic_write_text
from asmix.mixer import MixerCard
from asmix.report import alpha_text, percent
from asmix.report.train import head_text

CARD = "README.md"

TAGS = ["adaptive-smoothing", "adversarial-robustness", "robustbench", "image-classification", "mixing-network"]

HUB_DATASETS = {
    "demo": "ylecun/mnist",
    "mnist": "ylecun/mnist",
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "imagenet": "ILSVRC/imagenet-1k",
}
"""asmix's dataset names as Hub dataset repositories (the demo pair is trained on MNIST)."""


def card_metadata(card: MixerCard):
    """The card's YAML front matter as huggingface_hub's ``ModelCardData``: library, tags, dataset, g and h where
    they are Hub repositories (``base_model``), and the verdict's clean and AutoAttack-lite accuracy of the mixed
    classifier as model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    from asmix.models import hub_model_id

    dataset = HUB_DATASETS.get(card.dataset or "", card.dataset)
    base_models = [
        hub for hub in (hub_model_id(card.models[role]) for role in ("std", "rob") if role in card.models) if hub
    ]
    verdict, results = card.verdict, []
    if verdict and dataset:
        n, row = verdict["n_examples"], verdict["mixer"]
        attack = {"norm": verdict["norm"], "eps": verdict["eps"], "n_examples": n}
        for name, correct, args in (
            ("clean accuracy", row["clean_correct"], {"n_examples": n}),
            ("adaptive AutoAttack-lite accuracy (worst case)", row["attacked_correct"], attack),
        ):
            results.append(
                EvalResult(
                    task_type="image-classification",
                    dataset_type=dataset,
                    dataset_name=f"{card.dataset} (held-out examples)",
                    metric_type="accuracy",
                    metric_name=name,
                    metric_value=round(100 * correct / n, 2),
                    metric_args=args,
                )
            )
    return ModelCardData(
        library_name="asmix",
        tags=list(TAGS),
        datasets=[dataset] if dataset else None,
        metrics=["accuracy"],
        base_model=base_models or None,
        model_name="asmix mixing network" if results else None,
        eval_results=results or None,
    )


def mixer_card(card: MixerCard) -> str:
    """Markdown: base models and the sha256 of their weights, the evaluation head, the training recipe, the data
    fingerprint and the verdict, all read from a mixer's ``card`` (its mixer.json)."""
    models, weights, architecture = card.models, card.base_weights or {}, card.architecture
    training = card.training_settings
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
        f"{head_text(card.head)}; sigmoid scale {architecture.get('scale')}; taps g "
        f"{architecture.get('std_layers') or 'none (reads h alone)'}, h {architecture.get('rob_layers')}.",
    ]
    selection = card.selection
    if selection:
        target = selection.get("target_clean_acc")
        rule = (
            f"for clean accuracy >= {percent(target)}%"
            if target is not None
            else "by its gain over the tempered fixed alpha of equal clean accuracy"
        )
        lines += [
            "",
            f"Chosen {rule} on {selection['n_examples']} held-out examples by adaptive AutoAttack-lite "
            f"(clean {percent(selection['clean_acc'])}%).",
        ]
    lines += [
        "",
        "## Training",
        "",
        f"Setting {training.get('setting')}, {training.get('epochs')} epochs, batch {training.get('batch_size')}, "
        f"{card.n_train} training images, {card.n_val} held out; "
        f"{training.get('norm')} eps {training.get('eps_max')} "
        f"(radius eps x U{tuple(training.get('eps_range') or ())}), "
        f"pseudo-labels {training.get('pseudo_labels')}, seed {training.get('seed')}.",
        "",
        f"Training data sha256: `{card.data_fingerprint}`",
        "",
        "<details><summary>All training settings</summary>",
        "",
        "```json",
        json.dumps(card.training, indent=2),
        "```",
        "",
        "</details>",
    ]
    verdict = card.verdict
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
        plain = verdict.get("plain")
        for row in [verdict["mixer"], verdict["fixed"]] + ([plain] if plain and plain != verdict["fixed"] else []):
            lines.append(
                f"| {row['name']} | {row['clean_correct']}/{verdict['n_examples']} | "
                f"{row['attacked_correct']}/{verdict['n_examples']} | {alpha_text(row.get('alpha_clean'))} | "
                f"{alpha_text(row.get('alpha_attacked'))} |"
            )
    else:
        lines.append("Not measured (trained with --no-verdict).")
    provenance = card.provenance or {}
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


def model_card(card: MixerCard) -> str:
    """README.md: ``card_metadata`` as YAML front matter, then ``mixer_card``, checked by huggingface_hub's
    ``ModelCard`` (which refuses metadata the Hub would not read)."""
    from huggingface_hub import ModelCard

    return str(ModelCard(f"---\n{card_metadata(card).to_yaml()}\n---\n\n{mixer_card(card)}"))


def write_mixer_card(directory: str | Path) -> Path:
    """Render ``directory/mixer.json`` as ``directory/README.md`` (atomically)."""
    directory = Path(directory)
    return atomic_write_text(directory / CARD, model_card(MixerCard.read(directory)))
