"""Feature taps: the (upstream, middle) feature maps of a frozen base model, named by module and captured in its
one normal forward pass, channels first (N, C, H, W) (docs/DESIGN.md, "Mixing network")."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from asmix.errors import AsmixError

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
