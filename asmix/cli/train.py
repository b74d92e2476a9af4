"""``asmix train-mixer``: train the mixing network alpha_theta (Section 4.4), optionally under torchrun."""

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
    PAIR_OPTIONS,
    TRAINING,
    SharedOptions,
    check_outputs,
    console,
    given_options,
    number_parser,
    print_notes,
    progress_callback,
    shared_options,
    stdout,
    write_report,
)

MIXER_NETWORK, VALIDATION = "Mixer network", "Validation and verdict"
PANELS = {
    TRAINING: (
        "--setting",
        "--recipe",
        "--epochs",
        "--batch-size",
        "--accum-steps",
        "--lr",
        "--weight-decay",
        "--ema-decay",
        "--grad-clip",
        "--c-ce",
        "--c-bce",
        "--c-prod",
        "--pseudo-labels",
        "--bf16",
        "--resume",
    ),
    ATTACK: (
        "--train-attacks",
        "--train-square-queries",
        "--eps-max",
        "--eps-range",
        "--steps-range",
        "--apgd-steps-df",
        "--target-classes",
        "--attack-bce-max",
    ),
    DATA: ("--n-train", "--n-val", "--val-split"),
    MIXER_NETWORK: (
        "--scale",
        "--train-bias",
        "--mixer-width",
        "--mixer-blocks",
        "--mixer-stages",
        "--clamp-std",
        "--bn-momentum",
        "--mixer-inputs",
        "--std-layers",
        "--rob-layers",
    ),
    HEAD: (
        "--head-choice",
        "--alpha-range",
        "--alpha-bias",
        "--target-clean-acc",
        "--range-min-alpha",
        "--range-max-width",
        "--lite-square-queries",
    ),
    VALIDATION: ("--val-eps", "--val-steps", "--verdict", "--compare"),
    OUTPUT: ("--out",),
}
"""train-mixer's own options by ``--help`` panel."""
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def _option(name: str, text: str, **settings):
    """One of train-mixer's own options, in its ``PANELS`` panel."""
    return typer.Option(name, help=text, rich_help_panel=PANEL_OF[name.split("/")[0]], **settings)


@command(
    "train-mixer",
    epilog=examples(
        "asmix train-mixer --out runs/mixer",
        "asmix train-mixer --out runs/mixer --resume",
        "torchrun --nproc-per-node 4 -m asmix train-mixer --std bit-r152 --rob Wang2023 --dataset cifar10 --bf16",
    ),
)
@shared_options(PAIR_OPTIONS, "norm", "std_scale", "rob_scale", "device", "seed", "report", "json_path")
def train_mixer_command(
    shared: SharedOptions,
    ctx: typer.Context,
    setting: Annotated[
        str,
        _option(
            "--setting",
            metavar="C|B|A",
            text="Training attacks, as the paper's settings: C APGD-CE + APGD-T copies (the paper's recipe), "
            "B white-box PGD, A gray-box PGD (alpha detached).",
        ),
    ] = "C",
    recipe: Annotated[
        str,
        _option(
            "--recipe",
            metavar="default|paper",
            text="paper: the authors' settings (their public code): setting C, train-attacks apgd-ce,apgd-t, n-train "
            "all, epochs 3, target-classes 9, apgd-steps-df 75, pseudo-labels paper, lr 5e-05, weight-decay 1e-05, "
            "grad-clip 10, c-ce 0, c-bce 1.5, c-prod 0.3 (0.2 on cifar100), train-bias 0.4, ema-decay 0, eps-range "
            "0.4:1.1, attack-bce-max 0.4; not their learning-rate warm-up (exponential over the first 1/25 of the "
            "steps; asmix's cosine schedule has none) nor AMP (see --bf16). default: each option's default. Options "
            "given on the command line (or by --config) override the recipe.",
        ),
    ] = "default",
    train_attacks: Annotated[
        str,
        _option(
            "--train-attacks",
            metavar="LIST",
            text="Setting C: the attacks whose iterates become attacked rows, comma-separated: apgd-ce (one copy per "
            "image), apgd-t (one per target class), alpha-first (drives the mixer's logit down, then attacks the "
            "class; twice an APGD copy's iterations), square (a short Square run, linf).",
        ),
    ] = "apgd-ce,apgd-t",
    train_square_queries: Annotated[
        int, _option("--train-square-queries", "Queries of the square training attack per batch.")
    ] = 100,
    epochs: Annotated[Optional[int], _option("--epochs", "Epochs (default 4 on demo, 3 otherwise).")] = None,
    batch_size: Annotated[
        Optional[int],
        _option("--batch-size", "Global batch of clean images attacked per step (default 64 on demo, 128 otherwise)."),
    ] = None,
    accum_steps: Annotated[
        int,
        _option(
            "--accum-steps", "Split each optimiser step into this many micro-batches whose gradients add up (memory)."
        ),
    ] = 1,
    lr: Annotated[float, _option("--lr", "AdamW learning rate (cosine schedule).")] = 1e-3,
    weight_decay: Annotated[float, _option("--weight-decay", "AdamW weight decay.")] = 1e-2,
    ema_decay: Annotated[float, _option("--ema-decay", "EMA decay of the mixer weights (App. D.1).")] = 0.8,
    grad_clip: Annotated[float, _option("--grad-clip", "Clip the mixer's gradient norm at this value.")] = 10.0,
    c_ce: Annotated[float, _option("--c-ce", "Weight of CE in the composite loss (eq. 4.2).")] = 0.0,
    c_bce: Annotated[float, _option("--c-bce", "Weight of BCE in the composite loss.")] = 1.5,
    c_prod: Annotated[float, _option("--c-prod", "Weight of CE*BCE in the composite loss.")] = 0.2,
    pseudo_labels: Annotated[
        str,
        _option(
            "--pseudo-labels",
            metavar="paper|oracle|rob-right",
            text="oracle: attacked 1 unless g is right and h wrong, clean 0 unless g is wrong and h right "
            "(chosen by the held-out verdict); paper: clean 0, attacked 1 (the authors' code); rob-right: 1 where "
            "h is right on the row, clean or attacked.",
        ),
    ] = "oracle",
    eps_max: Annotated[
        Optional[float],
        _option(
            "--eps-max",
            "Training attack radius eps, a number or a fraction like 8/255 (default: the dataset's standard eps).",
            parser=number_parser("--eps-max"),
            metavar="EPS",
        ),
    ] = None,
    eps_range: Annotated[
        str, _option("--eps-range", "Radius per example (setting C) or per batch (A, B) drawn as eps * U(LOW, HIGH).")
    ] = "0.4:1.1",
    steps_range: Annotated[
        Optional[str],
        _option(
            "--steps-range", "PGD steps of settings A/B drawn per batch from LOW:HIGH (default 5:10 on demo, 5:20)."
        ),
    ] = None,
    apgd_steps_df: Annotated[
        Optional[int],
        _option("--apgd-steps-df", "Setting C: APGD iterations per copy ~ chi-square(DF) (default 10 on demo, 75)."),
    ] = None,
    target_classes: Annotated[
        Optional[int], _option("--target-classes", "Setting C: APGD-T copies per clean image (default 2 on demo, 9).")
    ] = None,
    attack_bce_max: Annotated[
        float,
        _option(
            "--attack-bce-max",
            "Largest w of the attack loss (1 - w) * loss + w * BCE(alpha logit, 1), w drawn per example.",
        ),
    ] = 0.4,
    val_eps: Annotated[
        Optional[float],
        _option(
            "--val-eps",
            "Validation and verdict radius (default eps-max).",
            parser=number_parser("--val-eps"),
            metavar="EPS",
        ),
    ] = None,
    val_steps: Annotated[
        Optional[int], _option("--val-steps", "Per-epoch validation PGD steps (default 10 on demo, 20).")
    ] = None,
    n_train: Annotated[
        Optional[int],
        _option("--n-train", "Training examples from the start of the train split (default 2048 on demo, all)."),
    ] = None,
    n_val: Annotated[
        Optional[int],
        _option(
            "--n-val",
            "Held-out examples (the end of --val-split): validation, head choice (first half) and verdict (second "
            "half) (default 500 on demo, 1000).",
        ),
    ] = None,
    val_split: Annotated[
        str,
        _option(
            "--val-split",
            metavar="test|train",
            text="Split the held-out examples come from: test (its last --n-val; evaluate on the rest) or train.",
        ),
    ] = "test",
    scale: Annotated[float, _option("--scale", "Sigmoid scale s of the mixer output (Table 7).")] = 2.0,
    train_bias: Annotated[
        float,
        _option(
            "--train-bias",
            "Bias on the mixer logit in training and its attacks (the authors': 0.4; evaluation uses --alpha-bias).",
        ),
    ] = 0.0,
    mixer_width: Annotated[
        Optional[int],
        _option(
            "--mixer-width",
            "Channels of the mixing network (default: half the middle channels of g and h, at least 16).",
        ),
    ] = None,
    mixer_blocks: Annotated[int, _option("--mixer-blocks", "ResNet blocks per mixer stage.")] = 2,
    mixer_stages: Annotated[int, _option("--mixer-stages", "Mixer stages after the middle features join.")] = 2,
    clamp_std: Annotated[
        float, _option("--clamp-std", "In training, clamp the mixer logit to its batch mean +- this many std (0: off).")
    ] = 0.6,
    bn_momentum: Annotated[float, _option("--bn-momentum", "Momentum of the mixer's output batch norm.")] = 0.01,
    mixer_inputs: Annotated[
        str,
        _option(
            "--mixer-inputs",
            "What the mixer reads: both models' features (the paper), rob (h's features alone, which an attack "
            "moves little) or rob-logits (h's sorted log-probabilities, its confidence).",
            metavar="both|rob|rob-logits",
        ),
    ] = "both",
    std_layers: Annotated[
        Optional[str], _option("--std-layers", "Feature taps of g: UPSTREAM,MIDDLE module names.")
    ] = None,
    rob_layers: Annotated[
        Optional[str], _option("--rob-layers", "Feature taps of h: UPSTREAM,MIDDLE module names.")
    ] = None,
    bf16: Annotated[
        Optional[bool],
        _option("--bf16/--no-bf16", "bf16 autocast for the base models' work in training (default: on CUDA only)."),
    ] = None,
    head_choice: Annotated[
        bool,
        _option(
            "--head-choice/--no-head-choice",
            "Choose the evaluation head (range, bias, logit scales of g and h) on the first half of the held-out "
            "examples: by its AutoAttack-lite gain over the tempered fixed alpha of equal clean accuracy, or for "
            "--target-clean-acc. Without it the head is --alpha-range and --alpha-bias with --std-scale/--rob-scale.",
        ),
    ] = True,
    alpha_range: Annotated[
        str,
        _option("--alpha-range", "Evaluation range MIN:MAX of alpha with --no-head-choice (training uses 0:1)."),
    ] = "0:1",
    alpha_bias: Annotated[
        float,
        _option("--alpha-bias", "Evaluation bias on the mixer logit with --no-head-choice (training uses 0)."),
    ] = 0.0,
    target_clean_acc: Annotated[
        Optional[float],
        _option(
            "--target-clean-acc",
            "Choose the head for this clean accuracy (fraction or percent) instead of by its gain.",
        ),
    ] = None,
    range_min_alpha: Annotated[
        float, _option("--range-min-alpha", "Smallest alpha_min the head choice considers.")
    ] = 0.5,
    range_max_width: Annotated[
        float, _option("--range-max-width", "Widest alpha_max - alpha_min the head choice considers.")
    ] = 0.2,
    lite_square_queries: Annotated[
        int,
        _option(
            "--lite-square-queries",
            "Square's queries in the AutoAttack-lite of the head choice and the verdict (AutoAttack's standard: 5000).",
        ),
    ] = 300,
    verdict: Annotated[
        bool,
        _option(
            "--verdict/--no-verdict",
            "End with the mixer against the fixed alpha of equal clean accuracy under adaptive AutoAttack-lite on "
            "held-out data.",
        ),
    ] = True,
    compare: Annotated[
        bool,
        _option("--compare/--no-compare", "Also judge on the first --n-examples evaluation examples (default 1000)."),
    ] = False,
    out: Annotated[
        Path,
        _option(
            "--out",
            "Folder for the mixer, its model card and results, ready to upload; the checkpoint and log go to its "
            "train/ subfolder.",
        ),
    ] = Path("asmix-mixer"),
    resume: Annotated[
        bool, _option("--resume/--no-resume", "Continue from the checkpoint in --out (train/checkpoint.pt).")
    ] = False,
) -> None:
    """Train the mixing network alpha_theta on clean and attacked images (Section 4.4).

    Then choose its evaluation head and judge it against the fixed alpha of equal clean accuracy; launch with
    torchrun for several GPUs."""
    from asmix import distributed
    from asmix.experiments.inputs import load_pair
    from asmix.experiments.train import TrainConfig, default_run_size, judge, load_train_data, parse_range, train_mixer
    from asmix.experiments.train.config import parse_train_attacks
    from asmix.io import atomic_write_json
    from asmix.mixer import parse_layers
    from asmix.report.card import write_mixer_card
    from asmix.report.evaluate import detector_table
    from asmix.report.train import (
        epoch_line,
        frontier_table,
        head_line,
        history_table,
        verdict_table,
        write_train_outputs,
    )
    from asmix.runtime import resolve_device

    check_outputs(json_path=shared.json_path, out_dir=out, report=shared.report)
    source = shared.pair_source()
    size = default_run_size(shared.dataset, recipe)
    target = target_clean_acc
    if target is not None and target > 1:
        target /= 100
    device = distributed.local_device(resolve_device(shared.device))
    config = TrainConfig.from_recipe(
        recipe,
        shared.dataset,
        given=given_options(ctx),
        setting=setting.upper(),
        train_attacks=parse_train_attacks(train_attacks),
        train_square_queries=train_square_queries,
        epochs=size.epochs if epochs is None else epochs,
        threat=shared.threat_model(
            source,
            eps=source.default_eps if eps_max is None else eps_max,
            steps=size.val_steps if val_steps is None else val_steps,
        ),
        mix=shared.mix_settings(),
        run=shared.run_settings(batch_size=size.batch_size if batch_size is None else batch_size),
        accum_steps=accum_steps,
        lr=lr,
        weight_decay=weight_decay,
        ema_decay=ema_decay,
        grad_clip=grad_clip,
        c_ce=c_ce,
        c_bce=c_bce,
        c_prod=c_prod,
        pseudo_labels=pseudo_labels,
        eps_range=parse_range(eps_range, name="--eps-range"),
        steps_range=parse_range(steps_range, kind=int, name="--steps-range") if steps_range else size.steps_range,
        apgd_steps_df=size.apgd_steps_df if apgd_steps_df is None else apgd_steps_df,
        target_classes=size.target_classes if target_classes is None else target_classes,
        attack_bce_max=attack_bce_max,
        val_eps=val_eps,
        scale=scale,
        train_bias=train_bias,
        width=mixer_width,
        blocks=mixer_blocks,
        stages=mixer_stages,
        clamp_std=clamp_std,
        bn_momentum=bn_momentum,
        mixer_inputs=mixer_inputs,
        std_layers=parse_layers(std_layers),
        rob_layers=parse_layers(rob_layers),
        bf16=device.type == "cuda" if bf16 is None else bf16,
        alpha_range=parse_range(alpha_range, name="--alpha-range"),
        alpha_bias=alpha_bias,
        choose_head=head_choice,
        target_clean_acc=target,
        range_min_alpha=range_min_alpha,
        range_max_width=range_max_width,
        lite_square_queries=lite_square_queries,
    )
    distributed.init_distributed(device)
    main = distributed.is_main_process()
    pair = load_pair(source)
    print_notes(pair.notes)
    split = load_train_data(
        source, size.n_train if n_train is None else n_train, size.n_val if n_val is None else n_val, val_split
    )
    with progress_callback() as progress:
        result = train_mixer(
            pair.std,
            pair.rob,
            split.x_train,
            split.y_train,
            split.x_val,
            split.y_val,
            config,
            out_dir=out,
            resume=resume,
            judge_mixer=verdict,
            device=device,
            progress=progress if main else None,
            models=pair.names,
            dataset=shared.dataset,
            on_epoch=lambda record: console.print(epoch_line(record, config.epochs)),
        )
        comparison = None
        if compare:
            n_compare = shared.n_examples or size.n_compare
            mixed = result.mixed_classifier(pair.std, pair.rob).to(device)
            baseline = result.selection.baseline.head if result.selection is not None else None
            comparison = judge(
                mixed,
                split.x_test[:n_compare],
                split.y_test[:n_compare],
                baseline_scales=(baseline.std_scale, baseline.rob_scale) if baseline else (1.0, 1.0),
                eps=config.validation_threat.eps,
                norm=config.threat.norm,
                batch_size=config.run.batch_size,
                seed=config.run.seed,
                device=device,
                budget=config.lite_budget,
                progress=progress if main else None,
            )
    if not main:
        return
    stdout.print(history_table(result))
    if result.selection is not None:
        stdout.print(frontier_table(result.selection))
    stdout.print(head_line(result), soft_wrap=True)
    for title, judged in (("held-out", result.verdict), ("evaluation", comparison)):
        if judged is not None:
            stdout.print(verdict_table(judged, title))
            profile = detector_table(judged.detector_profile, "AutoAttack-lite")
            if profile is not None:
                stdout.print(profile)
            stdout.print(judged.line, soft_wrap=True)
    summary = {**result.to_dict(), "comparison": comparison.to_dict() if comparison is not None else None}
    for path in write_train_outputs(result, out, comparison) + (
        [atomic_write_json(shared.json_path, summary)] if shared.json_path else []
    ):
        console.print(f"wrote {path}")
    card = write_mixer_card(out)
    console.print(f"wrote {out / 'mixer.safetensors'}, {out / 'mixer.json'} and the model card {card}")
    write_report(shared.report, [card])
