"""``asmix sweep-alpha``: the fixed-alpha sweep (Figure 4) and trade-off curve (Figure 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    NExamplesOption,
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
    StepsOption,
    TrustCodeOption,
    calibrated_mixer,
    check_outputs,
    console,
    mix_choice,
    pair_source,
    print_notes,
    run_with_progress,
    start_device,
    stdout,
    write_report,
    write_results,
)


@app.command(
    "sweep-alpha",
    epilog=examples(
        "asmix sweep-alpha",
        "asmix sweep-alpha --alphas 0,0.5,0.6,0.7,1 --steps 40 --out runs/demo-sweep",
        "asmix sweep-alpha --std bit-r152 --rob Wang2023 --dataset cifar10 --n-examples 1000 --device cuda",
    ),
)
def sweep_alpha_command(
    ctx: typer.Context,
    config_file: ConfigOption = None,
    std: StdOption = "demo-std",
    rob: RobOption = "demo-rob",
    dataset: DatasetOption = "demo",
    data: DataOption = None,
    data_dir: DataDirOption = Path("./data"),
    n_examples: NExamplesOption = None,
    model_dir: ModelDirOption = None,
    std_weights: StdWeightsOption = None,
    rob_weights: RobWeightsOption = None,
    trust_code: TrustCodeOption = False,
    alphas: Annotated[str, typer.Option("--alphas", help="List 0,0.5,1 or range start:stop:step.")] = "0:1:0.05",
    attacks: Annotated[str, typer.Option("--attacks", help="Comma list of std, rob, mix.")] = "std,rob,mix",
    norm: NormOption = "linf",
    eps: EpsOption = None,
    steps: StepsOption = 20,
    step_size: StepSizeOption = None,
    batch_size: BatchSizeOption = 256,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    mix_space: Annotated[
        str, typer.Option("--mix-space", metavar="prob|logit", help="prob (eq. 3.4) or logit (ablation).")
    ] = "prob",
    std_scale: Annotated[float, typer.Option("--std-scale", help="Multiply g's logits before the softmax.")] = 1.0,
    rob_scale: Annotated[float, typer.Option("--rob-scale", help="Multiply h's logits before the softmax.")] = 1.0,
    rob_map: RobMapOption = None,
    calibration: CalibrationOption = None,
    family: FamilyOption = "nuts",
    out: OutOption = None,
    report: ReportOption = None,
    json_path: JsonOption = None,
) -> None:
    """Accuracy vs fixed alpha, clean and under PGD crafted on g (STD), h (ROB) and the mix (MIX)."""
    from asmix.distributed import is_main_process
    from asmix.experiments.inputs import load_pair
    from asmix.experiments.sweep import SweepConfig, parse_alphas, sweep_alpha
    from asmix.report.sweep import sweep_table, write_sweep_outputs

    check_outputs(json_path=json_path, out_dir=out, report=report)
    source = pair_source(ctx)
    choice = mix_choice(rob_map, calibration, family, std=std, rob=rob)
    mixer_net, mixer_config = calibrated_mixer(choice, calibration, std=std, rob=rob)
    alpha_grid = parse_alphas(alphas)
    if calibration is not None:
        chosen = {choice.alpha} if mixer_net is None else set(choice.mixer.alpha_range)
        alpha_grid = tuple(sorted(set(alpha_grid) | chosen))
    config = SweepConfig(
        alphas=alpha_grid,
        attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()),
        norm=source.norm,
        eps=source.default_eps if eps is None else eps,
        steps=steps,
        step_size=step_size,
        batch_size=batch_size,
        seed=seed,
        mix_space=mix_space,
        std_scale=std_scale,
        rob_scale=rob_scale,
        std_temperature=choice.std_temperature if choice else 1.0,
        rob_map=choice.rob_map if choice else None,
    )
    device_ = start_device(device)
    pair = load_pair(source)
    print_notes(pair.notes)
    if mixer_net is not None:
        from asmix.mixer import check_base_weights

        check_base_weights(mixer_config, pair.std, pair.rob, choice.mixer.folder)
        low, high = choice.mixer.alpha_range
        console.print(
            f"note: sweep-alpha sweeps fixed alphas: the grid gains the mixer's range ends {low:g} and {high:g}, "
            "between which its alpha stays; asmix evaluate --calibration FILE --family mixer attacks the mixer",
            highlight=False,
            soft_wrap=True,
        )
    result = run_with_progress(
        lambda progress: sweep_alpha(
            pair.std, pair.rob, pair.x, pair.y, config, device=device_, progress=progress, models=pair.names, out=out
        )
    )
    if not is_main_process():
        return
    stdout.print(sweep_table(result))
    write_report(report, write_results(result, json_path, out, write_sweep_outputs))
