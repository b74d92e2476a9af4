"""``asmix calibrate``: the fixed alpha, the MixedNUTS map and (``--mixer``) a trained mixer's head for a target
clean accuracy, from cached logits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from asmix.cli.app import command, examples
from asmix.cli.options import (
    ATTACK,
    DATA,
    HEAD,
    OUTPUT,
    OUTPUT_OPTIONS,
    PAIR_OPTIONS,
    RUN_OPTIONS,
    SharedOptions,
    console,
    n_examples_option,
    number_parser,
    own,
    print_notes,
    progress_callback,
    shared_options,
    stdout,
)

SEARCH = "Target and MixedNUTS search"
CalibrationOut = Annotated[
    Path,
    typer.Option("--out", rich_help_panel=OUTPUT, help="Folder for calibration.json and calibration_tradeoff.png."),
]


def _range(text: str, option: str) -> tuple[float, float]:
    from asmix.checks import parse_number
    from asmix.errors import AsmixError

    parts = text.split(":")
    if len(parts) != 2:
        raise AsmixError(f"{option} takes LOW:HIGH, got {text!r}")
    return parse_number(parts[0], option), parse_number(parts[1], option)


@command(
    "calibrate",
    epilog=examples(
        "asmix calibrate --target-clean-acc 99",
        "asmix calibrate --target-clean-acc 98.5 --mixer runs/mixer --verify 100 --out runs/calibration",
        "asmix calibrate --std bit-r152 --rob Wang2023 --dataset cifar10 --n-examples 1000 --target-clean-acc 95",
    ),
)
@shared_options(
    PAIR_OPTIONS,
    "norm",
    "eps",
    RUN_OPTIONS,
    OUTPUT_OPTIONS,
    n_examples=own(
        n_examples_option(
            500,
            "Calibrate on N examples, N > 0 (default 500): the split's last N with --from-end (the default), its "
            "first N with --from-start.",
        ),
        None,
    ),
    default_n_examples=500,
    batch_size=250,
    out=own(CalibrationOut, Path("./asmix-calibration")),
)
def calibrate_command(
    shared: SharedOptions,
    target_clean_acc: Annotated[
        Optional[float],
        typer.Option(
            "--target-clean-acc",
            rich_help_panel=SEARCH,
            parser=number_parser("--target-clean-acc"),
            metavar="PCT",
            help="Clean accuracy to keep, in percent (99) or as a fraction (0.99). Default: chosen by gain, as "
            "train-mixer's head (with --mixer: the mixer head that gains most over the tempered fixed alpha of equal "
            "clean accuracy; without: the level between h's and g's clean accuracy where MixedNUTS gains most); the "
            "run prints which and why.",
        ),
    ] = None,
    from_end: Annotated[
        bool,
        typer.Option(
            "--from-end/--from-start",
            rich_help_panel=DATA,
            help="Read the last --n-examples of the split (held-out, as train-mixer's) and verify on the --verify "
            "examples before them, so that evaluate, which reads the first examples, reports on images no choice "
            "saw; --from-start reads the first ones and verifies on those after them.",
        ),
    ] = True,
    grid_size: Annotated[
        int,
        typer.Option("--grid-size", rich_help_panel=SEARCH, help="Values per axis of the MixedNUTS grid (s, p, c)."),
    ] = 8,
    scale_range: Annotated[
        str, typer.Option("--scale-range", rich_help_panel=SEARCH, help="s range, log-spaced.")
    ] = "0.05:5",
    power_range: Annotated[
        str, typer.Option("--power-range", rich_help_panel=SEARCH, help="p range (p >= 1).")
    ] = "1:4",
    clamp_bias_range: Annotated[
        str, typer.Option("--clamp-bias-range", rich_help_panel=SEARCH, help="c range.")
    ] = "-1.1:0",
    refine: Annotated[
        bool,
        typer.Option(
            "--refine/--no-refine",
            rich_help_panel=SEARCH,
            help="Refine the best grid point by Nelder-Mead on the same objective.",
        ),
    ] = True,
    nuts_std_hardmax: Annotated[
        bool,
        typer.Option(
            "--nuts-std-hardmax/--nuts-std-softmax",
            rich_help_panel=SEARCH,
            help="g's hard-max in the MixedNUTS mix (as the authors' code).",
        ),
    ] = True,
    mixer: Annotated[
        Optional[Path],
        typer.Option(
            "--mixer",
            rich_help_panel=HEAD,
            help="Also choose this trained mixer's range and bias (train-mixer folder or hf:ORG/NAME).",
        ),
    ] = None,
    range_min_alpha: Annotated[
        float, typer.Option("--range-min-alpha", rich_help_panel=HEAD, help="Smallest alpha_min considered.")
    ] = 0.5,
    range_max_width: Annotated[
        float,
        typer.Option("--range-max-width", rich_help_panel=HEAD, help="Widest alpha_max - alpha_min considered."),
    ] = 0.2,
    lite_square_queries: Annotated[
        int,
        typer.Option(
            "--lite-square-queries",
            rich_help_panel=HEAD,
            help="Square's queries in the AutoAttack-lite pool that scores the heads (standard AutoAttack: 5000).",
        ),
    ] = 300,
    verify: Annotated[
        int,
        typer.Option(
            "--verify",
            rich_help_panel=ATTACK,
            help="Run AutoAttack (adaptive for the mixer) on this many examples after the calibration ones (0: skip).",
        ),
    ] = 0,
    square_queries: Annotated[
        int,
        typer.Option("--square-queries", rich_help_panel=ATTACK, help="Square's queries in --verify (standard: 5000)."),
    ] = 5000,
    aa_steps: Annotated[
        int,
        typer.Option(
            "--aa-steps",
            rich_help_panel=ATTACK,
            help="Iterations of h's min-margin APGD-CE/APGD-T (standard: 100).",
        ),
    ] = 20,
    target_classes: Annotated[
        int, typer.Option("--target-classes", rich_help_panel=ATTACK, help="APGD-T target classes (standard: 9).")
    ] = 2,
) -> None:
    """Choose the mix for a target clean accuracy: fixed alpha, MixedNUTS map and a trained mixer's head.

    Chooses the fixed alpha (linear), the fixed alpha with logit scales (tempered), MixedNUTS's (s, p, c, alpha)
    (nuts) and, with --mixer, that mixer's range and bias (mixer) for --target-clean-acc from one pass of cached
    logits (the last --n-examples of the split); --verify N measures each choice with AutoAttack on the N before
    them."""
    from asmix.experiments.calibrate import CalibrateConfig, MixerInput, calibrate
    from asmix.experiments.inputs import load_pair
    from asmix.report.calibrate import (
        calibrate_table,
        target_levels_table,
        verify_table,
        write_calibration_outputs,
    )
    from asmix.runtime import resolve_device

    shared.check_outputs()
    target = None if target_clean_acc is None else target_clean_acc / 100 if target_clean_acc > 1 else target_clean_acc
    n_calibration = shared.default_n_examples if shared.n_examples is None else shared.n_examples
    source = shared.pair_source(n_examples=n_calibration + verify, from_end=from_end)
    config = CalibrateConfig(
        target_clean_acc=target,
        threat=shared.threat_model(source, steps=aa_steps),
        target_classes=target_classes,
        grid_size=grid_size,
        scale_range=_range(scale_range, "--scale-range"),
        power_range=_range(power_range, "--power-range"),
        clamp_bias_range=_range(clamp_bias_range, "--clamp-bias-range"),
        refine=refine,
        nuts_std_hardmax=nuts_std_hardmax,
        range_min_alpha=range_min_alpha,
        range_max_width=range_max_width,
        lite_square_queries=lite_square_queries,
        verify=verify,
        from_end=from_end,
        square_queries=square_queries,
        run=shared.run_settings(),
    )
    mixer_input = None
    if mixer is not None:
        from asmix.mixer import load_mixer
        from asmix.models import canonical_spec

        mixer_net, card = load_mixer(mixer, std=shared.std, rob=shared.rob, canonical=canonical_spec)
    device = resolve_device(shared.device)
    pair = load_pair(source)
    print_notes(pair.notes)
    if mixer is not None:
        card.check_pair(mixer_net, pair.std, pair.rob, pair.x)
        mixer_input = MixerInput.from_card(mixer_net, card, mixer)
    if from_end:  # the calibration examples are the split's last ones, the verified ones just before them
        calibration, verification = slice(verify, None), slice(0, verify)
    else:
        calibration, verification = slice(0, n_calibration), slice(n_calibration, None)
    x, y = pair.x[calibration], pair.y[calibration]
    x_verify, y_verify = pair.x[verification], pair.y[verification]
    with progress_callback() as progress:
        result = calibrate(
            pair.std,
            pair.rob,
            x,
            y,
            config,
            x_verify=x_verify,
            y_verify=y_verify,
            mixer=mixer_input,
            device=device,
            progress=progress,
            models=pair.names,
            parts_dir=shared.out / "verify.parts" if verify and shared.out is not None else None,
        )
    if result.target_choice.rule != "given":
        console.print(f"target: {result.target_choice.why}")
        if result.target_choice.levels:
            stdout.print(target_levels_table(result.target_choice))
    stdout.print(calibrate_table(result))
    table = verify_table(result)
    if table is not None:
        stdout.print(table)
    if not all(family.meets_target for family in result.families.values()):
        console.print("note: a family cannot reach the target on these examples; its most accurate mix is shown")
    shared.write_outputs(result, write_calibration_outputs)
