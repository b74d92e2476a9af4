"""``asmix train-mixer``: train the mixing network alpha_theta (Section 4.4), optionally under torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from asmix.cli.app import app
from asmix.cli.options import (DataDirOption, DataOption, DatasetOption, DeviceOption, JsonOption, ModelDirOption,
                               NExamplesOption, NormOption, RobOption, RobWeightsOption, SeedOption, StdOption,
                               StdWeightsOption, console, pair_source, progress_callback, stdout)


def _option(name: str, text: str):
    return typer.Option(name, help=text)


@app.command("train-mixer")
def train_mixer_command(
    std: StdOption = "demo-std",
    rob: RobOption = "demo-rob",
    dataset: DatasetOption = "demo",
    data: DataOption = None,
    data_dir: DataDirOption = Path("./data"),
    n_examples: NExamplesOption = None,
    model_dir: ModelDirOption = None,
    std_weights: StdWeightsOption = None,
    rob_weights: RobWeightsOption = None,
    norm: NormOption = "linf",
    setting: Annotated[str, _option("--setting", "Training attacks: A gray-box PGD, B white-box PGD, C APGD-CE + APGD-T.")] = "B",
    epochs: Annotated[Optional[int], _option("--epochs", "Epochs (default 8 on demo, 10 otherwise).")] = None,
    batch_size: Annotated[Optional[int], _option("--batch-size", "Global batch of clean images (as many attacked ones are added; default 64 on demo, 128 otherwise).")] = None,
    lr: Annotated[float, _option("--lr", "AdamW learning rate (cosine schedule).")] = 1e-3,
    weight_decay: Annotated[float, _option("--weight-decay", "AdamW weight decay.")] = 1e-2,
    ema_decay: Annotated[float, _option("--ema-decay", "EMA decay of the mixer weights (App. D.1).")] = 0.8,
    c_ce: Annotated[float, _option("--c-ce", "Weight of CE in the composite loss (eq. 4.2).")] = 0.0,
    c_bce: Annotated[float, _option("--c-bce", "Weight of BCE in the composite loss.")] = 1.5,
    c_prod: Annotated[float, _option("--c-prod", "Weight of CE*BCE in the composite loss.")] = 0.2,
    eps_max: Annotated[Optional[float], _option("--eps-max", "Largest training attack radius (default: the dataset's eps).")] = None,
    eps_min_fraction: Annotated[float, _option("--eps-min-fraction", "Radius drawn per batch from [f*eps-max, eps-max].")] = 0.25,
    steps_range: Annotated[Optional[str], _option("--steps-range", "Attack steps drawn per batch from LOW:HIGH (default 5:10 on demo, 5:20).")] = None,
    attack_bce_max: Annotated[float, _option("--attack-bce-max", "Largest random weight of the alpha-down BCE term in the attack.")] = 2.0,
    val_eps: Annotated[Optional[float], _option("--val-eps", "Validation PGD radius (default eps-max).")] = None,
    val_steps: Annotated[Optional[int], _option("--val-steps", "Validation PGD steps (default 10 on demo, 20).")] = None,
    n_train: Annotated[Optional[int], _option("--n-train", "Training examples from the start of the train split (default 4096 on demo, all).")] = None,
    n_val: Annotated[Optional[int], _option("--n-val", "Held-out examples (the end of --val-split) for validation and --target-clean-acc (default 500 on demo, 1000).")] = None,
    val_split: Annotated[str, _option("--val-split", "Split the held-out examples come from: test (its last --n-val; evaluate on the rest) or train.")] = "test",
    scale: Annotated[float, _option("--scale", "Sigmoid scale s of the mixer output (Table 7).")] = 2.0,
    mixer_width: Annotated[Optional[int], _option("--mixer-width", "Channels of the mixing network (default: half the middle channels of g and h).")] = None,
    mixer_blocks: Annotated[int, _option("--mixer-blocks", "ResNet blocks per mixer stage.")] = 2,
    mixer_stages: Annotated[int, _option("--mixer-stages", "Mixer stages after the middle features join.")] = 2,
    std_layers: Annotated[Optional[str], _option("--std-layers", "Feature taps of g: UPSTREAM,MIDDLE module names.")] = None,
    rob_layers: Annotated[Optional[str], _option("--rob-layers", "Feature taps of h: UPSTREAM,MIDDLE module names.")] = None,
    std_scale: Annotated[float, _option("--std-scale", "Multiply g's logits before the softmax (App. D.1).")] = 1.0,
    rob_scale: Annotated[float, _option("--rob-scale", "Multiply h's logits before the softmax.")] = 1.0,
    alpha_range: Annotated[str, _option("--alpha-range", "Evaluation range MIN:MAX of alpha (training uses 0:1).")] = "0:1",
    target_clean_acc: Annotated[Optional[float], _option("--target-clean-acc", "Choose the alpha range on held-out data for this clean accuracy (fraction or percent).")] = None,
    floor_weight: Annotated[float, _option("--floor-weight", "Range score: (1-w) * PGD through the mixer + w * PGD of the fixed alpha_min (1: worst case).")] = 0.5,
    compare: Annotated[bool, _option("--compare", "After training, compare with the best fixed alpha under white-box PGD-20 on the first --n-examples evaluation examples (default 1000).")] = False,
    out: Annotated[Path, _option("--out", "Folder for the mixer, checkpoint and log.")] = Path("asmix-mixer"),
    resume: Annotated[bool, _option("--resume", "Continue from the checkpoint in --out.")] = False,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    json_path: JsonOption = None,
) -> None:
    """Train the mixing network on clean and attacked images; launch with torchrun for several GPUs."""
    from asmix import distributed
    from asmix.experiments.inputs import load_pair
    from asmix.experiments.train import (TrainConfig, compare_fixed_alpha, default_run_size, load_train_data,
                                         parse_range, train_mixer)
    from asmix.mixer import parse_layers
    from asmix.mixing import MixedClassifier
    from asmix.io import atomic_write_json
    from asmix.report.train import comparison_table, epoch_line, history_table, selection_line, write_train_outputs
    from asmix.runtime import resolve_device

    source = pair_source(std, rob, dataset, data, data_dir, n_examples, model_dir, std_weights, rob_weights, norm)
    size = default_run_size(dataset)
    if target_clean_acc is not None and target_clean_acc > 1:
        target_clean_acc /= 100
    eps = source.default_eps if eps_max is None else eps_max
    config = TrainConfig(
        setting=setting.upper(), epochs=size.epochs if epochs is None else epochs,
        batch_size=size.batch_size if batch_size is None else batch_size, lr=lr,
        weight_decay=weight_decay, ema_decay=ema_decay, c_ce=c_ce, c_bce=c_bce, c_prod=c_prod, norm=norm, eps_max=eps,
        eps_min_fraction=eps_min_fraction,
        steps_range=parse_range(steps_range, kind=int, name="--steps-range") if steps_range else size.steps_range,
        attack_bce_max=attack_bce_max, val_eps=val_eps, val_steps=size.val_steps if val_steps is None else val_steps,
        seed=seed, scale=scale, width=mixer_width, blocks=mixer_blocks, stages=mixer_stages,
        std_layers=parse_layers(std_layers), rob_layers=parse_layers(rob_layers), std_scale=std_scale,
        rob_scale=rob_scale, alpha_range=parse_range(alpha_range, name="--alpha-range"), target_clean_acc=target_clean_acc,
        floor_weight=floor_weight)
    device_ = distributed.local_device(resolve_device(device))
    distributed.init_distributed(device_)
    main = distributed.is_main_process()
    pair = load_pair(source)
    split = load_train_data(source, size.n_train if n_train is None else n_train, size.n_val if n_val is None else n_val,
                            val_split)
    with progress_callback() as progress:
        result = train_mixer(pair.std, pair.rob, split.x_train, split.y_train, split.x_val, split.y_val, config,
                             out_dir=out, resume=resume, device=device_, progress=progress if main else None,
                             models=pair.names,
                             on_epoch=lambda record: console.print(epoch_line(record, config.epochs)))
        comparison = None
        if compare:
            mixed = MixedClassifier(pair.std, pair.rob, alpha=result.mixer.to(device_), std_scale=std_scale,
                                    rob_scale=rob_scale)
            n_compare = n_examples or size.n_compare
            comparison = compare_fixed_alpha(mixed, split.x_test[:n_compare], split.y_test[:n_compare],
                                             eps=config.resolved_val_eps, steps=20, norm=norm,
                                             batch_size=config.batch_size, seed=seed, device=device_,
                                             progress=progress if main else None)
    if not main:
        return
    stdout.print(history_table(result))
    if result.selection is not None:
        stdout.print(selection_line(result.selection))
    if comparison is not None:
        stdout.print(comparison_table(comparison))
    summary = {**result.to_dict(), "comparison": comparison.to_dict() if comparison is not None else None}
    for path in write_train_outputs(result, out, comparison) + ([atomic_write_json(json_path, summary)] if json_path else []):
        console.print(f"wrote {path}")
    console.print(f"wrote {out / 'mixer.safetensors'} and {out / 'mixer.json'}")
