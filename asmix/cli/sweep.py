"""``asmix sweep-alpha``: the fixed-alpha sweep (Figure 4) and trade-off curve (Figure 5)."""

from __future__ import annotations

from typing import Annotated

import typer

from asmix.cli.app import command, examples
from asmix.cli.options import (
    ATTACK,
    MIX_OPTIONS,
    MIX_PANEL,
    OUTPUT_OPTIONS,
    PAIR_OPTIONS,
    RUN_OPTIONS,
    THREAT_OPTIONS,
    SharedOptions,
    mixer_pair_check,
    run_on_pair,
    shared_options,
    stdout,
)


@command(
    "sweep-alpha",
    epilog=examples(
        "asmix sweep-alpha",
        "asmix sweep-alpha --alphas 0,0.5,0.6,0.7,1 --steps 40 --out runs/demo-sweep",
        "asmix sweep-alpha --std bit-r152 --rob Wang2023 --dataset cifar10 --n-examples 1000 --device cuda",
    ),
)
@shared_options(PAIR_OPTIONS, THREAT_OPTIONS, RUN_OPTIONS, MIX_OPTIONS, OUTPUT_OPTIONS, batch_size=256)
def sweep_alpha_command(
    shared: SharedOptions,
    alphas: Annotated[
        str, typer.Option("--alphas", rich_help_panel=MIX_PANEL, help="List 0,0.5,1 or range start:stop:step.")
    ] = "0:1:0.05",
    attacks: Annotated[
        str,
        typer.Option(
            "--attacks",
            rich_help_panel=ATTACK,
            help="Comma list, named as in evaluate: transfer-std (PGD crafted on g, transferred to the mix), "
            "transfer-rob (crafted on h), pgd (crafted on the mix itself at each alpha).",
        ),
    ] = "transfer-std,transfer-rob,pgd",
) -> None:
    """Accuracy of the fixed-alpha mix over a grid of alpha, clean and under PGD (Figures 4, 5).

    --attacks: PGD crafted on g (transfer-std) or on h (transfer-rob) and transferred to the mix, or crafted on the
    mix at each alpha (pgd); the table's STD, ROB and MIX columns."""
    from asmix.experiments.sweep import SweepConfig, parse_alphas, sweep_alpha
    from asmix.report.sweep import sweep_table, write_sweep_outputs

    shared.check_outputs()
    source = shared.pair_source()
    choice = shared.mix_choice()
    mixer_net, card = shared.calibrated_mixer(choice)
    alpha_grid = parse_alphas(alphas)
    if shared.calibration is not None:
        chosen = {choice.alpha} if mixer_net is None else set(choice.mixer.alpha_range)
        alpha_grid = tuple(sorted(set(alpha_grid) | chosen))
    config = SweepConfig(
        alphas=alpha_grid,
        attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()),
        threat=shared.threat_model(source),
        mix=shared.mix_settings(choice),
        run=shared.run_settings(),
    )
    check_pair = None
    if mixer_net is not None:
        low, high = choice.mixer.alpha_range
        check_pair = mixer_pair_check(
            card,
            mixer_net,
            f"note: sweep-alpha sweeps fixed alphas: the grid gains the mixer's range ends {low:g} and {high:g}, "
            "between which its alpha stays; asmix evaluate --calibration FILE --family mixer attacks the mixer",
        )

    result = run_on_pair(shared, source, sweep_alpha, config, check_pair=check_pair)
    if result is None:
        return
    stdout.print(sweep_table(result))
    shared.write_outputs(result, write_sweep_outputs)
