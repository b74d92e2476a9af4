"""``asmix sweep-alpha``: the fixed-alpha sweep (Figure 4) and trade-off curve (Figure 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from asmix.cli.app import app
from asmix.cli.options import (BatchSizeOption, CalibrationOption, FamilyOption, RobMapOption, mix_choice,
                               DataDirOption, DataOption, DatasetOption, DeviceOption, EpsOption,
                               JsonOption, ModelDirOption, NExamplesOption, NormOption, OutOption, RobOption,
                               RobWeightsOption, SeedOption, StdOption, StdWeightsOption, StepsOption,
                               StepSizeOption, TrustCodeOption, check_outputs, pair_source, progress_callback, stdout,
                               write_results)


@app.command("sweep-alpha")
def sweep_alpha_command(
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
    mix_space: Annotated[str, typer.Option("--mix-space", help="prob (eq. 3.4) or logit (ablation).")] = "prob",
    std_scale: Annotated[float, typer.Option("--std-scale", help="Multiply g's logits before the softmax.")] = 1.0,
    rob_scale: Annotated[float, typer.Option("--rob-scale", help="Multiply h's logits before the softmax.")] = 1.0,
    rob_map: RobMapOption = None,
    calibration: CalibrationOption = None,
    family: FamilyOption = "nuts",
    out: OutOption = None,
    json_path: JsonOption = None,
) -> None:
    """Accuracy vs fixed alpha, clean and under PGD crafted on g (STD), h (ROB) and the mix (MIX)."""
    from asmix.experiments.inputs import load_pair
    from asmix.experiments.sweep import SweepConfig, parse_alphas, sweep_alpha
    from asmix.report.sweep import sweep_table, write_sweep_outputs
    from asmix.runtime import resolve_device

    check_outputs(json_path=json_path, out_dir=out)
    source = pair_source(std, rob, dataset, data, data_dir, n_examples, model_dir, std_weights, rob_weights, norm,
                         trust_code=trust_code)
    choice = mix_choice(rob_map, calibration, family, std=std, rob=rob)
    alpha_grid = parse_alphas(alphas)
    if calibration is not None:
        alpha_grid = tuple(sorted(set(alpha_grid) | {choice.alpha}))
    config = SweepConfig(alphas=alpha_grid, attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()),
                         norm=source.norm, eps=source.default_eps if eps is None else eps, steps=steps,
                         step_size=step_size, batch_size=batch_size, seed=seed, mix_space=mix_space,
                         std_scale=std_scale, rob_scale=rob_scale,
                         std_temperature=choice.std_temperature if choice else 1.0,
                         rob_map=choice.rob_map if choice else None)
    device_ = resolve_device(device)
    pair = load_pair(source)
    with progress_callback() as progress:
        result = sweep_alpha(pair.std, pair.rob, pair.x, pair.y, config, device=device_, progress=progress, models=pair.names)
    stdout.print(sweep_table(result))
    write_results(result, json_path, out, write_sweep_outputs)
