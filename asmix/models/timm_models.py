"""``timm:NAME``, ``timm:NAME@SIZE`` and ``timm:hf-hub:ORG/NAME[@REVISION]``: timm models, their preprocessing read
from timm's data config, and errors that tell an old or missing huggingface_hub from a model not in the cache."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from asmix.compat import hf_cache_dir, hf_download_command, timm_hub_problem
from asmix.errors import AsmixError, AsmixWarning, RunFailed, first_line
from asmix.models.adapters import InputAdapter
from asmix.models.weights import load_weights
from asmix.preprocessing import Preprocessing, from_timm_config

HUB_PREFIX = "hf-hub:"

SAFE_WEIGHT_SUFFIXES = (".safetensors", ".npz")
"""Weights files timm reads without unpickling (safetensors; ``.npz`` with numpy's ``allow_pickle=False``)."""

_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3")
"""Packages whose errors mean the hub (or the network) did not provide a file."""


def split_size(name: str) -> tuple[str, int | None]:
    """``NAME@SIZE`` into the name and the square size inputs are resized to first; a hub name keeps a non-numeric
    ``@REVISION``."""
    base, sep, size = name.rpartition("@")
    if not sep or (name.startswith(HUB_PREFIX) and not size.isdigit()):
        return name, None
    if not size.isdigit() or int(size) <= 0:
        raise AsmixError(f"timm:{name}: the size after '@' must be a positive integer")
    return base, int(size)


def pretrained_config(name: str) -> dict[str, Any]:
    """timm's pretrained config of a model (a hub model's from its config.json, in the local cache or downloaded)."""
    import timm

    if name.startswith(HUB_PREFIX):
        try:
            config, _, _ = timm.models.load_model_config_from_hf(name[len(HUB_PREFIX) :])
        except Exception as error:  # huggingface_hub and the network raise many kinds
            raise hub_error(name, error) from error
        return dict(config)
    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise AsmixError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        config = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # a timm architecture with a tag it does not have
        raise AsmixError(f"timm:{name}: {first_line(error)}") from error
    return config.to_dict() if config is not None else {}


def data_preprocessing(config: dict[str, Any], *, source: str) -> Preprocessing:
    """The evaluation pipeline timm's ``resolve_data_config`` gives for a pretrained config."""
    from timm.data import resolve_data_config

    return from_timm_config(resolve_data_config(pretrained_cfg=config), source=source)


def timm_preprocessing(name: str, dataset: str) -> Preprocessing | None:
    """``NAME@SIZE``: resize to SIZE x SIZE; on ImageNet, timm's data config; elsewhere none."""
    name, size = split_size(name)
    config = pretrained_config(name)
    if size is not None:
        return Preprocessing(resize=(size, size), source=f"timm:{name}@{size}")
    if dataset != "imagenet":
        return None
    return data_preprocessing(config, source=f"timm data config of {name}")


def load_timm(name: str, *, dataset: str, num_classes: int, weights: Path | None) -> nn.Module:
    """A timm model in an ``InputAdapter`` that applies timm's mean and std (and the preprocessing); with ``weights``
    an ``AsmixWarning`` names the statistics, since the checkpoint must have been trained with them."""
    import timm
    from timm.data import resolve_model_data_config

    preprocessing = timm_preprocessing(name, dataset)
    name, _ = split_size(name)
    try:
        network = timm.create_model(
            name, pretrained=weights is None, num_classes=None if weights is None else num_classes
        )
    except Exception as error:  # huggingface_hub, the network and timm raise many kinds
        raise hub_error(name, error) from error
    data = resolve_model_data_config(network)
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if weights is not None:
        load_weights(network, weights)
        warnings.warn(
            f"timm:{name} with weights {weights}: inputs are normalised with timm's pixel_mean {_numbers(mean)} and "
            f"pixel_std {_numbers(std)}; a checkpoint trained with other statistics needs a py: spec",
            AsmixWarning,
            stacklevel=4,
        )
    elif network.num_classes != num_classes:
        raise AsmixError(
            f"timm model {name!r} has {network.num_classes} classes, dataset {dataset!r} has "
            f"{num_classes}: pass weights fine-tuned on it with --std-weights/--rob-weights"
        )
    return InputAdapter(network, mean, std, preprocessing)


def hub_error(name: str, error: Exception) -> AsmixError:
    """One line for a timm model that did not load: timm unable to use huggingface_hub at all, a model neither in
    the local Hugging Face cache nor downloadable (both ``RunFailed``: exit 1), or another failure (named as it is)."""
    problem = timm_hub_problem()
    if problem is not None:
        return RunFailed(f"cannot load timm:{name}: {problem}")
    if not _from_the_network(error):
        return AsmixError(f"cannot load timm:{name}: {type(error).__name__}: {first_line(error)}")
    repo = _hub_repo(name)
    if repo is None:
        return RunFailed(
            f"cannot download the weights of timm:{name} ({type(error).__name__}: {first_line(error)}); pass a "
            f"state dict with --std-weights/--rob-weights"
        )
    return RunFailed(
        f"timm:{name}: {repo} is not in the local Hugging Face cache {hf_cache_dir()} and the hub did not provide it "
        f"({type(error).__name__}); on a machine with internet run `{hf_download_command(repo)}` and copy the cache "
        f"here, or pass a state dict with --std-weights/--rob-weights"
    )


def timm_risk(name: str) -> str | None:
    """timm 1.0.9 reads a hub file a pretrained config names itself (``hf_hub_filename``: the open_clip, MetaCLIP
    and SAM2 tags) with ``torch.load(weights_only=False)`` unless it finds a safetensors copy; other tags are read as
    safetensors or with ``weights_only=True``."""
    name, _ = split_size(name)
    config = pretrained_config(name)
    filename = config.get("hf_hub_filename")
    if not filename or filename.endswith(SAFE_WEIGHT_SUFFIXES):
        return None
    return (
        f"timm reads its weights ({config.get('hf_hub_id')} {filename}) with torch.load(weights_only=False), which "
        f"runs any code pickled in the file (or give a safetensors state dict with --std-weights/--rob-weights)"
    )


def _hub_repo(name: str) -> str | None:
    """The Hugging Face repository a timm name loads from (without a revision), or None where it has none."""
    if name.startswith(HUB_PREFIX):
        return name[len(HUB_PREFIX) :].partition("@")[0]
    import timm

    try:
        config = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return None
    return getattr(config, "hf_hub_id", None) or None


def _from_the_network(error: BaseException | None) -> bool:
    """True where the error (or one it was raised from) says a file could not be fetched: an ``OSError`` (a
    connection, a timeout, a file not in the cache) or an error of huggingface_hub or an HTTP library."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) or type(error).__module__.split(".")[0] in _NETWORK_MODULES:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in values) + ")"
