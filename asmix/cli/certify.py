"""``asmix certify``: certified accuracy vs l_2 radius of h_alpha with a randomized-smoothing h (Figs. 6, 7)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from asmix.checks import canonical_norm
from asmix.cli.app import command, examples
from asmix.cli.options import (
    MIX_PANEL,
    MODELS,
    OUTPUT,
    OUTPUT_OPTIONS,
    PAIR_OPTIONS,
    RUN_OPTIONS,
    THREAT,
    SharedOptions,
    alpha_option,
    mixer_pair_check,
    number_parser,
    own,
    run_on_pair,
    shared_options,
    stdout,
)

SMOOTHING = "Randomized smoothing"
SmoothedRob = Annotated[
    str,
    typer.Option(
        "--rob",
        rich_help_panel=MODELS,
        help="Base model of the randomized-smoothing h (or h itself with --lipschitz-const).",
    ),
]
CertifyNorm = Annotated[
    str,
    typer.Option(
        "--norm",
        rich_help_panel=THREAT,
        parser=canonical_norm,
        metavar="linf|l2",
        help="Threat model used to pick rb: models (certificates are l_2).",
    ),
]
CertifyFamily = Annotated[
    str,
    typer.Option(
        "--family",
        rich_help_panel=MIX_PANEL,
        metavar="linear|mixer",
        help="Which family of --calibration: linear (plain fixed alpha) or mixer (its trained mixer's head, certified "
        "at its alpha_min); the tempered and nuts families change h's probabilities, which the theorems do not cover.",
    ),
]


@command(
    "certify",
    epilog=examples(
        "asmix certify --n-examples 200 --n-samples 1000",
        "asmix certify --match-clean-acc --baseline-sigma 0.5 --out runs/certify",
        "asmix certify --skip 20 --confidence 0.999 --out runs/certify",
    ),
)
@shared_options(
    PAIR_OPTIONS,
    "norm",
    RUN_OPTIONS,
    "calibration",
    "family",
    OUTPUT_OPTIONS,
    rob=own(SmoothedRob, "demo-rob"),
    family=own(CertifyFamily, "linear"),
    n_examples=100,
    norm=own(CertifyNorm, "l2"),
    batch_size=256,
)
def certify_command(
    shared: SharedOptions,
    sigma: Annotated[
        float,
        typer.Option(
            "--sigma",
            rich_help_panel=SMOOTHING,
            parser=number_parser("--sigma"),
            metavar="SIGMA",
            help="Gaussian smoothing noise of h, a number or a fraction.",
        ),
    ] = 0.25,
    n_samples: Annotated[
        int,
        typer.Option(
            "--n-samples", rich_help_panel=SMOOTHING, help="Monte Carlo noise samples per example (paper: 10000)."
        ),
    ] = 500,
    alpha: alpha_option(0.8, "; ignored with --match-clean-acc") = None,
    match_clean_acc: Annotated[
        bool,
        typer.Option(
            "--match-clean-acc/--no-match-clean-acc",
            rich_help_panel=MIX_PANEL,
            help="Pick alpha so h_alpha's clean accuracy matches an RS baseline with --baseline-sigma (Fig. 6).",
        ),
    ] = False,
    baseline_sigma: Annotated[
        Optional[float],
        typer.Option(
            "--baseline-sigma",
            rich_help_panel=SMOOTHING,
            parser=number_parser("--baseline-sigma"),
            metavar="SIGMA",
            help="Noise of the baseline RS model (default sigma/2).",
        ),
    ] = None,
    std_hardmax: Annotated[
        bool,
        typer.Option(
            "--std-hardmax/--no-std-hardmax",
            rich_help_panel=MIX_PANEL,
            help="Use g's one-hot prediction instead of its softmax (App. A.2).",
        ),
    ] = False,
    confidence: Annotated[
        Optional[float],
        typer.Option(
            "--confidence",
            rich_help_panel=SMOOTHING,
            help="Clopper-Pearson bounds at this level, e.g. 0.999: certificates hold with this probability.",
        ),
    ] = None,
    lipschitz_const: Annotated[
        Optional[float],
        typer.Option(
            "--lipschitz-const",
            rich_help_panel=SMOOTHING,
            help="Thm 3.5 for h itself with this Lipschitz constant of softmax(h) (no smoothing).",
        ),
    ] = None,
    smoothing_output: Annotated[
        str,
        typer.Option(
            "--smoothing-output",
            rich_help_panel=SMOOTHING,
            help="probs (smooth softmax, App. A.1) or votes (smooth the argmax).",
        ),
    ] = "probs",
    radii: Annotated[
        str, typer.Option("--radii", rich_help_panel=OUTPUT, help="Radii for the table, e.g. 0,0.25,0.5 or 0,36/255.")
    ] = "0,0.1,0.25,0.5,0.75,1",
    skip: Annotated[
        int,
        typer.Option(
            "--skip", rich_help_panel=SMOOTHING, help="Certify every K-th of the examples (Cohen et al.'s --skip)."
        ),
    ] = 1,
) -> None:
    """Certified accuracy vs l_2 radius of the mix with a randomized-smoothing h (Thm 3.5, A.2; Figures 6, 7).

    Certified accuracy of h_alpha and of h alone by Thm 3.5 and Thm A.2; with --lipschitz-const, of h itself with
    that Lipschitz constant instead of smoothing."""
    from asmix.errors import AsmixError
    from asmix.experiments.certify import CertifyConfig, certify, parse_radii
    from asmix.report.certify import certify_table, write_certify_outputs

    shared.check_outputs()
    source = shared.pair_source()
    head = card = mixer_net = None
    if shared.calibration is not None:  # Thm 3.5 and A.2 certify eq. 3.4 with h's own probabilities: no map
        if alpha is not None or match_clean_acc:
            raise AsmixError("give either --calibration or --alpha/--match-clean-acc, not both")
        if shared.family not in ("linear", "mixer"):
            raise AsmixError(f"certify reads the linear or mixer family of --calibration, not {shared.family!r}")
        choice = shared.mix_choice()
        # a mixer is certified at its alpha_min: radii grow with alpha
        mixer_net, card = shared.calibrated_mixer(choice)
        alpha, std_hardmax, head = choice.alpha, std_hardmax or choice.std_temperature == 0, choice.mixer
        if choice.scales[1] != 1.0:  # g's scale does not matter: the theorems hold whatever g outputs
            raise AsmixError(
                f"the chosen head scales h's logits by {choice.scales[1]:g}; Thm 3.5 and A.2 certify eq. 3.4 with "
                "h's own probabilities: certify a head with h's scale 1"
            )
    config = CertifyConfig(
        sigma=sigma,
        n_samples=n_samples,
        alpha=0.8 if alpha is None else alpha,
        match_clean_acc=match_clean_acc,
        baseline_sigma=baseline_sigma,
        std_hardmax=std_hardmax,
        confidence=confidence,
        lipschitz_const=lipschitz_const,
        smoothing_output=smoothing_output,
        radii=parse_radii(radii),
        run=shared.run_settings(),
        skip=skip,
    )
    check_pair = None
    if head is not None:
        check_pair = mixer_pair_check(
            card,
            mixer_net,
            f"note: the mixer's alpha stays in [{head.alpha_range[0]:g}, {head.alpha_range[1]:g}]: "
            "Thm 3.5 and A.2 at alpha_min hold for every larger alpha, so they hold for the mixer's alpha too",
        )

    result = run_on_pair(shared, source, certify, config, check_pair=check_pair)
    if result is None:
        return
    stdout.print(certify_table(result))
    shared.write_outputs(result, write_certify_outputs)
