"""``asmix margins``: Table 1's confidence margins, Lemma 3.2's count and eq. C.1 Lipschitz estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from asmix.cli.app import app, examples
from asmix.cli.config_file import ConfigOption
from asmix.cli.options import (
    BatchSizeOption,
    CalibrationOption,
    DataDirOption,
    DataOption,
    DatasetOption,
    DeviceOption,
    EpsOption,
    FamilyOption,
    JsonOption,
    ModelDirOption,
    NormOption,
    OutOption,
    ReportOption,
    RobMapOption,
    RobOption,
    RobWeightsOption,
    SeedOption,
    StdOption,
    StdWeightsOption,
    StepSizeOption,
    TrustCodeOption,
    calibrated_mixer,
    check_outputs,
    mix_choice,
    n_examples_option,
    pair_source,
    print_notes,
    run_with_progress,
    start_device,
    stdout,
    write_report,
    write_results,
)

DEFAULT_N_EXAMPLES = 100
NExamples = n_examples_option(DEFAULT_N_EXAMPLES)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@app.command(
    "margins",
    epilog=examples(
        "asmix margins",
        "asmix margins --n-examples 1000 --lipschitz --out runs/margins",
        "asmix margins --rob Wang2023 --dataset cifar10 --alpha 0.8",
    ),
)
def margins_command(
    ctx: typer.Context,
    config_file: ConfigOption = None,
    std: StdOption = "demo-std",
    rob: RobOption = "demo-rob",
    dataset: DatasetOption = "demo",
    data: DataOption = None,
    data_dir: DataDirOption = Path("./data"),
    n_examples: NExamples = None,
    model_dir: ModelDirOption = None,
    std_weights: StdWeightsOption = None,
    rob_weights: RobWeightsOption = None,
    trust_code: TrustCodeOption = False,
    attacks: Annotated[
        str, typer.Option("--attacks", help="Comma list of pgd, autoattack (clean always runs).")
    ] = "pgd,autoattack",
    classifiers: Annotated[
        str, typer.Option("--classifiers", help="Comma list of std, rob, mix (rob is required).")
    ] = "std,rob,mix",
    norm: NormOption = "linf",
    eps: EpsOption = None,
    steps: Annotated[int, typer.Option("--steps", help="PGD steps (also per class for --lipschitz).")] = 20,
    step_size: StepSizeOption = None,
    aa_steps: Annotated[int, typer.Option("--aa-steps", help="APGD iterations (standard AutoAttack: 100).")] = 20,
    target_classes: Annotated[
        int, typer.Option("--target-classes", help="APGD-T target classes (standard AutoAttack: 9; 0 skips APGD-T).")
    ] = 2,
    alpha: Annotated[
        Optional[float],
        typer.Option("--alpha", help="Mixing weight of h_alpha and of the Lemma 3.2 count (default 0.6)."),
    ] = None,
    lipschitz: Annotated[
        bool,
        typer.Option("--lipschitz/--no-lipschitz", help="Estimate softmax(h)'s local Lipschitz constant (eq. C.1)."),
    ] = False,
    lipschitz_classes: Annotated[
        Optional[int], typer.Option("--lipschitz-classes", help="Only the K most likely other classes (many classes).")
    ] = None,
    batch_size: BatchSizeOption = 256,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    mix_space: Annotated[
        str, typer.Option("--mix-space", metavar="prob|logit", help="prob (eq. 3.4) or logit (ablation).")
    ] = "prob",
    rob_map: RobMapOption = None,
    calibration: CalibrationOption = None,
    family: FamilyOption = "nuts",
    out: OutOption = None,
    report: ReportOption = None,
    json_path: JsonOption = None,
) -> None:
    """Accuracy and confidence gaps of g, h and h_alpha on clean, PGD and min-margin AutoAttack inputs (Table 1)."""
    from asmix.distributed import is_main_process
    from asmix.experiments.inputs import load_pair
    from asmix.experiments.margins import MarginsConfig, margins
    from asmix.report.margins import lemma32_table, lipschitz_table, margins_table, write_margins_outputs

    check_outputs(json_path=json_path, out_dir=out, report=report)
    source = pair_source(ctx, default_n_examples=DEFAULT_N_EXAMPLES)
    choice = mix_choice(rob_map, calibration, family, std=std, rob=rob, alpha=alpha)
    mixer_net, mixer_config = calibrated_mixer(choice, calibration, std=std, rob=rob)
    alpha = choice.alpha if choice is not None else (0.6 if alpha is None else alpha)
    scales = {}
    if mixer_net is not None:
        from asmix.experiments.calibrate import mixer_scales

        scales = dict(zip(("std_scale", "rob_scale"), mixer_scales(mixer_config)))
    config = MarginsConfig(
        attacks=_split(attacks),
        classifiers=_split(classifiers),
        norm=source.norm,
        eps=source.default_eps if eps is None else eps,
        steps=steps,
        step_size=step_size,
        aa_steps=aa_steps,
        target_classes=target_classes,
        alpha=alpha,
        lipschitz=lipschitz,
        lipschitz_classes=lipschitz_classes,
        batch_size=batch_size,
        seed=seed,
        mix_space=mix_space,
        std_temperature=choice.std_temperature if choice else 1.0,
        rob_map=choice.rob_map if choice else None,
        **scales,
    )
    device_ = start_device(device)
    pair = load_pair(source)
    print_notes(pair.notes)
    names = pair.names
    if mixer_net is not None:
        from asmix.mixer import check_base_weights

        check_base_weights(mixer_config, pair.std, pair.rob, choice.mixer.folder)
        names = names | {"mixer": choice.mixer.folder}
    result = run_with_progress(
        lambda progress: margins(
            pair.std,
            pair.rob,
            pair.x,
            pair.y,
            config,
            device=device_,
            progress=progress,
            models=names,
            out=out,
            mixer=mixer_net,
        )
    )
    if not is_main_process():
        return
    stdout.print(margins_table(result))
    stdout.print(lemma32_table(result))
    table = lipschitz_table(result)
    if table is not None:
        stdout.print(table)
    write_report(report, write_results(result, json_path, out, write_margins_outputs))
