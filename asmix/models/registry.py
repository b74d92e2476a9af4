"""One resolver for every model spec: ``timm:``, ``rb:`` (or a bare zoo name), ``file:``, ``py:``,
``demo-*``, and a table of aliases (``bit-r152``, ``Wang2023``)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import pickle
import re
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from asmix.checks import THREAT_MODEL_NAMES, check_norm, threat_model_name
from asmix.data import dataset_info
from asmix.errors import AsmixError, AsmixWarning, RunFailed, first_line
from asmix.models import bit
from asmix.models.adapters import InputAdapter
from asmix.models.cache import find_checkpoint, model_dirs, tried_paths
from asmix.models.demo import DEMO_WIDTHS, build_demo_model
from asmix.models.timm_models import (
    data_preprocessing,
    load_timm,
    pretrained_config,
    timm_preprocessing,
    timm_risk,
)
from asmix.models.weights import load_weights
from asmix.models.zoo import leaderboard_entry, resolve_zoo_name, same_paper
from asmix.preprocessing import Preprocessing, from_torchvision

ALIASES = {
    "bit-r152": "bit:resnetv2_152x2_bit",
    "bit-r50": "bit:resnetv2_50x1_bit",
    "Wang2023": "rb:Wang2023Better_WRN-70-16",
}


TRUST_CODE_ENV = "ASMIX_TRUST_CODE"

ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")
"""Datasets with a RobustBench zoo."""


def default_model_dir() -> Path:
    """Where downloads go without ``--model-dir``: ``$ASMIX_MODEL_DIR``, else RobustBench's ``./models``."""
    return model_dirs()[0]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``kind`` selects the loader, ``name`` is what it loads; ``asked`` is the alias the user
    wrote, where one was resolved (for the notice that says what it loaded)."""

    kind: str
    name: str
    asked: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.name if self.kind == "demo" else f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class LoadContext:
    """What a loader needs besides the name; ``asked`` is what the user wrote, where it differs from the name."""

    dataset: str
    threat_model: str
    model_dirs: tuple[Path, ...]
    weights: Path | None
    asked: str = ""

    @property
    def num_classes(self) -> int:
        return dataset_info(self.dataset).num_classes


def parse_spec(text: str) -> ModelSpec:
    """Turn a user's spec string into a ``ModelSpec`` (aliases resolved, bare names are zoo names)."""
    text = text.strip()
    if not text:
        raise AsmixError("empty model spec")
    asked, text = text, ALIASES.get(text, text)
    asked = asked if asked != text else ""
    if text in DEMO_WIDTHS:
        return ModelSpec("demo", text, asked)
    kind, sep, name = text.partition(":")
    if sep and kind in _LOADERS:
        if not name:
            raise AsmixError(f"model spec {text!r} has no name after '{kind}:'")
        return ModelSpec(kind, name, asked)
    return ModelSpec("rb", text, asked)


def canonical_spec(text: str) -> str:
    """A spec as one canonical string (aliases resolved), to compare specs; unparsable text as written."""
    try:
        return str(parse_spec(text))
    except AsmixError:
        return text.strip()


def trusts_code(trust_code: bool | None = None) -> bool:
    """The user's consent to load a model that can run code: ``trust_code`` where given (``--trust-code``, or
    ``--no-trust-code``, which wins over the environment), else ``$ASMIX_TRUST_CODE=1``."""
    if trust_code is not None:
        return bool(trust_code)
    return os.environ.get(TRUST_CODE_ENV, "").strip() == "1"


def code_risk(
    spec: str | ModelSpec, *, dataset: str = "demo", norm: str = "linf", weights: str | Path | None = None
) -> str | None:
    """Why loading ``spec`` can run code, or None where only tensors are read: ``file:`` and ``py:`` specs, timm
    tags whose weights timm unpickles, RobustBench checkpoints where ``torch.load`` unpickles by default. With
    ``weights`` (a state dict asmix reads itself with ``weights_only=True``) only the first two remain."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    risk = _CODE_RISKS.get(spec.kind)
    return risk(spec.name, _context(dataset, norm, None, weights)) if risk is not None else None


def check_code_consent(
    spec: str | ModelSpec,
    trust_code: bool | None = None,
    *,
    dataset: str = "demo",
    norm: str = "linf",
    weights: str | Path | None = None,
) -> ModelSpec:
    """Stop before a model that can run code (``code_risk``) is opened, unless the user consented (``trusts_code``):
    one line that says why."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if trusts_code(trust_code):
        return spec
    reason = code_risk(spec, dataset=dataset, norm=norm, weights=weights)
    if reason is not None:
        consent = (
            f"pass --trust-code (or set {TRUST_CODE_ENV}=1) if you trust it"
            if trust_code is None
            else "pass --trust-code instead of --no-trust-code if you trust it"
        )
        raise AsmixError(f"refusing {spec}: {reason}; {consent}")
    return spec


def load_model(
    spec: str | ModelSpec,
    *,
    dataset: str = "demo",
    norm: str = "linf",
    model_dir: str | Path | None = None,
    weights: str | Path | None = None,
    trust_code: bool | None = None,
) -> nn.Module:
    """Build the model a spec names, in eval mode, taking images in [0, 1].

    ``weights`` loads a state dict (safetensors or ``.pt`` read with ``weights_only=True``) into
    the resolved architecture instead of its default weights. Specs that can run code (``code_risk``:
    ``file:``, ``py:``, timm tags timm unpickles) load only with the user's consent (``trusts_code``).
    An ``AsmixWarning`` says which zoo model a short name or alias loaded (and what else it could have meant), and
    which pixel statistics a timm model applies to a checkpoint given as ``weights``.
    """
    spec = check_code_consent(spec, trust_code, dataset=dataset, norm=norm, weights=weights)
    context = replace(_context(dataset, norm, model_dir, weights), asked=spec.asked)
    return _LOADERS[spec.kind](spec.name, context).eval()


def model_preprocessing(spec: str | ModelSpec, *, dataset: str = "demo", norm: str = "linf") -> Preprocessing | None:
    """The preprocessing a model's reference pipeline applies (RobustBench's zoo entry, timm's data
    config, BiT's resize), read without loading weights; None where the model takes the images as they
    are. ``load_model`` puts the same record in the model's ``InputAdapter``."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    context = _context(dataset, norm, None, None)
    finder = _PREPROCESSINGS.get(spec.kind)
    return finder(spec.name, context) if finder is not None else None


def architecture_name(spec: str | ModelSpec, model: nn.Module) -> str:
    """The architecture of a loaded model as RobustBench's ``model_info`` names it (``WideResNet-70-16``,
    ``BiT-R152x2``): from the spec where it names one (bit:, timm:, demo), else from the built module."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    namer = _ARCHITECTURE_NAMES.get(spec.kind)
    return namer(spec.name) if namer is not None else module_architecture(model)


def hub_model_id(spec: str | ModelSpec) -> str | None:
    """The Hugging Face Hub repository a spec's weights come from (``timm/resnet18.a1_in1k`` for a timm: spec), or
    None where they come from elsewhere (RobustBench, a file, the demo)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.kind != "timm":
        return None
    import timm

    try:
        return getattr(timm.models.get_pretrained_cfg(spec.name.partition("@")[0]), "hf_hub_id", None) or None
    except RuntimeError:  # a timm name with a tag it does not have: not a Hub repository
        return None


def module_architecture(model: nn.Module) -> str:
    """A built module's architecture: a wide ResNet as ``WideResNet-DEPTH-WIDTH`` (read from its 3x3 convolutions
    and its classifier's width), anything else as its class name; asmix's input adapter is looked through."""
    while isinstance(model, (InputAdapter, _Exported)):
        model = model.model if isinstance(model, InputAdapter) else model.module
    name = type(model).__name__
    if "WideResNet" not in name:
        return name
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    depth = len(convs) + 3  # a stem convolution and two per block in 3 groups of (depth - 4) / 6 blocks
    if not linears or (depth - 4) % 6 or linears[-1].in_features % 64:
        return name
    return f"WideResNet-{depth}-{linears[-1].in_features // 64}"


def _bit_architecture(name: str) -> str:
    """timm's ``resnetv2_152x2_bit`` as BiT-R152x2."""
    match = re.fullmatch(r"resnetv2_(\d+)x(\d+)_bit(?:\..*)?", name)
    return f"BiT-R{match[1]}x{match[2]}" if match else name


def preprocessing_note(std: Preprocessing | None, rob: Preprocessing | None, *, dataset: str) -> str | None:
    """One line when g's preprocessing differs from the common input space h's induces (ImageNet
    only: elsewhere the images share one size); None when g sees its reference input."""
    if dataset != "imagenet":
        return None
    if rob is None:
        from asmix.data import imagenet_default_preprocessing

        rob = imagenet_default_preprocessing()
    if std is not None and std.same_space(rob):
        return None
    wanted = std.describe() if std is not None else "the images as they are"
    return (
        f"STD (g) expects {wanted} but runs on the common input space of ROB (h), "
        f"{rob.input_space().describe()}: g's numbers may differ from its reference evaluation"
    )


def _context(dataset: str, norm: str, model_dir: str | Path | None, weights: str | Path | None) -> LoadContext:
    norm = check_norm(norm)
    dataset_info(dataset)
    return LoadContext(
        dataset=dataset,
        threat_model=threat_model_name(norm),
        model_dirs=model_dirs(model_dir),
        weights=Path(weights) if weights is not None else None,
    )


def _load_demo(name: str, context: LoadContext) -> nn.Module:
    model = build_demo_model(name, pretrained=context.weights is None)
    return load_weights(model, context.weights) if context.weights else model


def _load_timm(name: str, context: LoadContext) -> nn.Module:
    return load_timm(name, dataset=context.dataset, num_classes=context.num_classes, weights=context.weights)


def _timm_preprocessing(name: str, context: LoadContext) -> Preprocessing | None:
    return timm_preprocessing(name, context.dataset)


def _load_bit(name: str, context: LoadContext) -> nn.Module:
    """BiT-M on timm's ResNetV2, resized the way the reference does (128x128 on CIFAR)."""
    import timm

    network = timm.create_model(name, pretrained=False, num_classes=context.num_classes)
    path = bit.bit_weights_path(context.weights, context.model_dirs, context.dataset)
    state = bit.load_bit_state_dict(path)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise AsmixError(f"BiT weights {path} do not fit {name}: {first_line(error)}") from error
    return InputAdapter(network, bit.BIT_MEAN, bit.BIT_STD, _bit_preprocessing(name, context))


def _bit_preprocessing(name: str, context: LoadContext) -> Preprocessing | None:
    size = bit.BIT_INPUT_SIZE.get(context.dataset)
    return Preprocessing(resize=(size, size), source=f"BiT on {context.dataset}") if size else None


def _load_robustbench(name: str, context: LoadContext) -> nn.Module:
    asked = context.asked or name
    zoo, name = _zoo_entry(name, context)  # imports RobustBench with the AutoAttack alias in place
    from robustbench.utils import load_model as rb_load_model

    if asked != name:
        warnings.warn(_zoo_notice(asked, name, list(zoo), context), AsmixWarning, stacklevel=3)

    preprocessing = _robustbench_preprocessing(name, context)
    if context.weights is not None:
        return _adapt_robustbench(load_weights(zoo[name]["model"](), context.weights), preprocessing)
    parts = zoo[name].get("gdrive_id")
    files = [f"{name}.pt_m{i}.pt" for i in range(len(parts))] if isinstance(parts, list) else [f"{name}.pt"]
    found, tried = find_checkpoint(context.model_dirs, context.dataset, context.threat_model, [files])
    # not on disk anywhere: RobustBench downloads into the first folder
    paths = found if found is not None else [path for path in tried if path.parent == tried[0].parent]
    model_dir = paths[0].parent.parent.parent
    try:
        with contextlib.redirect_stdout(sys.stderr):  # RobustBench prints download notices
            model = rb_load_model(
                name, model_dir=str(model_dir), dataset=context.dataset, threat_model=context.threat_model
            )
    except Exception as error:
        raise _robustbench_error(name, error, paths, tried) from error
    return _adapt_robustbench(model, preprocessing)


def _robustbench_error(name: str, error: Exception, paths: list[Path], tried: list[Path]) -> AsmixError:
    """One line that tells apart a checkpoint not found (and not downloaded), one that cannot be read, one
    that holds objects other than tensors and one whose tensors do not fit the architecture."""
    message = first_line(error)
    if isinstance(error, RuntimeError) and "loading state_dict" in message:
        detail = " ".join(line.strip() for line in str(error).splitlines()[:2])  # the header, then the first key
        return AsmixError(f"RobustBench checkpoint {tried_paths(paths)} does not fit {name}: {detail}")
    missing = [path for path in paths if not path.is_file()]
    if missing:
        return RunFailed(
            f"cannot load RobustBench model {name}: not found (tried {tried_paths(tried)}) and the download "
            f"failed ({type(error).__name__}); put {', '.join(path.name for path in paths)} in {paths[0].parent}"
        )
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        # torch.load's weights_only default refused the checkpoint
        return AsmixError(
            f"cannot load RobustBench model {name}: its checkpoint {tried_paths(paths)} holds objects other than "
            f"tensors, which torch.load(weights_only=True) refuses to unpickle; pass its state dict (safetensors) "
            f"with --std-weights/--rob-weights"
        )
    detail = "" if message.startswith("Weights only load failed") else f": {message}"  # torch's preamble, no cause
    return AsmixError(f"cannot read RobustBench checkpoint {tried_paths(paths)} (corrupt or truncated?){detail}")


def _zoo_entry(name: str, context: LoadContext) -> tuple[dict, str]:
    """RobustBench's zoo for the context's dataset and threat model, and the resolved name in it."""
    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    if context.dataset not in ROBUSTBENCH_DATASETS:
        raise AsmixError(
            f"unknown model {name!r}: not demo-std/demo-rob, an alias ({', '.join(ALIASES)}) or a spec "
            f"(timm:, bit:, rb:, file:, py:); RobustBench names need --dataset cifar10, cifar100 or imagenet"
        )
    zoos = model_dicts[BenchmarkDataset(context.dataset)]
    if ThreatModel(context.threat_model) not in zoos:
        norms = [norm for norm, threat in THREAT_MODEL_NAMES.items() if ThreatModel(threat) in zoos]
        raise AsmixError(
            f"RobustBench has no {context.dataset} {context.threat_model} models for {name!r}: "
            f"use --norm {' or --norm '.join(norms)}, or another spec (timm:, file:, py:)"
        )
    zoo = zoos[ThreatModel(context.threat_model)]
    return zoo, resolve_zoo_name(name, list(zoo), describe=lambda entry: _zoo_model_text(entry, context))


def _zoo_model_text(name: str, context: LoadContext) -> str:
    """A zoo name with its leaderboard accuracies where RobustBench's ``model_info`` lists them."""
    entry = leaderboard_entry(context.dataset, context.threat_model, name)
    return f"{name} ({entry.describe()})" if entry is not None else name


def _zoo_notice(asked: str, name: str, names: list[str], context: LoadContext) -> str:
    """What a short name or alias loaded, and the other models of the same paper it could have meant."""
    text = f"{asked!r} loads RobustBench {context.dataset} {context.threat_model} {_zoo_model_text(name, context)}"
    others = same_paper(name, names)
    if others:
        listed = ", ".join(_zoo_model_text(other, context) for other in others)
        text += f"; it could also mean {listed} (name one with rb:NAME)"
    return text


def _robustbench_preprocessing(name: str, context: LoadContext) -> Preprocessing | None:
    """The leaderboard's pipeline for an ImageNet zoo entry: its ``preprocessing`` field, else (as
    RobustBench does) the data config of the timm model registered under the entry's name."""
    if context.dataset != "imagenet":
        return None
    zoo, name = _zoo_entry(name, context)
    from robustbench.data import PREPROCESSINGS

    key = zoo[name].get("preprocessing")
    if key is not None:
        if key not in PREPROCESSINGS:
            raise AsmixError(f"RobustBench model {name} names preprocessing {key!r}, which RobustBench does not define")
        return from_torchvision(PREPROCESSINGS[key], source=f"RobustBench {key}")
    import timm

    timm_name = _robustbench_timm_name(name, context)
    if not timm.is_model(timm_name):
        raise AsmixError(
            f"RobustBench model {name} has no preprocessing entry and timm has no model {timm_name} "
            f"to read it from: this timm version cannot build it; use another model"
        )
    return data_preprocessing(pretrained_config(timm_name), source=f"timm data config of {timm_name}")


def _robustbench_timm_name(name: str, context: LoadContext) -> str:
    """The timm model RobustBench builds instead of a zoo entry where timm registers one under this name."""
    return f"{name.lower().replace('-', '_')}_{context.dataset}_{context.threat_model.lower()}"


def _adapt_robustbench(model: nn.Module, preprocessing: Preprocessing | None) -> nn.Module:
    """ImageNet zoo models come as ``Sequential(normalize, model)``: the adapter takes over the
    normalisation and adds the preprocessing, so taps reach the network itself (a timm Swin, a ResNet)."""
    if preprocessing is None:
        return model
    children = dict(model.named_children()) if isinstance(model, nn.Sequential) else {}
    normalizer = children.get("normalize")
    if set(children) == {"normalize", "model"} and hasattr(normalizer, "mean") and hasattr(normalizer, "std"):
        return InputAdapter(
            children["model"], normalizer.mean.flatten().tolist(), normalizer.std.flatten().tolist(), preprocessing
        )
    return InputAdapter(model, preprocessing=preprocessing)


def _load_file(name: str, context: LoadContext) -> nn.Module:
    """A ``torch.export`` program (``.pt2``) or a TorchScript file (loading either can run code)."""
    path = Path(name)
    if not path.is_file():
        raise AsmixError(f"model file not found: {path}")
    if context.weights is not None:
        raise AsmixError("--std-weights/--rob-weights do not apply to file: models (the file holds its weights)")
    try:
        if path.suffix == ".pt2":
            with _quiet_logger("torch.export"):  # it logs a traceback before raising on a file it cannot read
                return _Exported(torch.export.load(str(path)).module())
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise AsmixError(f"cannot load model file {path}: {first_line(error)}") from error


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Within the block, the logger ``name`` passes on errors only (asmix reports the failure as one line)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Exported(nn.Module):
    """Holds an exported program's module; ``eval()`` on it is not supported, so we no-op it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> "_Exported":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _load_python(name: str, context: LoadContext) -> nn.Module:
    """``py:module.path:factory`` or ``py:path/to/file.py:factory``, called with no arguments."""
    target, sep, attribute = name.rpartition(":")
    if not sep or not target or not attribute:
        raise AsmixError(f"python spec must be py:MODULE:CALLABLE, got py:{name}")
    try:
        if target.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
            if module_spec is None or not Path(target).is_file():
                raise AsmixError(f"python file not found: {target}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        factory = getattr(module, attribute)
    except AsmixError:
        raise
    except Exception as error:  # ImportError, AttributeError, and whatever the module raises (a SyntaxError...)
        raise AsmixError(
            f"cannot import {attribute} from {target}: {type(error).__name__}: {first_line(error)}"
        ) from error
    try:
        model = factory()
    except Exception as error:
        raise AsmixError(f"py:{name}: {attribute}() raised {type(error).__name__}: {first_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise AsmixError(f"py:{name} returned {type(model).__name__}, not a torch.nn.Module")
    return load_weights(model, context.weights) if context.weights else model


def _timm_risk(name: str, context: LoadContext) -> str | None:
    """With ``--*-weights`` timm loads no weights; otherwise ``timm_risk``."""
    return timm_risk(name) if context.weights is None else None


def _robustbench_risk(name: str, context: LoadContext) -> str | None:
    """RobustBench 1.1.1 calls ``torch.load`` without ``weights_only``: safe only where that reads tensors alone
    (torch >= 2.6); an entry that timm provides loads as timm's. With ``--*-weights`` asmix reads the state dict."""
    if context.weights is not None:
        return None
    from asmix.compat import torch_load_unpickles

    unpickles = torch_load_unpickles()
    if unpickles is not None:
        return (
            f"RobustBench reads its checkpoint with torch.load and no weights_only, and {unpickles} (or give a "
            f"safetensors state dict with --std-weights/--rob-weights)"
        )
    if context.dataset not in ROBUSTBENCH_DATASETS:
        return None  # not a RobustBench dataset: the loader refuses the name
    _, name = _zoo_entry(name, context)
    import timm

    timm_name = _robustbench_timm_name(name, context)
    return _timm_risk(timm_name, context) if timm.is_model(timm_name) else None


_CODE_RISKS: dict[str, Callable[[str, LoadContext], str | None]] = {
    "file": lambda name, context: "loading it can run code (torch.export unpickles weights, TorchScript carries code)",
    "py": lambda name, context: "it imports and runs Python code",
    "timm": _timm_risk,
    "rb": _robustbench_risk,
}
"""Spec kinds whose loading can run code, and why for this spec: asmix opens them only with the user's consent."""

_PREPROCESSINGS: dict[str, Callable[[str, LoadContext], Preprocessing | None]] = {
    "timm": _timm_preprocessing,
    "bit": _bit_preprocessing,
    "rb": _robustbench_preprocessing,
}
"""Spec kinds whose models carry a preprocessing of their own (the others take images as they are)."""

_ARCHITECTURE_NAMES: dict[str, Callable[[str], str]] = {
    "demo": lambda name: f"DemoCNN-{DEMO_WIDTHS[name]}",
    "timm": lambda name: name.partition("@")[0].split(".")[0],
    "bit": _bit_architecture,
}
"""Spec kinds whose name says the architecture (the others are named from the built module)."""

_LOADERS: dict[str, Callable[[str, LoadContext], nn.Module]] = {
    "demo": _load_demo,
    "timm": _load_timm,
    "bit": _load_bit,
    "rb": _load_robustbench,
    "file": _load_file,
    "py": _load_python,
}
