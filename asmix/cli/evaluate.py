"""``asmix evaluate``: Table-2-style robustness of h_alpha (and g, h) under PGD, transfer and AutoAttack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from asmix.cli.app import command, examples
from asmix.cli.options import (
    ATTACK,
    MIX_PANEL,
    MODELS,
    OUTPUT,
    OUTPUT_OPTIONS,
    PAIR_OPTIONS,
    RUN_OPTIONS,
    THREAT_OPTIONS,
    SharedOptions,
    alpha_option,
    check_outputs,
    console,
    mixer_pair_check,
    own,
    run_on_pair,
    shared_options,
    stdout,
    write_report,
)

ROBUSTBENCH = "RobustBench leaderboard"
DEFAULT_ATTACKS = "clean,pgd,pgd-graybox,transfer-std,transfer-rob,aa,aa-adaptive"

Alpha = alpha_option(0.5)
Mixer = Annotated[
    Optional[Path],
    typer.Option("--mixer", rich_help_panel=MIX_PANEL, help="Mixing network folder (train-mixer): adaptive alpha."),
]
Attacks = Annotated[
    str,
    typer.Option(
        "--attack",
        "--attacks",
        rich_help_panel=ATTACK,
        metavar="ATTACK,...",
        help="Comma list of clean, pgd (PGD on the mix, white-box), pgd-graybox (PGD on the mix with the mixer's "
        "alpha detached), transfer-std and transfer-rob (PGD crafted on g or h), aa (standard AutoAttack), aa-adaptive "
        "(AutoAttack that also attacks the mixer's alpha).",
    ),
]
Bases = Annotated[bool, typer.Option("--bases/--no-bases", rich_help_panel=MODELS, help="Also evaluate g and h alone.")]
AlphaWeight = Annotated[
    float,
    typer.Option(
        "--alpha-weight",
        rich_help_panel=ATTACK,
        help="w of the adaptive attacks' loss (1 - w) * loss + w * BCE(mixer logit, 1).",
    ),
]
SquareQueries = Annotated[
    int, typer.Option("--square-queries", rich_help_panel=ATTACK, help="Square's query budget (standard: 5000).")
]
DetectorBudget = Annotated[
    str,
    typer.Option(
        "--detector-budget",
        rich_help_panel=ATTACK,
        metavar="lite|full|off",
        help="With --mixer, the detector profile: per kind of point (clean, uniform start, PGD, APGD-CE, APGD-T, "
        "alpha-first, Square) the mean alpha and the AUC of the mixer logit against clean inputs. Clean and PGD reuse "
        "the clean and pgd columns (same points, no second pass); its own adaptive attacks run on every example at "
        "lite (25 APGD steps, 3 targets, Square min(300, --square-queries)) or full (adaptive AutoAttack's) budget; "
        "off skips it (as does --robustbench). Resumable with --out.",
    ),
]
SaveAdv = Annotated[
    bool,
    typer.Option(
        "--save-adv/--no-save-adv", rich_help_panel=OUTPUT, help="Also save the adversarial examples in --out."
    ),
]
Out = Annotated[
    Optional[Path],
    typer.Option(
        "--out",
        rich_help_panel=OUTPUT,
        help="Folder for evaluate.json and the per-example results examples.npz; makes the run resumable. "
        "(A .npz or .pt file name still works for one release, with a deprecation note.)",
    ),
]
RobustBench = Annotated[
    Optional[Path],
    typer.Option(
        "--robustbench",
        rich_help_panel=ROBUSTBENCH,
        help=(
            "Run the leaderboard protocol (the full test set, clean and standard AutoAttack at the standard radius; "
            "with a mixer also aa-adaptive, RobustBench's external) and write RobustBench's model_info JSON and a "
            "claim summary (.md) into this folder; a rerun updates the numbers and keeps the fields you filled in."
        ),
    ),
]
ModelName = Annotated[
    str,
    typer.Option(
        "--model-name",
        rich_help_panel=ROBUSTBENCH,
        help=(
            "File name of the --robustbench outputs, in RobustBench's style: author, year, first word of the title "
            "(Bai2023Improving)."
        ),
    ),
]

Reported = Annotated[
    Optional[float],
    typer.Option(
        "--reported",
        rich_help_panel=ROBUSTBENCH,
        help="With --robustbench: the robust accuracy your paper reports, in percent (model_info's reported; "
        "null without it, and a rerun keeps what the file holds).",
    ),
]


@command(
    "evaluate",
    epilog=examples(
        "asmix evaluate --alpha 0.8 --attack clean,pgd,aa",
        "asmix evaluate --mixer runs/mixer --attack clean,aa,aa-adaptive --bases --out runs/eval",
        "asmix evaluate --std bit-r152 --rob Wang2023 --dataset cifar10 --mixer runs/mixer --robustbench runs/rb "
        "--model-name Me2026Mixed",
    ),
)
@shared_options(
    PAIR_OPTIONS,
    THREAT_OPTIONS,
    RUN_OPTIONS,
    "std_scale",
    "rob_scale",
    "rob_map",
    "calibration",
    "family",
    OUTPUT_OPTIONS,
    n_examples=100,
    batch_size=100,
    out=own(Out, None),
)
def evaluate_command(
    shared: SharedOptions,
    alpha: Alpha = None,
    mixer: Mixer = None,
    attack: Attacks = DEFAULT_ATTACKS,
    bases: Bases = False,
    alpha_weight: AlphaWeight = 0.5,
    square_queries: SquareQueries = 5000,
    save_adv: SaveAdv = False,
    detector_budget: DetectorBudget = "lite",
    robustbench: RobustBench = None,
    model_name: ModelName = "asmix_mixed",
    reported: Reported = None,
) -> None:
    """Robust accuracy of the mix (and of g and h) under PGD, transfer and AutoAttack (Table 2).

    Accuracy of the mixed classifier (and, with --bases, g and h) clean and under attack: PGD white-box and gray-box,
    PGD transferred from g or h, AutoAttack and adaptive AutoAttack; with --mixer, its detector profile."""
    from asmix.errors import AsmixError
    from asmix.experiments.evaluate import EXAMPLE_SUFFIXES, EvalConfig, check_out_path, evaluate, parse_attacks
    from asmix.report import write_json
    from asmix.report.evaluate import detector_table, evaluate_table, trail_table

    out, json_path, report = shared.out, shared.json_path, shared.report
    attacks = parse_attacks(attack)
    if alpha is not None and mixer is not None:
        raise AsmixError("give either --alpha (fixed) or --mixer (adaptive), not both")
    if shared.calibration is not None and mixer is not None:
        raise AsmixError("give either --calibration or --mixer, not both")
    choice = shared.mix_choice(alpha=alpha)
    if choice is not None:
        alpha = choice.alpha if mixer is None and choice.mixer is None else None
    default_n_examples = shared.default_n_examples
    if robustbench is not None:
        from asmix.data import standard_eps
        from asmix.report.robustbench import LEADERBOARD_EXAMPLES, check_model_name, check_reported, read_model_info

        check_model_name(model_name)
        if reported is not None:
            check_reported(reported)

        attacks = ("clean", "aa")  # the leaderboard's protocol: clean and standard AutoAttack
        detector_budget = "off"
        default_n_examples = LEADERBOARD_EXAMPLES.get(shared.dataset, 10**9)  # the full test set
        leaderboard_eps = standard_eps(shared.dataset, shared.norm)
        check_outputs(out_dir=robustbench)
        read_model_info(robustbench / f"{model_name}.json")  # a file the rerun cannot merge into fails now
    elif reported is not None:
        raise AsmixError("--reported goes with --robustbench (it fills model_info's reported)")
    out_folder = None
    if out is not None and out.suffix in EXAMPLE_SUFFIXES:  # the old form: --out FILE.npz
        console.print(
            f"note: --out {out} as a file is deprecated: give a folder (asmix writes examples.npz and "
            "evaluate.json in it)",
            highlight=False,
            soft_wrap=True,
        )
    elif out is not None and out.suffix:
        raise AsmixError(f"--out must be a folder (or, deprecated, a .npz or .pt file), got {str(out)!r}")
    elif out is not None:
        out_folder, out = out, out / "examples.npz"
    check_outputs(json_path=json_path, out_file=out if out_folder is None else None, out_dir=out_folder, report=report)
    if out is not None:
        check_out_path(out)
    source = shared.pair_source(default_n_examples=default_n_examples)
    mixer_net, card = shared.calibrated_mixer(choice)
    if mixer_net is not None:
        mixer = choice.mixer.folder
    elif mixer is not None:
        from asmix.mixer import load_mixer
        from asmix.models import canonical_spec

        mixer_net, card = load_mixer(mixer, std=shared.std, rob=shared.rob, canonical=canonical_spec)
    if robustbench is not None and mixer_net is not None:
        attacks += ("aa-adaptive",)  # its worst case is model_info's external
    architectures: dict[str, str] = {}

    def check_pair(pair) -> None:
        architectures.update(pair.architectures)
        if card is not None:
            mixer_pair_check(card, mixer_net)(pair)

    config = EvalConfig(
        attacks=attacks,
        bases=bases,
        alpha=0.5 if alpha is None else alpha,
        threat=shared.threat_model(source),
        mix=shared.mix_settings(choice, card),
        run=shared.run_settings(),
        alpha_weight=alpha_weight,
        square_queries=square_queries,
        save_adv=save_adv,
        detector_budget=detector_budget,
    )
    result = run_on_pair(
        shared,
        source,
        evaluate,
        config,
        check_pair=check_pair,
        extra_models={"mixer": str(mixer)} if mixer is not None else None,
        mixer=mixer_net,
        out=out,
    )
    if result is None:
        return
    stdout.print(evaluate_table(result))
    trail = trail_table(result)
    if trail is not None:
        stdout.print(trail)
    detector = detector_table(result.detector, config.detector_budget)
    if detector is not None:
        stdout.print(detector)
    written = []
    for path in (json_path, out_folder / "evaluate.json" if out_folder is not None else None):
        if path is not None:
            written.append(write_json(result, path))
            console.print(f"wrote {written[-1]}")
    if out:
        console.print(f"wrote {out}")
    if robustbench is not None:
        from asmix.report.robustbench import protocol_deviations, write_robustbench

        deviations = protocol_deviations(result, shared.dataset, leaderboard_eps)
        for path in write_robustbench(
            result,
            robustbench,
            dataset=shared.dataset,
            model_name=model_name,
            deviations=deviations,
            architectures=architectures,
            reported=reported,
        ):
            written.append(path)
            console.print(f"wrote {path}")
        for deviation in deviations:
            console.print(f"note: not the leaderboard protocol: {deviation}", highlight=False)
    write_report(report, written)
