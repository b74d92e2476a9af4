"""Feature taps; the mixing network alpha_theta(x) of Section 4.3 (Figure 3, Appendix D.1), which reads upstream and
middle feature maps of both frozen base models captured in their one forward pass (docs/DESIGN.md); and a trained
mixer's files and card."""

from __future__ import annotations

import json
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from asmix.checks import check_choice
from asmix.errors import AsmixError, first_line
from asmix.identity import base_weights, describe_roles, differing_models
from asmix.io import atomic_write, atomic_write_json
from asmix.mixing import EvaluationHead, MixParts

MIXER_WEIGHTS = "mixer.safetensors"
MIXER_CONFIG = "mixer.json"
MIXER_FORMAT = "asmix-mixer"
MIXER_FORMAT_VERSION = 3

DEFAULT_TAPS: dict[str, tuple[str, str]] = {
    "DemoCNN": ("layer1", "layer2"),
    "ResNet": ("layer1", "layer2"),
    "ResNetV2": ("stages.0", "stages.1"),
    "WideResNet": ("block1", "block2"),
    "DMWideResNet": ("layer.0", "layer.1"),
    "DMPreActResNet": ("layer_0", "layer_1"),
}
"""Architecture class name -> (upstream, middle) module names (relative to the unwrapped network)."""

FALLBACK_TAPS: tuple[tuple[str, str], ...] = (
    ("layer1", "layer2"),
    ("stages.0", "stages.1"),
    ("block1", "block2"),
    ("layer.0", "layer.1"),
    ("layers.0", "layers.1"),
)
"""Name patterns tried, in order, for architectures not in ``DEFAULT_TAPS``."""

Features = tuple[torch.Tensor, ...]
"""(upstream, middle) feature maps of one base model; empty for g when the mixer reads h alone."""

MixerInputs = Literal["both", "rob", "rob-logits"]
"""What the mixer reads: both base models' feature maps (the paper); h's alone ("rob": features an attack
within the threat model moves little, so alpha cannot be pushed down through g's fragile features); or h's
sorted log-probabilities ("rob-logits": its confidence, which Lemma 3.2 ties to its robustness)."""

CONFIDENCE_TOP_K = 10
"""How many of h's sorted log-probabilities a "rob-logits" mixer reads (padded for fewer classes)."""
LOG_PROB_FLOOR = -30.0
"""Log-probabilities below this are clamped, so the mixer's input stays bounded."""


def tap_root(model: nn.Module) -> nn.Module:
    """The network whose layers the taps name: the model itself, or the one an adapter wraps (a module
    with ``wrapped``, the network, and ``prepare(x)``, its input; its forward is ``wrapped(prepare(x))``)."""
    while isinstance(getattr(model, "wrapped", None), nn.Module):
        model = model.wrapped
    return model


def _network_input(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The tap root and what it receives for ``x`` (each adapter's ``prepare`` applied in turn)."""
    while isinstance(getattr(model, "wrapped", None), nn.Module):
        x = model.prepare(x)
        model = model.wrapped
    return model, x


def _feature_info(root: nn.Module) -> list[dict]:
    """timm's per-stage feature records (module name, channels); empty for other networks."""
    info = getattr(root, "feature_info", None)
    return [entry for entry in info if isinstance(entry, dict) and "module" in entry] if isinstance(info, list) else []


def candidate_layers(model: nn.Module, max_depth: int = 2, limit: int = 30) -> list[str]:
    """Module names a user could pass as taps: a timm model's ``feature_info`` stages, else non-leaf
    modules up to ``max_depth`` dots deep."""
    listed = [entry["module"] for entry in _feature_info(tap_root(model))]
    if listed:
        return listed[:limit]
    names = [
        name
        for name, module in tap_root(model).named_modules()
        if name and name.count(".") < max_depth and any(True for _ in module.children())
    ]
    return names[:limit]


def default_layers(model: nn.Module) -> tuple[str, str]:
    """The (upstream, middle) taps of a known architecture; an AsmixError listing candidates if none."""
    root = tap_root(model)
    names = dict(root.named_modules())
    known = DEFAULT_TAPS.get(type(root).__name__)
    listed = [entry["module"] for entry in _feature_info(root)]
    staged = ((listed[max(0, len(listed) // 4 - 1)], listed[max(1, len(listed) // 2 - 1)]),) if len(listed) >= 2 else ()
    for pair in ((known,) if known else ()) + staged + FALLBACK_TAPS:
        if all(name in names for name in pair):
            return pair
    raise AsmixError(
        f"no default feature taps for {type(root).__name__}: pass --std-layers/--rob-layers UPSTREAM,MIDDLE "
        f"(candidates: {', '.join(candidate_layers(model)) or 'none'})"
    )


def parse_layers(text: str | Sequence[str] | None) -> tuple[str, str] | None:
    """``"layer1,layer2"`` (or a 2-sequence) -> ("layer1", "layer2"); None stays None (use defaults)."""
    if text is None:
        return None
    parts = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    if len(parts) != 2:
        raise AsmixError(f"feature taps must be two module names UPSTREAM,MIDDLE, got {text!r}")
    return parts[0], parts[1]


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> tuple[str, str]:
    """Check that the named taps exist in ``model`` (or use its defaults)."""
    layers = default_layers(model) if layers is None else parse_layers(layers)
    for name in layers:
        _find_module(model, name)
    return layers


def _find_module(model: nn.Module, name: str) -> nn.Module:
    for root in (tap_root(model), model):
        try:
            return root.get_submodule(name)
        except AttributeError:
            continue
    raise AsmixError(
        f"{type(tap_root(model)).__name__} has no module {name!r} to tap "
        f"(candidates: {', '.join(candidate_layers(model)) or 'none'})"
    )


@contextmanager
def capture_features(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of ``model`` stores the outputs of ``layers`` in the yielded
    dict (by name). Hooks are removed on exit, so the model is left as it was."""
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module, inputs, output):
            captured[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    handles = [_find_module(model, name).register_forward_hook(hook_for(name)) for name in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_with_features(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, Features]:
    """One forward of ``model``: its logits and the (upstream, middle) feature maps, (N, C, H, W).

    Taps a timm model lists in ``feature_info`` come from ``forward_intermediates(output_fmt='NCHW')``
    followed by ``forward_head`` (the same single pass); others from hooks, refused unless channels-first."""
    root, x_root = _network_input(model, x)
    indices = _intermediate_indices(model, root, x, x_root, layers)
    hooked = [name for name in layers if name not in indices]
    with capture_features(model, hooked) as captured:
        if indices:
            wanted = sorted(set(indices.values()))
            final, intermediates = root.forward_intermediates(x_root, indices=wanted, output_fmt="NCHW")
            logits = root.forward_head(final)
            by_index = dict(zip(wanted, intermediates))
            captured.update({name: by_index[index] for name, index in indices.items()})
        else:
            logits = model(x)
    missing = [name for name in layers if name not in captured]
    if missing:
        raise AsmixError(f"module(s) {', '.join(missing)} did not run in the forward pass of {type(root).__name__}")
    features = tuple(captured[name] for name in layers)
    for name in hooked:
        check_layout(model, name, captured[name])
    return logits, features


def check_layout(model: nn.Module, name: str, feature: torch.Tensor) -> None:
    """Refuse a hooked tap that is not a channels-first map (N, C, H, W): a token sequence, or a
    channels-last map (timm's Swin stages), whose last dim holds the module's known channel count."""
    root = tap_root(model)
    listed = ", ".join(candidate_layers(model)) or "none"
    if not isinstance(feature, torch.Tensor) or feature.ndim != 4:
        raise AsmixError(
            f"tap {name!r} must output a feature map (N, C, H, W), got "
            f"{tuple(getattr(feature, 'shape', ())) or type(feature).__name__}; tap one of: {listed}"
        )
    channels = _known_channels(root, name, _find_module(model, name))
    if channels is not None and feature.shape[1] != channels and feature.shape[-1] == channels:
        raise AsmixError(
            f"tap {name!r} of {type(root).__name__} outputs channels-last maps {tuple(feature.shape)} "
            f"({channels} channels in the last dim); the mixer needs (N, C, H, W): tap one of: {listed}"
        )


def _known_channels(root: nn.Module, name: str, module: nn.Module) -> int | None:
    """A tap's output channels: timm's ``feature_info``, else the last conv/linear/norm layer inside it."""
    for entry in _feature_info(root):
        if entry["module"] == name and "num_chs" in entry:
            return int(entry["num_chs"])
    channels = None
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.Linear):
            channels = layer.out_features
        elif isinstance(layer, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            channels = layer.num_features if hasattr(layer, "num_features") else layer.num_channels
        elif isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) == 1:
            channels = layer.normalized_shape[0]
    return channels


_INTERMEDIATES: "weakref.WeakKeyDictionary[nn.Module, dict[str, int]]" = weakref.WeakKeyDictionary()
"""Per tap root: which ``forward_intermediates`` index yields each ``feature_info`` module (found once)."""


def _intermediate_indices(
    model: nn.Module, root: nn.Module, x: torch.Tensor, x_root: torch.Tensor, layers: Sequence[str]
) -> dict[str, int]:
    """The taps ``forward_intermediates`` serves, with their indices; empty where the network has no
    such method (or its head does not reproduce the model's logits). Indices differ from positions in
    ``feature_info`` (ConvNeXt counts its stem), so the first call matches them by value on one example."""
    listed = [entry["module"] for entry in _feature_info(root)]
    if (
        not listed
        or not callable(getattr(root, "forward_intermediates", None))
        or not callable(getattr(root, "forward_head", None))
    ):
        return {}
    if root not in _INTERMEDIATES:
        _INTERMEDIATES[root] = _match_intermediates(model, root, x[:1].detach(), x_root[:1].detach(), listed)
    found = _INTERMEDIATES[root]
    return {name: found[name] for name in layers if name in found}


def _match_intermediates(
    model: nn.Module, root: nn.Module, x: torch.Tensor, x_root: torch.Tensor, listed: list[str]
) -> dict[str, int]:
    with torch.no_grad(), capture_features(root, listed) as hooked:
        try:
            final, intermediates = root.forward_intermediates(x_root, indices=None, output_fmt="NCHW")
            logits = root.forward_head(final)
        except (TypeError, AssertionError, NotImplementedError, RuntimeError):
            return {}
        if not torch.allclose(logits, model(x), rtol=1e-4, atol=1e-5):
            return {}
    found = {}
    for name in listed:
        for index, intermediate in enumerate(intermediates):
            if name in hooked and _same_map(hooked[name], intermediate):
                found[name] = index
                break
    return found


def _same_map(output: torch.Tensor, nchw: torch.Tensor) -> bool:
    """Whether a module's output (NCHW, NHWC, or tokens (N, L, C) with the map last) holds ``nchw``."""
    if not isinstance(output, torch.Tensor) or nchw.ndim != 4:
        return False
    batch, channels, height, width = nchw.shape
    if output.ndim == 4:
        views = [output, output.permute(0, 3, 1, 2)]
    elif output.ndim == 3 and output.shape[1] >= height * width and output.shape[2] == channels:
        views = [
            output[:, output.shape[1] - height * width :].reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        ]
    else:
        return False
    return any(view.shape == nchw.shape and torch.allclose(view, nchw, rtol=1e-4, atol=1e-5) for view in views)


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span all ranks of a process group (gloo or nccl).

    ``nn.SyncBatchNorm`` refuses CPU tensors; this one uses autograd-aware all-reduces, so a DDP run
    normalises over the global batch exactly as a single process does. Without a process group it
    is a plain batch norm (same formula, so 1-process and N-process runs compute alike).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0] + list(range(2, x.ndim))
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = x.sum(dims)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            with warnings.catch_warnings():  # deprecated in favour of a private API; still the public one
                warnings.simplefilter("ignore", FutureWarning)
                from torch.distributed.nn.functional import all_reduce

                count = all_reduce(count)
                total = all_reduce(total)
                mean = total / count
                square = all_reduce(((x - mean.view(shape)) ** 2).sum(dims))
        else:
            mean = total / count
            square = ((x - mean.view(shape)) ** 2).sum(dims)
        var = square / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
                self.num_batches_tracked.add_(1)
        out = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.ndim not in (2, 4):
            raise ValueError(f"expected 2-d or 4-d input, got {x.ndim}-d")


class PreActBlock(nn.Module):
    """Pre-activation ResNet block ("RNB" of Figure 3): BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = SyncedBatchNorm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = SyncedBatchNorm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        *(
            PreActBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(blocks)
        )
    )


def resize_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a feature map to ``size``: average pooling to shrink, bilinear to grow."""
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


class MixingNetwork(nn.Module):
    """alpha_theta(x) (Section 4.3, Fig. 3/10), an ``AlphaSource``: concat(upstream g, h) -> ResNet stage (stride 2),
    plus concat(middle g, h) -> 1x1 conv; ``stages`` more ResNet stages; average pool; linear -> z; 1-d BN without
    affine; alpha = alpha_min + (alpha_max - alpha_min) * sigmoid(scale * BN(z)), the range in eval mode only (training
    and ``full_range()``: (0, 1), App. D.1). ``std_channels``, ``rob_channels``: the taps' channels."""

    def __init__(
        self,
        std_channels: Sequence[int],
        rob_channels: Sequence[int],
        *,
        std_layers: Sequence[str] = ("layer1", "layer2"),
        rob_layers: Sequence[str] = ("layer1", "layer2"),
        width: int | None = None,
        blocks: int = 2,
        stages: int = 2,
        scale: float = 2.0,
        alpha_range: Sequence[float] = (0.0, 1.0),
        alpha_bias: float = 0.0,
        clamp_std: float = 0.6,
        bn_momentum: float = 0.01,
        inputs: MixerInputs = "both",
    ) -> None:
        super().__init__()
        check_choice(inputs, MixerInputs, "mixer inputs")
        self.inputs = inputs
        if inputs != "both":
            std_channels, std_layers = (0, 0), ()
        if inputs == "rob-logits":
            rob_channels, rob_layers = (0, 0), ()
        self.std_channels = tuple(int(c) for c in std_channels)
        self.rob_channels = tuple(int(c) for c in rob_channels)
        self.std_layers = tuple(std_layers)
        self.rob_layers = tuple(rob_layers)
        if len(self.std_channels) != 2 or len(self.rob_channels) != 2 or len(self.rob_layers) not in (0, 2):
            raise AsmixError("std_channels and rob_channels must be (upstream, middle) pairs")
        up_channels = self.std_channels[0] + self.rob_channels[0]
        mid_channels = self.std_channels[1] + self.rob_channels[1]
        self.width = int(width) if width else max(16, mid_channels // 2)
        if blocks < 1 or stages < 0 or self.width < 1:
            raise AsmixError(
                f"mixer needs blocks >= 1, stages >= 0 and width >= 1, got {blocks}, {stages}, {self.width}"
            )
        self.blocks, self.stages = int(blocks), int(stages)
        self.scale = float(scale)
        if clamp_std < 0 or not 0 < bn_momentum <= 1:
            raise AsmixError(f"mixer needs clamp_std >= 0 and bn_momentum in (0, 1], got {clamp_std}, {bn_momentum}")
        self.clamp_std, self.bn_momentum = float(clamp_std), float(bn_momentum)
        self.set_alpha_range(*alpha_range)
        self.set_alpha_bias(alpha_bias)
        if inputs == "rob-logits":
            self.confidence = nn.Sequential(
                nn.Linear(CONFIDENCE_TOP_K, self.width), nn.ReLU(), nn.Linear(self.width, self.width), nn.ReLU()
            )
        else:
            self.upstream = _stage(up_channels, self.width, self.blocks, stride=2)
            self.middle = nn.Conv2d(mid_channels, self.width, 1, bias=False)
            self.downstream = nn.Sequential(
                *(_stage(self.width, self.width, self.blocks, stride=2) for _ in range(self.stages))
            )
            self.head_norm = SyncedBatchNorm(self.width)
        self.linear = nn.Linear(self.width, 1, bias=False)  # a bias would be removed by the BN below
        self.output_norm = SyncedBatchNorm(1, affine=False, momentum=self.bn_momentum)
        self._full_range = False

    @classmethod
    def build(
        cls,
        std: nn.Module,
        rob: nn.Module,
        x_probe: torch.Tensor,
        *,
        std_layers: Sequence[str] | str | None = None,
        rob_layers: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> "MixingNetwork":
        """A mixing network sized for this (g, h) pair: taps resolved (defaults where None) and their
        channel counts read from one probe forward of each model."""
        inputs = kwargs.get("inputs", "both")
        std_layers = resolve_layers(std, parse_layers(std_layers)) if inputs == "both" else ()
        rob_layers = resolve_layers(rob, parse_layers(rob_layers)) if inputs != "rob-logits" else ()
        with torch.no_grad():
            _, std_features = run_with_features(std, x_probe[:1], std_layers)
            _, rob_features = run_with_features(rob, x_probe[:1], rob_layers)
        return cls(
            [f.shape[1] for f in std_features] or [0, 0],
            [f.shape[1] for f in rob_features] or [0, 0],
            std_layers=std_layers,
            rob_layers=rob_layers,
            **kwargs,
        )

    def set_alpha_range(self, alpha_min: float, alpha_max: float) -> None:
        """The evaluation range (alpha_min, alpha_max) within [0, 1] (App. D.1)."""
        alpha_min, alpha_max = float(alpha_min), float(alpha_max)
        if not 0.0 <= alpha_min <= alpha_max <= 1.0:
            raise AsmixError(
                f"alpha range must satisfy 0 <= alpha_min <= alpha_max <= 1, got ({alpha_min}, {alpha_max})"
            )
        self.alpha_min, self.alpha_max = alpha_min, alpha_max

    def set_alpha_bias(self, alpha_bias: float) -> None:
        """The evaluation bias added to the sigmoid input (App. D.1 code: 1.05-1.3 on CIFAR); training uses 0."""
        alpha_bias = float(alpha_bias)
        if not math.isfinite(alpha_bias):
            raise AsmixError(f"alpha bias must be a finite number, got {alpha_bias}")
        self.alpha_bias = alpha_bias

    def set_head(self, head: EvaluationHead) -> None:
        """The range and bias of ``head`` (its logit scales belong to the mix: ``MixSettings``)."""
        self.set_alpha_range(head.alpha_min, head.alpha_max)
        self.set_alpha_bias(head.alpha_bias)

    def head(self, std_scale: float = 1.0, rob_scale: float = 1.0) -> EvaluationHead:
        """This network's range and bias with the logit scales it is mixed with."""
        return EvaluationHead(self.alpha_min, self.alpha_max, self.alpha_bias, std_scale, rob_scale)

    @property
    def evaluation_head(self) -> bool:
        """True where the evaluation range and bias apply (eval mode outside ``full_range``)."""
        return not self.training and not self._full_range

    @contextmanager
    def full_range(self) -> Iterator["MixingNetwork"]:
        """Within the block alpha uses the training head, range (0, 1) and bias 0, even in eval mode
        (training-time attacks)."""
        previous, self._full_range = self._full_range, True
        try:
            yield self
        finally:
            self._full_range = previous

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in mixer.json)."""
        return {
            "std_channels": list(self.std_channels),
            "rob_channels": list(self.rob_channels),
            "std_layers": list(self.std_layers),
            "rob_layers": list(self.rob_layers),
            "width": self.width,
            "blocks": self.blocks,
            "stages": self.stages,
            "scale": self.scale,
            "alpha_range": [self.alpha_min, self.alpha_max],
            "alpha_bias": self.alpha_bias,
            "clamp_std": self.clamp_std,
            "bn_momentum": self.bn_momentum,
            "inputs": self.inputs,
        }

    def features(
        self, x: torch.Tensor, std: nn.Module, rob: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor, Features, Features]:
        """One forward of g and of h: (std_logits, rob_logits, std features, rob features)."""
        std_logits, std_features = run_with_features(std, x, self.std_layers)
        rob_logits, rob_features = run_with_features(rob, x, self.rob_layers)
        if self.inputs == "rob-logits":
            rob_features = (rob_logits,)
        return std_logits, rob_logits, std_features, rob_features

    def forward(self, std_features: Features, rob_features: Features) -> torch.Tensor:
        """The bias-free score scale * BN(z) per example, shape (N,); in training z is first clamped to
        its batch mean +- ``clamp_std`` standard deviations, as the paper's code does, so that outliers do
        not dominate the batch statistics."""
        if self.inputs == "rob-logits":
            out = self.confidence(sorted_log_probs(rob_features[0]))
        else:
            ups = [pair[0] for pair in (std_features, rob_features) if pair]
            mids = [pair[1] for pair in (std_features, rob_features) if pair]
            up_size = tuple(min(sizes) for sizes in zip(*(up.shape[-2:] for up in ups)))
            out = self.upstream(torch.cat([resize_to(up, up_size) for up in ups], dim=1))
            size = tuple(out.shape[-2:])
            mid = torch.cat([resize_to(feature, size) for feature in mids], dim=1)
            out = self.downstream(out + self.middle(mid))
            out = F.relu(self.head_norm(out)).mean(dim=(2, 3))
        z = self.linear(out)
        if self.training and self.clamp_std > 0 and len(z) > 1:
            mean, std = _batch_mean_std(z.detach())
            z = torch.clamp(z, mean - self.clamp_std * std, mean + self.clamp_std * std)
        return self.scale * self.output_norm(z).reshape(-1)

    def alpha_logit(self, score: torch.Tensor) -> torch.Tensor:
        """The sigmoid input: ``score`` plus the evaluation bias where the evaluation head applies."""
        return score + self.alpha_bias if self.evaluation_head else score

    def alpha_from_logit(self, logit: torch.Tensor) -> torch.Tensor:
        """sigmoid(logit), mapped into (alpha_min, alpha_max) where the evaluation head applies."""
        alpha = torch.sigmoid(logit)
        if not self.evaluation_head:
            return alpha
        return self.alpha_min + (self.alpha_max - self.alpha_min) * alpha

    def run(self, x: torch.Tensor, std: nn.Module, rob: nn.Module) -> MixParts:
        """``AlphaSource.run``: each base model runs once; alpha (N,) and its pre-range logit."""
        std_logits, rob_logits, std_features, rob_features = self.features(x, std, rob)
        logit = self.alpha_logit(self(std_features, rob_features))
        return MixParts(std_logits, rob_logits, self.alpha_from_logit(logit), logit)


def sorted_log_probs(logits: torch.Tensor, k: int = CONFIDENCE_TOP_K) -> torch.Tensor:
    """The ``k`` largest log-probabilities of ``logits`` in decreasing order, clamped at ``LOG_PROB_FLOOR`` and
    padded with it where there are fewer than ``k`` classes: a bounded, label-free summary of confidence."""
    log_probs = F.log_softmax(logits.float(), dim=1).clamp(min=LOG_PROB_FLOOR)
    top = log_probs.topk(min(k, log_probs.shape[1]), dim=1).values
    return F.pad(top, (0, k - top.shape[1]), value=LOG_PROB_FLOOR)


def _batch_mean_std(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation of ``z`` over the global batch (all ranks under torchrun)."""
    stats = torch.stack((z.sum(), (z * z).sum(), torch.tensor(float(z.numel()), dtype=z.dtype, device=z.device)))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    total, squares, count = stats
    mean = total / count
    var = ((squares - count * mean * mean) / (count - 1).clamp_min(1)).clamp_min(0)
    return mean, var.sqrt()


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
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=True))
    except Exception as error:  # huggingface_hub raises several kinds for "not in the cache"
        raise AsmixError(
            f"mixer {text} is not in the local Hugging Face cache {HF_HUB_CACHE}: on a machine with "
            f"internet run `huggingface-cli download {repo_id}` and copy the cache here, or pass the "
            f"folder that holds mixer.json and mixer.safetensors ({type(error).__name__})"
        ) from error


CARD_AS_WRITTEN = ("base_weights", "n_train", "n_val", "data_fingerprint", "selection", "verdict", "provenance")
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
        """The card in ``directory/mixer.json``; a missing, unreadable or foreign file is one ``AsmixError``."""
        directory = Path(directory)
        path = directory / MIXER_CONFIG
        if not path.is_file():
            raise AsmixError(f"mixer directory {directory} has no {path.name} (train one with asmix train-mixer)")
        try:
            document = json.loads(path.read_text())
            if not isinstance(document, dict) or document.get("format") != MIXER_FORMAT:
                raise ValueError("not an asmix mixer config")
            card = cls(
                directory=directory,
                version=int(document.get("version", 1)),
                models=dict(document.get("models") or {}),
                architecture=dict(document["architecture"]),
                training=dict(document.get("training") or {}),
                history=tuple(document.get("history") or ()),
                **{name: document.get(name) for name in CARD_AS_WRITTEN},
            )
            return replace(card, head=EvaluationHead.from_dict(document.get("head", {}), card.head_before_scales))
        except (ValueError, KeyError, TypeError, AsmixError) as error:
            raise AsmixError(f"corrupt mixer config {path}: {first_line(error)}") from error

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
    card; if ``std``/``rob`` specs are given they must match the base models it was trained with, compared after
    ``canonical`` (pass ``asmix.models.canonical_spec`` to resolve aliases; the mixer layer does not import
    models), and if ``std_model``/``rob_model`` are given their weights must be the ones it was trained with
    (``MixerCard.check_base_weights``)."""
    from safetensors.torch import load_file

    directory = resolve_mixer_dir(directory)
    weights_path = directory / MIXER_WEIGHTS
    if not directory.is_dir():
        raise AsmixError(f"mixer directory not found: {directory}")
    card = MixerCard.read(directory)
    if not weights_path.is_file():
        raise AsmixError(f"mixer directory {directory} has no {weights_path.name} (train one with asmix train-mixer)")
    try:
        mixer = MixingNetwork(**card.architecture)
    except (ValueError, TypeError) as error:
        raise AsmixError(f"corrupt mixer config {directory / MIXER_CONFIG}: {error}") from error
    card.check_models(std, rob, canonical)
    try:
        state = load_file(str(weights_path))
        mixer.load_state_dict(state, strict=True)
    except Exception as error:  # safetensors' own errors, shape/key mismatches, I/O
        raise AsmixError(f"corrupt mixer weights {weights_path}: {first_line(error)}") from error
    mixer.set_head(card.head)
    if std_model is not None and rob_model is not None:
        card.check_base_weights(std_model, rob_model)
    return mixer.eval(), card
