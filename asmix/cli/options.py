"""Options shared by several commands, the progress display, the PairSource builder and the output checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from asmix.checks import canonical_norm, parse_number

console = Console(stderr=True)
stdout = Console(record=True)  # recorded, so that --report can save the tables a command printed


def number_parser(option: str):
    """A Typer ``parser`` reading ``0.5`` or a fraction like ``8/255`` for ``option``."""
    return lambda text: parse_number(text, option)


MODELS, DATA, THREAT, RUN, OUTPUT = "Models", "Data", "Threat model", "Run", "Output"
"""``--help`` panels of the shared options; a command's own options stay under "Options"."""

StdOption = Annotated[
    str,
    typer.Option(
        "--std",
        rich_help_panel=MODELS,
        help="Accurate model g: demo-std, bit-r152, timm:NAME, rb:NAME, file:PATH, py:MOD:FN.",
    ),
]
RobOption = Annotated[
    str,
    typer.Option(
        "--rob",
        rich_help_panel=MODELS,
        help="Robust model h: demo-rob, Wang2023, rb:NAME, timm:NAME, file:PATH, py:MOD:FN.",
    ),
]
DatasetOption = Annotated[
    str,
    typer.Option(
        "--dataset",
        rich_help_panel=DATA,
        metavar="demo|mnist|cifar10|cifar100|imagenet",
        help="demo, mnist, cifar10, cifar100 or imagenet.",
    ),
]
DataOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data", rich_help_panel=DATA, help=".npz/.pt file with arrays x and y (overrides --dataset's data)."
    ),
]
DataDirOption = Annotated[
    Path, typer.Option("--data-dir", rich_help_panel=DATA, help="Folder of the named dataset's files.")
]
NExamplesOption = Annotated[
    Optional[int],
    typer.Option(
        "--n-examples",
        rich_help_panel=DATA,
        help="Use the first N examples, N > 0 and at most the data's size (default: 500 on demo, else all).",
    ),
]
ModelDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--model-dir",
        rich_help_panel=MODELS,
        help="Checkpoint folder (default $ASMIX_MODEL_DIR or ~/.cache/asmix/models).",
    ),
]
StdWeightsOption = Annotated[
    Optional[Path], typer.Option("--std-weights", rich_help_panel=MODELS, help="State dict for g (safetensors or .pt).")
]
RobWeightsOption = Annotated[
    Optional[Path], typer.Option("--rob-weights", rich_help_panel=MODELS, help="State dict for h (safetensors or .pt).")
]
TrustCodeOption = Annotated[
    bool,
    typer.Option(
        "--trust-code/--no-trust-code",
        rich_help_panel=MODELS,
        help="Allow file: and py: models, which can run code when loaded (or set ASMIX_TRUST_CODE=1).",
    ),
]
NormOption = Annotated[
    str,
    typer.Option(
        "--norm",
        rich_help_panel=THREAT,
        parser=canonical_norm,
        metavar="linf|l2",
        help="Threat model: linf or l2 (any case: Linf, L2).",
    ),
]
EpsOption = Annotated[
    Optional[float],
    typer.Option(
        "--eps",
        rich_help_panel=THREAT,
        parser=number_parser("--eps"),
        metavar="EPS",
        help=(
            "Attack radius, a number or a fraction like 8/255 (default: RobustBench's standard: linf 8/255 and l2 "
            "0.5 on cifar10, linf 8/255 on cifar100, 4/255 on imagenet, 0.3 on demo/mnist; none elsewhere)."
        ),
    ),
]
StepsOption = Annotated[int, typer.Option("--steps", rich_help_panel=THREAT, help="PGD steps.")]
StepSizeOption = Annotated[
    Optional[float],
    typer.Option(
        "--step-size",
        rich_help_panel=THREAT,
        parser=number_parser("--step-size"),
        metavar="STEP",
        help="PGD step size, a number or a fraction like 2/255 (default 2.5*eps/steps).",
    ),
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", rich_help_panel=RUN, help="Examples per batch.")]
DeviceOption = Annotated[
    str,
    typer.Option("--device", rich_help_panel=RUN, metavar="auto|cpu|cuda|cuda:N", help="auto, cpu, cuda or cuda:N."),
]
SeedOption = Annotated[int, typer.Option("--seed", rich_help_panel=RUN, help="Random seed (PGD random starts).")]
OutOption = Annotated[
    Optional[Path],
    typer.Option(
        "--out",
        rich_help_panel=OUTPUT,
        help=(
            "Folder for JSON, CSV and PNG outputs; finished batches wait in its parts/ folder, so rerunning the "
            "same command resumes."
        ),
    ),
]
ReportOption = Annotated[
    Optional[Path],
    typer.Option(
        "--report",
        rich_help_panel=OUTPUT,
        help="Also write the printed tables, with links to the PNG plots, as a report: FILE.md or FILE.html.",
    ),
]
JsonOption = Annotated[
    Optional[Path], typer.Option("--json", rich_help_panel=OUTPUT, help="Write the result as JSON here.")
]
MIX_PANEL = "Mix (MixedNUTS / calibration)"
RobMapOption = Annotated[
    Optional[str],
    typer.Option(
        "--rob-map",
        rich_help_panel=MIX_PANEL,
        help="Map h's logits before mixing: nuts:S,P,C (MixedNUTS scale, power, clamp bias; arXiv 2402.02263).",
    ),
]
CalibrationOption = Annotated[
    Optional[Path],
    typer.Option(
        "--calibration",
        rich_help_panel=MIX_PANEL,
        help="Mix chosen by asmix calibrate (its calibration.json or folder): alpha, h's map, g's hard-max.",
    ),
]
FamilyOption = Annotated[
    str,
    typer.Option(
        "--family",
        rich_help_panel=MIX_PANEL,
        help="Which choice of --calibration: nuts, linear (the fixed alpha) or mixer (its trained mixer's head).",
    ),
]


def mix_choice(
    rob_map: str | None, calibration: Path | None, family: str, *, std: str, rob: str, alpha: float | None = None
):
    """The ``MixChoice`` the mix options name, or None without ``--rob-map`` and ``--calibration``:
    ``--calibration`` (checked against ``--std``/``--rob``) gives the family's alpha, map and g
    temperature; ``--rob-map`` a map with ``alpha``. Both at once, or ``--alpha`` with a calibration, is an error."""
    from asmix.calibration import MixChoice, load_calibration
    from asmix.errors import AsmixError
    from asmix.nuts import parse_rob_map

    if calibration is None:
        parsed = parse_rob_map(rob_map)
        return None if parsed is None else MixChoice(0.5 if alpha is None else alpha, 1.0, parsed)
    if rob_map is not None:
        raise AsmixError("give either --rob-map or --calibration, not both (the calibration holds the map)")
    if alpha is not None:
        raise AsmixError("give either --alpha or --calibration, not both (the calibration holds alpha)")
    loaded = load_calibration(calibration)
    loaded.check_models(std, rob)
    return loaded.choice(family)


def calibrated_mixer(choice, calibration: Path | None, *, std: str, rob: str):
    """The mixing network (head set) and mixer.json of a calibration's mixer family, or (None, {}) for the
    other families; a missing folder, another mixer or one trained for other models is one line."""
    if choice is None or choice.mixer is None:
        return None, {}
    from asmix.experiments.calibrate import load_calibrated_mixer

    return load_calibrated_mixer(choice, std=std, rob=rob, source=f"calibration {calibration}")


def n_examples_option(default: int):
    """``--n-examples`` of a command whose default is the first ``default`` examples (fewer if the data is smaller)."""
    return Annotated[
        Optional[int],
        typer.Option(
            "--n-examples",
            rich_help_panel=DATA,
            help=f"Use the first N examples, N > 0 and at most the data's size (default: the first {default}).",
        ),
    ]


PAIR_OPTIONS = (
    "std",
    "rob",
    "dataset",
    "data",
    "data_dir",
    "n_examples",
    "model_dir",
    "std_weights",
    "rob_weights",
    "norm",
    "trust_code",
)
"""The shared model and data options every command declares, read back by name in ``pair_source``."""


def pair_source(ctx: typer.Context, **overrides):
    """The library's ``PairSource`` from this command's shared model and data options (``PAIR_OPTIONS``, read
    by name from ``ctx``), with ``overrides`` (``n_examples``, ``default_n_examples``). It refuses ``file:``/``py:``
    models without ``--trust-code`` and ``--n-examples`` below 1."""
    from asmix.experiments.inputs import PairSource

    settings = {name: ctx.params[name] for name in PAIR_OPTIONS} | overrides
    for name in ("data", "data_dir", "model_dir", "std_weights", "rob_weights"):
        settings[name] = None if settings[name] is None else str(settings[name])
    return PairSource(**settings)


def progress_callback():
    """The progress display on stderr: rich bars on a terminal, plain timed lines in a batch log."""
    from asmix.cli.progress import progress_display

    return progress_display(console)


def start_device(name: str):
    """``--device`` resolved once; under torchrun this process joins the group and takes its own GPU."""
    from asmix import distributed
    from asmix.runtime import resolve_device

    device = resolve_device(name)
    distributed.init_distributed(device)
    return distributed.local_device(device)


def run_with_progress(work):
    """``work(progress)`` with the progress display on rank 0; other torchrun ranks show nothing."""
    from asmix.distributed import is_main_process

    if not is_main_process():
        return work(None)
    with progress_callback() as progress:
        return work(progress)


def check_outputs(
    *,
    json_path: Path | None = None,
    out_dir: Path | None = None,
    out_file: Path | None = None,
    report: Path | None = None,
) -> None:
    """Before any work: every output path a command will write can be written (``--json``, ``--report`` and a
    file ``--out`` are files, a folder ``--out`` is a folder), so that no result is lost at the end."""
    from asmix.errors import AsmixError
    from asmix.io import check_writable_dir, check_writable_file

    if report is not None and report.suffix.lower() not in (".md", ".html"):
        raise AsmixError(f"--report {report}: the file must end in .md or .html")
    for path in (json_path, out_file, report):
        if path is not None:
            check_writable_file(path)
    if out_dir is not None:
        check_writable_dir(out_dir)


def write_results(result, json_path: Path | None, out: Path | None, write_outputs) -> list[Path]:
    """Write a result's ``--json`` file and its ``--out`` folder (``write_outputs(result, out)``), saying
    where, and return the paths; a write that fails is one ``AsmixError`` line naming the path."""
    from asmix.io import write_error
    from asmix.report import write_json

    paths, target = [], json_path
    try:
        if json_path:
            paths.append(write_json(result, json_path))
        if out:
            target = out
            paths += write_outputs(result, out)
    except OSError as error:  # writers use asmix.io, which reports its own failures; this is for any other
        raise write_error(error.filename or target, error) from error
    for path in paths:
        console.print(f"wrote {path}")
    return paths


def write_report(report: Path | None, written: list[Path]) -> None:
    """``--report``: what the command printed on stdout (its tables) and links to the PNG plots it wrote."""
    if report is None:
        return
    from asmix.report.document import write_report_file

    console.print(f"wrote {write_report_file(report, stdout, [path for path in written if path.suffix == '.png'])}")


def print_notes(notes) -> None:
    """Show a loaded pair's one-line caveats on stderr (once: by rank 0 under torchrun)."""
    from asmix.distributed import is_main_process

    if not is_main_process():
        return
    for note in notes:
        console.print(f"note: {note}", highlight=False)
