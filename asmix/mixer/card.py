"""A trained mixer's files: ``mixer.safetensors`` (weights) and ``mixer.json`` (its card: base models, weight
hashes, architecture, evaluation head, training settings, verdict), written, read and checked here."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from asmix.checks import check_finite_tensors, schema_problem
from asmix.errors import AsmixError, first_line
from asmix.identity import base_weights, describe_roles, differing_models
from asmix.io import atomic_write, atomic_write_json
from asmix.mixer.network import MAX_BLOCKS, MAX_CHANNELS, MAX_STAGES, MAX_WIDTH, MixerInputs, MixingNetwork
from asmix.mixing import EvaluationHead

MIXER_WEIGHTS = "mixer.safetensors"
MIXER_CONFIG = "mixer.json"
MIXER_FORMAT = "asmix-mixer"
MIXER_FORMAT_VERSION = 3
MAX_SCALE = 1000.0
"""The largest sigmoid scale a mixer.json may hold (asmix trains with 2)."""


def _field(kind, description: str, **bounds):
    """A schema field: values of ``kind`` within ``bounds``, ``description`` saying so in an error."""
    return Annotated[kind, Field(description=description, **bounds)]


def _pair(item, description: str):
    return _field(list[item], description, min_length=2, max_length=2)


_Fraction = _field(float, "a number in [0, 1]", ge=0, le=1)
_Channels = _field(int, f"a channel count from 0 to {MAX_CHANNELS}", ge=0, le=MAX_CHANNELS)
_Layer = _field(str, "a module name", min_length=1, max_length=256)
_Sha256 = _field(str, "a sha256 hex digest", pattern="^[0-9a-f]{64}$")
_Count = _field(int, "an integer >= 0", ge=0)


class _Schema(BaseModel):
    """Strict types (no "5" for 5, no 1e6 for an integer), no unknown keys."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ArchitectureSchema(_Schema):
    """mixer.json's ``architecture``: ``MixingNetwork``'s keywords, typed and bounded before anything is built."""

    std_channels: _pair(_Channels, f"two channel counts from 0 to {MAX_CHANNELS}")
    rob_channels: _pair(_Channels, f"two channel counts from 0 to {MAX_CHANNELS}")
    std_layers: _field(list[_Layer], "no or two module names", max_length=2) = ["layer1", "layer2"]
    rob_layers: _field(list[_Layer], "no or two module names", max_length=2) = ["layer1", "layer2"]
    width: _field(int | None, f"an integer from 1 to {MAX_WIDTH}", ge=1, le=MAX_WIDTH) = None
    blocks: _field(int, f"an integer from 1 to {MAX_BLOCKS}", ge=1, le=MAX_BLOCKS) = 2
    stages: _field(int, f"an integer from 0 to {MAX_STAGES}", ge=0, le=MAX_STAGES) = 2
    scale: _field(float, f"a finite number in (0, {MAX_SCALE:g}]", gt=0, le=MAX_SCALE, allow_inf_nan=False) = 2.0
    alpha_range: _pair(_Fraction, "[alpha_min, alpha_max] within [0, 1]") = [0.0, 1.0]
    alpha_bias: _field(float, "a finite number", allow_inf_nan=False) = 0.0
    clamp_std: _field(float, "a finite number >= 0", ge=0, allow_inf_nan=False) = 0.6
    bn_momentum: _field(float, "a number in (0, 1]", gt=0, le=1) = 0.01
    inputs: MixerInputs = "both"


class TrainingScalesSchema(_Schema):
    """The training settings asmix reads back from mixer.json: the logit scales of g and h (the head of a mixer.json
    written before the ``head`` block), wherever ``MixerCard.training_settings`` finds them."""

    model_config = ConfigDict(extra="ignore")
    std_scale: _field(float, "a finite number in (0, 1000]", gt=0, le=1000, allow_inf_nan=False) = 1.0
    rob_scale: _field(float, "a finite number in (0, 1000]", gt=0, le=1000, allow_inf_nan=False) = 1.0


class MixerSchema(_Schema):
    """A whole mixer.json: the fields asmix reads are typed and bounded; ``head`` is ``EvaluationHead``'s to check,
    the records (training settings, selection, verdict, history, provenance) need only be objects."""

    model_config = ConfigDict(extra="ignore")
    format: Literal["asmix-mixer"]
    version: _field(int, f"a version this asmix reads, 1 to {MIXER_FORMAT_VERSION}", ge=1, le=MIXER_FORMAT_VERSION) = 1
    models: _field(dict[str, str] | None, "an object of base-model specs (strings)") = None
    architecture: ArchitectureSchema
    head: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    dataset: _field(str | None, "a dataset name", max_length=256) = None
    base_weights: _field(dict[Literal["std", "rob"], _Sha256] | None, "an object of std and rob sha256 digests") = None
    n_train: _Count | None = None
    n_val: _Count | None = None
    data_fingerprint: str | None = None
    selection: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    provenance: dict[str, Any] | None = None


def save_mixer(
    mixer: MixingNetwork,
    directory: str | Path,
    *,
    config: dict[str, Any],
    std: nn.Module | None = None,
    rob: nn.Module | None = None,
    scales: tuple[float, float] = (1.0, 1.0),
) -> Path:
    """Write ``mixer.safetensors`` (weights and BN buffers) and ``mixer.json`` (architecture, the evaluation ``head``
    block: the network's range and bias with the logit ``scales`` of g and h, plus ``config``: base model specs under
    ``models``, training settings, data fingerprint) atomically. Given the base models ``std`` and ``rob``, the sha256
    of their weights goes under ``base_weights``, and loading the mixer against other weights is refused."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in mixer.state_dict().items()}
    atomic_write(directory / MIXER_WEIGHTS, lambda path: save_file(state, str(path)))
    document = {
        "format": MIXER_FORMAT,
        "version": MIXER_FORMAT_VERSION,
        **config,
        "architecture": mixer.architecture(),
        "head": mixer.head(*scales).to_dict(),
    }
    if std is not None and rob is not None:
        document["base_weights"] = base_weights(std, rob)
    atomic_write_json(directory / MIXER_CONFIG, document)
    return directory


TRAINING_BLOCK_KEYS = {"threat": {"norm": "norm", "eps": "eps_max", "steps": "val_steps"}, "mix": None, "run": None}
"""How a mixer.json's grouped training settings map to the flat names of earlier asmix (None: same names)."""


HF_PREFIX = "hf:"


def resolve_mixer_dir(directory: str | Path) -> Path:
    """A mixer folder, or ``hf:ORG/NAME[@REVISION]``: that Hugging Face repository's snapshot in the local cache
    (``$HF_HOME``/``$HF_HUB_CACHE``, default ~/.cache/huggingface/hub), never downloaded by asmix."""
    text = str(directory)
    if not text.startswith(HF_PREFIX):
        return Path(directory)
    repo_id, _, revision = text[len(HF_PREFIX) :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise AsmixError(f"mixer {text!r}: use hf:ORG/NAME or hf:ORG/NAME@REVISION")
    from huggingface_hub import snapshot_download

    from asmix.compat import hf_cache_dir, hf_download_command

    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=True))
    except Exception as error:  # huggingface_hub raises several kinds for "not in the cache"
        raise AsmixError(
            f"mixer {text} is not in the local Hugging Face cache {hf_cache_dir()}: on a machine with "
            f"internet run `{hf_download_command(repo_id)}` and copy the cache here, or pass the "
            f"folder that holds mixer.json and mixer.safetensors ({type(error).__name__})"
        ) from error


CARD_AS_WRITTEN = (
    "dataset",
    "base_weights",
    "n_train",
    "n_val",
    "data_fingerprint",
    "selection",
    "verdict",
    "provenance",
)
"""The ``MixerCard`` fields read from mixer.json as they are (None where missing)."""


@dataclass(frozen=True)
class MixerCard:
    """What a mixer.json records beside the weights: the base models' specs and weight hashes, the architecture
    and evaluation head, the training settings as written, the training data, the head choice, the verdict, the
    history and the provenance."""

    directory: Path
    version: int
    models: dict[str, str]
    architecture: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    base_weights: dict[str, str] | None = None
    dataset: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    data_fingerprint: str | None = None
    selection: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None
    history: tuple[dict[str, Any], ...] = ()
    provenance: dict[str, Any] | None = None
    head: EvaluationHead = EvaluationHead()

    @classmethod
    def read(cls, directory: str | Path) -> "MixerCard":
        """The card in ``directory/mixer.json``, checked against ``MixerSchema`` (types, ranges, finite numbers,
        bounded sizes, a known version) and its head and training scales by ``EvaluationHead``; a missing,
        unreadable, foreign or malformed file is one ``AsmixError`` naming the first problem."""
        directory = Path(directory)
        path = directory / MIXER_CONFIG
        if not path.is_file():
            raise AsmixError(f"mixer directory {directory} has no {path.name} (train one with asmix train-mixer)")
        try:
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as error:  # unreadable, not UTF-8, not JSON, too deep
                raise AsmixError(f"not a UTF-8 JSON file ({first_line(error)})") from error
            if not isinstance(document, dict) or document.get("format") != MIXER_FORMAT:
                raise AsmixError(f'not an asmix mixer config (no "format": "{MIXER_FORMAT}")')
            try:
                checked = MixerSchema.model_validate(document)
            except ValidationError as error:
                raise AsmixError(schema_problem(error, MixerSchema)) from error
            card = cls(
                directory=directory,
                version=checked.version,
                models=checked.models or {},
                architecture=checked.architecture.model_dump(),
                training=checked.training or {},
                history=tuple(checked.history or ()),
                **{name: getattr(checked, name) for name in CARD_AS_WRITTEN},
            )
            try:
                TrainingScalesSchema.model_validate(card.training_settings)
            except ValidationError as error:
                raise AsmixError(f"training.{schema_problem(error, TrainingScalesSchema)}") from error
            return replace(card, head=EvaluationHead.from_dict(checked.head or {}, card.head_before_scales))
        except AsmixError as error:
            raise AsmixError(f"corrupt mixer config {path}: {error}") from error

    @property
    def head_before_scales(self) -> EvaluationHead:
        """The head of a mixer.json written before the ``head`` block: the architecture's range and bias with the
        logit scales the mixer was trained with (1 and 1 where none was recorded)."""
        low, high = self.architecture.get("alpha_range", (0.0, 1.0))
        settings = self.training_settings
        return EvaluationHead(
            low,
            high,
            self.architecture.get("alpha_bias", 0.0),
            settings.get("std_scale", 1.0),
            settings.get("rob_scale", 1.0),
        )

    @property
    def training_settings(self) -> dict[str, Any]:
        """The training settings under the flat names earlier asmix wrote (``norm``, ``eps_max``, ``val_steps``,
        ``std_scale``, ``batch_size``...), whichever form was written: the ``threat``, ``mix`` and ``run`` groups
        are spread into them."""
        flat = {key: value for key, value in self.training.items() if key not in TRAINING_BLOCK_KEYS}
        for block, names in TRAINING_BLOCK_KEYS.items():
            group = self.training.get(block)
            if isinstance(group, dict):
                for key, value in group.items():
                    if names is None or key in names:
                        flat[key if names is None else names[key]] = value
        return flat

    @property
    def std_scale(self) -> float:
        """The scale of g's logits in the evaluation head."""
        return self.head.std_scale

    @property
    def rob_scale(self) -> float:
        """The scale of h's logits in the evaluation head."""
        return self.head.rob_scale

    def check_models(self, std: str | None, rob: str | None, canonical: Callable[[str], str] = str.strip) -> None:
        """Refuse base-model specs other than those the mixer was trained with, compared after ``canonical``."""
        for role, given in (("std", std), ("rob", rob)):
            stored = self.models.get(role)
            if given is not None and stored is not None and canonical(given) != canonical(stored):
                raise AsmixError(f"mixer in {self.directory} was trained with --{role} {stored}, not {given}")

    def check_pair(self, mixer: MixingNetwork, std: nn.Module, rob: nn.Module, x: torch.Tensor) -> None:
        """Before any work with ``mixer`` (read from this card) on g and h: their weights must be those it was trained
        with (``check_base_weights``), and one forward on ``x[:1]`` must fit (``MixingNetwork.check_forward``)."""
        self.check_base_weights(std, rob)
        try:
            mixer.check_forward(x[:1], std, rob)
        except AsmixError as error:
            raise AsmixError(f"mixer in {self.directory}: {error}") from error

    def check_base_weights(self, std: nn.Module, rob: nn.Module) -> None:
        """Refuse base models whose weights differ from those the mixer was trained with (``base_weights``),
        naming the model that differs; a card without them cannot be checked and is refused too (retrain it, or
        save it again with ``save_mixer(..., std=, rob=)``)."""
        stored = self.base_weights
        if not isinstance(stored, dict):
            raise AsmixError(
                f"mixer in {self.directory} records no base-model weight hashes (made by an older asmix): "
                f"cannot check it was trained with these models; retrain it with asmix train-mixer"
            )
        differing = differing_models(stored, base_weights(std, rob))
        if differing:
            raise AsmixError(
                f"mixer in {self.directory} was trained with other weights for {describe_roles(differing)} "
                f"(sha256 {stored.get(differing[0], 'none')[:12]}...): load the models it was trained with"
            )


def load_mixer(
    directory: str | Path,
    *,
    std: str | None = None,
    rob: str | None = None,
    std_model: nn.Module | None = None,
    rob_model: nn.Module | None = None,
    canonical: Callable[[str], str] = str.strip,
) -> tuple[MixingNetwork, MixerCard]:
    """Read a saved mixer (eval mode, on CPU) from a folder or ``hf:ORG/NAME`` (``resolve_mixer_dir``) and its
    card (``MixerCard.read``); the weights' names and shapes must be those of the card's architecture (compared
    before it is built) and every weight finite. If ``std``/``rob`` specs are given they must match the base models
    it was trained with, compared after ``canonical`` (pass ``asmix.models.canonical_spec`` to resolve aliases; the
    mixer layer does not import models), and if ``std_model``/``rob_model`` are given their weights must be the
    ones it was trained with (``MixerCard.check_base_weights``)."""
    directory = resolve_mixer_dir(directory)
    weights_path = directory / MIXER_WEIGHTS
    if not directory.is_dir():
        raise AsmixError(f"mixer directory not found: {directory}")
    card = MixerCard.read(directory)
    if not weights_path.is_file():
        raise AsmixError(f"mixer directory {directory} has no {weights_path.name} (train one with asmix train-mixer)")
    try:
        with torch.device("meta"):  # names and shapes without allocating a weight
            expected = {
                name: tuple(value.shape) for name, value in MixingNetwork(**card.architecture).state_dict().items()
            }
    except AsmixError as error:
        raise AsmixError(f"corrupt mixer config {directory / MIXER_CONFIG}: {error}") from error
    card.check_models(std, rob, canonical)
    state = _read_weights(weights_path, expected)
    mixer = MixingNetwork(**card.architecture)
    mixer.load_state_dict(state, strict=True)
    mixer.set_head(card.head)
    if std_model is not None and rob_model is not None:
        card.check_base_weights(std_model, rob_model)
    return mixer.eval(), card


def _read_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The tensors of ``mixer.safetensors`` once its header lists exactly the ``expected`` names and shapes (read
    before any tensor is) and every tensor is finite; else one ``AsmixError`` naming the first difference."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        if missing or unexpected:
            raise AsmixError(
                f"its tensors do not match mixer.json's architecture (missing {', '.join(missing[:3]) or 'none'}, "
                f"unexpected {', '.join(unexpected[:3]) or 'none'})"
            )
        for name, shape in expected.items():
            if shapes[name] != shape:
                raise AsmixError(f"tensor {name} has shape {shapes[name]}, mixer.json's architecture gives {shape}")
        state = load_file(str(path))
        check_finite_tensors(state)
    except Exception as error:  # safetensors' own errors, I/O, and the checks above
        raise AsmixError(f"corrupt mixer weights {path}: {first_line(error)}") from error
    return state
