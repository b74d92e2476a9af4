"""Options shared by several commands, the progress display, the PairSource builder and the output checks."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Optional, get_type_hints

import typer
from rich.console import Console

from asmix.checks import canonical_norm, parse_number

console = Console(stderr=True)
stdout = Console(record=True)  # recorded, so that --report can save the tables a command printed


def number_parser(option: str):
    """A Typer ``parser`` reading ``0.5`` or a fraction like ``8/255`` for ``option``."""
    return lambda text: parse_number(text, option)


MODELS, DATA, THREAT, ATTACK, MIX_PANEL = "Models", "Data", "Threat model", "Attack", "Mix"
HEAD, TRAINING, RUN, OUTPUT = "Head", "Training", "Run", "Output"
"""``--help`` panels: every option of every command sits in one, shared options (declared here) and a command's
own (declared in its module) alike."""


def _shared(default, *names: str, panel: str, **settings):
    """A shared option: its default and ``typer.Option(*names, rich_help_panel=panel, **settings)``; the field's
    own type is the option's."""
    option = typer.Option(*names, rich_help_panel=panel, **settings)
    return field(default=None, metadata={"option": option, "default": default})


def n_examples_option(default: int, text: str | None = None):
    """``--n-examples`` of a command whose default is the first ``default`` examples (fewer if the data is smaller);
    ``text`` replaces the help of a command that reads other examples."""
    return Annotated[
        Optional[int],
        typer.Option(
            "--n-examples",
            rich_help_panel=DATA,
            help=text or f"Use the first N examples, N > 0 and at most the data's size (default: the first {default}).",
        ),
    ]


def alpha_option(default: float, note: str = ""):
    """``--alpha``, the fixed mixing weight of h_alpha, of a command whose default is ``default``."""
    return Annotated[
        Optional[float],
        typer.Option(
            "--alpha", rich_help_panel=MIX_PANEL, help=f"Fixed mixing weight of h_alpha{note} (default {default:g})."
        ),
    ]


@dataclass(frozen=True)
class SharedOptions:
    """The shared options, each declared once (default and ``typer.Option`` in the field's metadata), and the values
    a command was given (None for one it does not take); ``shared_options`` adds them to a command."""

    std: str = _shared(
        "demo-std",
        "--std",
        panel=MODELS,
        help="Accurate model g: demo-std, bit-r152, timm:NAME, rb:NAME, file:PATH, py:MOD:FN.",
    )
    rob: str = _shared(
        "demo-rob",
        "--rob",
        panel=MODELS,
        help="Robust model h: demo-rob, Wang2023, rb:NAME, timm:NAME, file:PATH, py:MOD:FN.",
    )
    dataset: str = _shared(
        "demo",
        "--dataset",
        panel=DATA,
        metavar="demo|mnist|cifar10|cifar100|imagenet",
        help="demo, mnist, cifar10, cifar100 or imagenet.",
    )
    data: Optional[Path] = _shared(
        None, "--data", panel=DATA, help=".npz/.pt file with arrays x and y (overrides --dataset's data)."
    )
    data_dir: Path = _shared(Path("./data"), "--data-dir", panel=DATA, help="Folder of the named dataset's files.")
    n_examples: Optional[int] = _shared(
        None,
        "--n-examples",
        panel=DATA,
        help="Use the first N examples, N > 0 and at most the data's size (default: 500 on demo, else all).",
    )
    model_dir: Optional[Path] = _shared(
        None,
        "--model-dir",
        panel=MODELS,
        help="Checkpoint folder, searched before $ASMIX_MODEL_DIR, ./models and ~/.cache/asmix/models.",
    )
    std_weights: Optional[Path] = _shared(
        None, "--std-weights", panel=MODELS, help="State dict for g (safetensors or .pt)."
    )
    rob_weights: Optional[Path] = _shared(
        None, "--rob-weights", panel=MODELS, help="State dict for h (safetensors or .pt)."
    )
    trust_code: Optional[bool] = _shared(
        None,
        "--trust-code/--no-trust-code",
        panel=MODELS,
        show_default=False,
        help=(
            "Allow models that can run code when loaded: file:, py: and timm tags whose weights timm unpickles "
            "(open_clip and others). Default: ASMIX_TRUST_CODE=1 allows them; --no-trust-code refuses even then. "
            "Never taken from --config."
        ),
    )
    norm: str = _shared(
        "linf",
        "--norm",
        panel=THREAT,
        parser=canonical_norm,
        metavar="linf|l2",
        help="Threat model: linf or l2 (any case: Linf, L2).",
    )
    eps: Optional[float] = _shared(
        None,
        "--eps",
        panel=THREAT,
        parser=number_parser("--eps"),
        metavar="EPS",
        help=(
            "Attack radius, a number or a fraction like 8/255 (default: RobustBench's standard: linf 8/255 and l2 "
            "0.5 on cifar10, linf 8/255 on cifar100, 4/255 on imagenet, 0.3 on demo/mnist; none elsewhere)."
        ),
    )
    steps: int = _shared(20, "--steps", panel=THREAT, help="PGD steps.")
    step_size: Optional[float] = _shared(
        None,
        "--step-size",
        panel=THREAT,
        parser=number_parser("--step-size"),
        metavar="STEP",
        help="PGD step size, a number or a fraction like 2/255 (default 2.5*eps/steps).",
    )
    mix_space: str = _shared(
        "prob", "--mix-space", panel=MIX_PANEL, metavar="prob|logit", help="prob (eq. 3.4) or logit (ablation)."
    )
    std_scale: Optional[float] = _shared(
        None,
        "--std-scale",
        panel=MIX_PANEL,
        help="Multiply g's logits before the softmax (App. D.1; default: the mixer head's, else 1).",
    )
    rob_scale: Optional[float] = _shared(
        None,
        "--rob-scale",
        panel=MIX_PANEL,
        help="Multiply h's logits before the softmax (default: the mixer head's, else 1).",
    )
    rob_map: Optional[str] = _shared(
        None,
        "--rob-map",
        panel=MIX_PANEL,
        help="Map h's logits before mixing: nuts:S,P,C (MixedNUTS scale, power, clamp bias; arXiv 2402.02263).",
    )
    calibration: Optional[Path] = _shared(
        None,
        "--calibration",
        panel=MIX_PANEL,
        help="Mix chosen by asmix calibrate (its calibration.json or folder): alpha, h's map, g's hard-max.",
    )
    family: str = _shared(
        "nuts",
        "--family",
        panel=MIX_PANEL,
        metavar="nuts|tempered|linear|mixer",
        help="Which family of --calibration: nuts (MixedNUTS: h's logits mapped, fixed alpha), tempered (fixed alpha "
        "with logit scales of g and h), linear (plain fixed alpha) or mixer (its trained mixer's head).",
    )
    batch_size: int = _shared(256, "--batch-size", panel=RUN, help="Examples per batch.")
    device: str = _shared(
        "auto", "--device", panel=RUN, metavar="auto|cpu|cuda|cuda:N", help="auto, cpu, cuda or cuda:N."
    )
    seed: int = _shared(0, "--seed", panel=RUN, help="Random seed (PGD random starts).")
    out: Optional[Path] = _shared(
        None,
        "--out",
        panel=OUTPUT,
        help=(
            "Folder for JSON, CSV and PNG outputs; finished batches wait in its parts/ folder, so rerunning the "
            "same command resumes."
        ),
    )
    report: Optional[Path] = _shared(
        None,
        "--report",
        panel=OUTPUT,
        help="Also write the printed tables, with links to the PNG plots, as a report: FILE.md or FILE.html.",
    )
    json_path: Optional[Path] = _shared(None, "--json", panel=OUTPUT, help="Write the result as JSON here.")
    default_n_examples: int | None = None
    """Not an option: the examples a command takes without ``--n-examples`` (``shared_options(n_examples=N)``)."""

    def pair_source(self, **overrides):
        """The library's ``PairSource`` from the model and data options and ``--norm``, with ``overrides``
        (``n_examples``, ``default_n_examples``). It refuses models that can run code without consent and
        ``--n-examples`` below 1."""
        from asmix.experiments.inputs import PairSource

        settings = {name: getattr(self, name) for name in (*PAIR_OPTIONS, "norm")}
        settings = settings | {"default_n_examples": self.default_n_examples} | overrides
        for name in ("data", "data_dir", "model_dir", "std_weights", "rob_weights"):
            settings[name] = None if settings[name] is None else str(settings[name])
        return PairSource(**settings)

    def threat_model(self, source, **overrides):
        """The ``ThreatModel`` of ``--norm`` (as ``source`` read it), ``--eps`` (default: the dataset's standard
        radius), ``--steps`` and ``--step-size``; ``overrides`` for a command whose steps are another option's."""
        from asmix.attacks.pgd import ThreatModel

        eps = source.default_eps if self.eps is None else self.eps
        settings = {"norm": source.norm, "eps": eps, "steps": self.steps, "step_size": self.step_size}
        return ThreatModel(**(settings | overrides))

    def run_settings(self, **overrides):
        """``RunSettings`` of ``--batch-size`` and ``--seed`` (``overrides`` for a command's own batch size)."""
        from asmix.runtime import RunSettings

        return RunSettings(**({"batch_size": self.batch_size, "seed": self.seed} | overrides))

    def mix_settings(self, choice=None, card=None):
        """The ``MixSettings`` of ``--mix-space`` and the logit scales (each: the option, else the scale of the mixer
        ``card``'s evaluation head, else 1; an option that overrides the head says so), with g's temperature and h's
        map from ``choice`` (``mix_choice``; None: softmax of g, raw h)."""
        from asmix.mixing import MixSettings

        def scale(name: str) -> float:
            given, head = getattr(self, name), getattr(card, name, None)
            if head is None and choice is not None and choice.mixer is None:  # a calibrated fixed alpha's scales
                head = choice.scales[0 if name == "std_scale" else 1]
            if given is not None and head is not None and float(given) != float(head):
                console.print(
                    f"note: --{name.replace('_', '-')} {given:g} overrides the {name} {head:g} of the head chosen",
                    highlight=False,
                )
            return next(value for value in (given, head, 1.0) if value is not None)

        return MixSettings(
            mix_space=self.mix_space or "prob",
            std_scale=scale("std_scale"),
            rob_scale=scale("rob_scale"),
            std_temperature=choice.std_temperature if choice else 1.0,
            rob_map=choice.rob_map if choice else None,
        )

    def check_outputs(self) -> None:
        """Before any work: ``--json``, ``--report`` and the ``--out`` folder can be written."""
        check_outputs(json_path=self.json_path, out_dir=self.out, report=self.report)

    def write_outputs(self, result, write_outputs) -> None:
        """After the work: ``--json``, the ``--out`` folder (``write_outputs(result, out)``) and ``--report``, saying
        where; a write that fails is one ``AsmixError`` line naming the path."""
        from asmix.io import write_error
        from asmix.report import write_json

        paths, target = [], self.json_path
        try:
            if self.json_path:
                paths.append(write_json(result, self.json_path))
            if self.out:
                target = self.out
                paths += write_outputs(result, self.out)
        except OSError as error:  # writers use asmix.io, which reports its own failures; this is for any other
            raise write_error(error.filename or target, error) from error
        for path in paths:
            console.print(f"wrote {path}")
        write_report(self.report, paths)

    def mix_choice(self, *, alpha: float | None = None):
        """The ``MixChoice`` that ``--rob-map``, ``--calibration`` and ``--family`` name, or None without the first
        two: ``--calibration`` (checked against ``--std``/``--rob``) gives the family's alpha, map and g temperature;
        ``--rob-map`` a map with ``alpha``. Both at once, or ``alpha`` with a calibration, is an error."""
        from asmix.calibration import MixChoice, load_calibration
        from asmix.errors import AsmixError
        from asmix.nuts import parse_rob_map

        if self.calibration is None:
            parsed = parse_rob_map(self.rob_map)
            return None if parsed is None else MixChoice(0.5 if alpha is None else alpha, 1.0, parsed)
        if self.rob_map is not None:
            raise AsmixError("give either --rob-map or --calibration, not both (the calibration holds the map)")
        if alpha is not None:
            raise AsmixError("give either --alpha or --calibration, not both (the calibration holds alpha)")
        loaded = load_calibration(self.calibration)
        loaded.check_models(self.std, self.rob)
        return loaded.choice(self.family)

    def calibrated_mixer(self, choice):
        """The mixing network (head set) and ``MixerCard`` of ``choice`` (``mix_choice``) where it is the mixer
        family, else (None, None); a missing folder, another mixer or one trained for other models is one line."""
        if choice is None or choice.mixer is None:
            return None, None
        from asmix.experiments.calibrate import load_calibrated_mixer

        return load_calibrated_mixer(choice, std=self.std, rob=self.rob, source=f"calibration {self.calibration}")


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
    "trust_code",
)
"""The model and data options every command takes (certify declares its own ``--rob``)."""
THREAT_OPTIONS = ("norm", "eps", "steps", "step_size")
MIX_OPTIONS = ("mix_space", "std_scale", "rob_scale", "rob_map", "calibration", "family")
RUN_OPTIONS = ("batch_size", "device", "seed")
OUTPUT_OPTIONS = ("out", "report", "json_path")


def own(annotation, default):
    """A command's own declaration of a shared option, for ``shared_options(name=own(...))``."""
    return (annotation, default)


def shared_options(*groups: tuple[str, ...] | str, **overrides):
    """Decorator: the command also takes ``--config`` and the shared options named in ``groups`` (declared once in
    ``SharedOptions``); ``overrides`` give a command's default for one (a value; for ``n_examples`` the number
    of examples taken without it) or its own declaration (``own``; ``default_n_examples=N`` with an own
    ``--n-examples``).
    The command receives their values by keyword as one ``SharedOptions`` argument, ``shared``."""
    from asmix.cli.config_file import ConfigOption

    names = [name for group in groups for name in ((group,) if isinstance(group, str) else group)]
    default_n_examples = overrides.pop("default_n_examples", None) or overrides.get("n_examples")
    if isinstance(overrides.get("n_examples"), int):  # the command's own default: the first N examples
        overrides["n_examples"] = own(n_examples_option(default_n_examples), None)
    elif not isinstance(default_n_examples, int):
        default_n_examples = None
    declared = {item.name: item.metadata for item in fields(SharedOptions)}
    types = get_type_hints(SharedOptions)
    added = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOption)]
    for name in names:
        annotation, default = Annotated[types[name], declared[name]["option"]], declared[name]["default"]
        override = overrides.get(name, default)
        annotation, default = override if isinstance(override, tuple) else (annotation, override)
        added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

    def decorate(command):
        own_parameters = [
            parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for parameter in inspect.signature(command, eval_str=True).parameters.values()
            if parameter.name != "shared"
        ]

        @functools.wraps(command)
        def run(**values):
            values.pop("config_file", None)
            shared = SharedOptions(**{name: values.pop(name) for name in names}, default_n_examples=default_n_examples)
            return command(**values, shared=shared)

        parameters = added + own_parameters
        run.__signature__ = inspect.Signature(parameters)
        run.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return run

    return decorate


def given_options(context: typer.Context) -> set[str]:
    """The command's options that were set, on the command line or by ``--config``, rather than left at their
    default (a recipe fills only the others). Sources are compared by name: Typer may bring its own copy of Click."""
    return {
        name for name in context.params if getattr(context.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"
    }


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


def run_on_pair(shared: SharedOptions, source, experiment, config, *, check_pair=None, extra_models=None, **extra):
    """Load the models and data ``source`` names, on ``--device``, and run ``experiment(g, h, x, y, config)`` with
    the progress display and ``--out`` as its resume folder: the result on rank 0, None on other torchrun ranks.
    ``check_pair(pair)`` runs once the models are loaded (e.g. a mixer's base-weight check), ``extra_models`` join
    the recorded model specs and ``extra`` keywords go to ``experiment`` (e.g. ``mixer=``, or another ``out=``)."""
    from asmix.distributed import is_main_process
    from asmix.experiments.inputs import load_pair

    device = start_device(shared.device)
    pair = load_pair(source)
    print_notes(pair.notes)
    if check_pair is not None:
        check_pair(pair)
    result = run_with_progress(
        lambda progress: experiment(
            pair.std,
            pair.rob,
            pair.x,
            pair.y,
            config,
            device=device,
            progress=progress,
            models=pair.names | (extra_models or {}),
            **({"out": shared.out} | extra),
        )
    )
    return result if is_main_process() else None


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


def mixer_pair_check(card, mixer, note: str | None = None):
    """A ``run_on_pair`` check for a mixer: refuse base models with other weights than its ``card``'s and a ``mixer``
    that does not fit them on one input (``MixerCard.check_pair``), then print ``note`` on stderr."""

    def check_pair(pair) -> None:
        card.check_pair(mixer, pair.std, pair.rob, pair.x)
        if note:
            console.print(note, highlight=False, soft_wrap=True)

    return check_pair
