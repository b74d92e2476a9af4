"""``asmix margins``: Table 1's confidence margins, Lemma 3.2's count and eq. C.1 Lipschitz estimates."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from asmix.cli.app import command, examples
from asmix.cli.options import (
    ATTACK,
    MODELS,
    OUTPUT_OPTIONS,
    PAIR_OPTIONS,
    RUN_OPTIONS,
    THREAT_OPTIONS,
    SharedOptions,
    alpha_option,
    mixer_pair_check,
    own,
    run_on_pair,
    shared_options,
    stdout,
)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@command(
    "margins",
    epilog=examples(
        "asmix margins",
        "asmix margins --n-examples 1000 --lipschitz --out runs/margins",
        "asmix margins --rob Wang2023 --dataset cifar10 --alpha 0.8",
    ),
)
@shared_options(
    PAIR_OPTIONS,
    THREAT_OPTIONS,
    RUN_OPTIONS,
    "mix_space",
    "rob_map",
    "calibration",
    "family",
    OUTPUT_OPTIONS,
    n_examples=100,
    steps=own(
        Annotated[
            int,
            typer.Option("--steps", rich_help_panel="Threat model", help="PGD steps (also per class for --lipschitz)."),
        ],
        20,
    ),
)
def margins_command(
    shared: SharedOptions,
    attacks: Annotated[
        str,
        typer.Option(
            "--attacks",
            rich_help_panel=ATTACK,
            help="Comma list of pgd, aa (min-margin AutoAttack); clean always runs.",
        ),
    ] = "pgd,aa",
    classifiers: Annotated[
        str,
        typer.Option(
            "--classifiers",
            rich_help_panel=MODELS,
            help="Comma list of std, rob, mixed (rob is required; mix still means mixed).",
        ),
    ] = "std,rob,mixed",
    aa_steps: Annotated[
        int, typer.Option("--aa-steps", rich_help_panel=ATTACK, help="APGD iterations (standard AutoAttack: 100).")
    ] = 20,
    target_classes: Annotated[
        int,
        typer.Option(
            "--target-classes",
            rich_help_panel=ATTACK,
            help="APGD-T target classes (standard AutoAttack: 9; 0 skips APGD-T).",
        ),
    ] = 2,
    alpha: alpha_option(0.6, " and of the Lemma 3.2 count") = None,
    lipschitz: Annotated[
        bool,
        typer.Option(
            "--lipschitz/--no-lipschitz",
            rich_help_panel=ATTACK,
            help="Estimate softmax(h)'s local Lipschitz constant (eq. C.1) by gradient ascent per class.",
        ),
    ] = False,
    lipschitz_classes: Annotated[
        Optional[int],
        typer.Option(
            "--lipschitz-classes",
            rich_help_panel=ATTACK,
            help="Only the K most likely other classes (many classes).",
        ),
    ] = None,
) -> None:
    """Confidence margins of g, h and the mix on clean, PGD and AutoAttack inputs (Table 1, Lemma 3.2).

    Accuracy and confidence gaps of g, h and h_alpha on clean, PGD and min-margin AutoAttack inputs, the count of
    Lemma 3.2 and, with --lipschitz, eq. C.1's estimate."""
    from asmix.experiments.margins import MarginsConfig, margins
    from asmix.report.margins import lemma32_table, lipschitz_table, margins_table, write_margins_outputs

    shared.check_outputs()
    source = shared.pair_source()
    choice = shared.mix_choice(alpha=alpha)
    mixer_net, card = shared.calibrated_mixer(choice)
    alpha = choice.alpha if choice is not None else (0.6 if alpha is None else alpha)
    config = MarginsConfig(
        attacks=_split(attacks),
        classifiers=tuple("mixed" if name == "mix" else name for name in _split(classifiers)),
        threat=shared.threat_model(source),
        aa_steps=aa_steps,
        target_classes=target_classes,
        alpha=alpha,
        lipschitz=lipschitz,
        lipschitz_classes=lipschitz_classes,
        mix=shared.mix_settings(choice, card),
        run=shared.run_settings(),
    )
    check_pair, extra = None, {}
    if mixer_net is not None:
        check_pair = mixer_pair_check(card, mixer_net)
        extra = {"mixer": mixer_net, "extra_models": {"mixer": choice.mixer.folder}}
    result = run_on_pair(shared, source, margins, config, check_pair=check_pair, **extra)
    if result is None:
        return
    stdout.print(margins_table(result))
    stdout.print(lemma32_table(result))
    table = lipschitz_table(result)
    if table is not None:
        stdout.print(table)
    shared.write_outputs(result, write_margins_outputs)
