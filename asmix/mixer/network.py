"""The mixing network alpha_theta(x) of Section 4.3 (Figure 3, Appendix D.1): it reads upstream and middle feature
maps of both frozen base models (``asmix.mixer.taps``) and gives alpha per input."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from asmix.checks import check_choice
from asmix.errors import AsmixError
from asmix.mixer.taps import Features, parse_layers, resolve_layers, run_with_features
from asmix.mixing import EvaluationHead, MixParts

MixerInputs = Literal["both", "rob", "rob-logits"]
"""What the mixer reads: both base models' feature maps (the paper); h's alone ("rob": features an attack
within the threat model moves little, so alpha cannot be pushed down through g's fragile features); or h's
sorted log-probabilities ("rob-logits": its confidence, which Lemma 3.2 ties to its robustness)."""

CONFIDENCE_TOP_K = 10
"""How many of h's sorted log-probabilities a "rob-logits" mixer reads (padded for fewer classes)."""
LOG_PROB_FLOOR = -30.0
"""Log-probabilities below this are clamped, so the mixer's input stays bounded."""

MAX_WIDTH, MAX_BLOCKS, MAX_STAGES, MAX_CHANNELS = 4096, 16, 16, 16384
"""Bounds on a mixing network's size, generous for real base models (the paper's pair taps 256 to 1024 channels; the
default width is half the middle taps' channels, 2 blocks, 2 stages); a mixer.json beyond them is refused unbuilt."""


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
        if not all(0 <= channels <= MAX_CHANNELS for channels in self.std_channels + self.rob_channels):
            raise AsmixError(
                f"mixer taps need 0 to {MAX_CHANNELS} channels, got {self.std_channels + self.rob_channels}"
            )
        self.width = int(width) if width else min(MAX_WIDTH, max(16, mid_channels // 2))
        if not (1 <= blocks <= MAX_BLOCKS and 0 <= stages <= MAX_STAGES and 1 <= self.width <= MAX_WIDTH):
            raise AsmixError(
                f"mixer needs 1 <= blocks <= {MAX_BLOCKS}, 0 <= stages <= {MAX_STAGES} and 1 <= width <= {MAX_WIDTH}, "
                f"got {blocks}, {stages}, {self.width}"
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

    def check_forward(self, x: torch.Tensor, std: nn.Module, rob: nn.Module) -> None:
        """Refuse a network that does not fit g and h: one forward on ``x`` (one example is enough) must find taps with
        the channels it reads, and give finite logits and an alpha within its range."""
        with torch.no_grad():
            std_logits, rob_logits, std_features, rob_features = self.features(x, std, rob)
            taps = [("g", *tap) for tap in zip(self.std_layers, self.std_channels, std_features)]
            taps += [("h", *tap) for tap in zip(self.rob_layers, self.rob_channels, rob_features)]
            for role, layer, channels, feature in taps:
                if feature.shape[1] != channels:
                    raise AsmixError(
                        f"{role}'s tap {layer} gives {feature.shape[1]} channels, the mixer reads {channels}: "
                        "it was built for other base models or taps"
                    )
            logit = self.alpha_logit(self(std_features, rob_features))
            alpha = self.alpha_from_logit(logit)
        low, high = (self.alpha_min, self.alpha_max) if self.evaluation_head else (0.0, 1.0)
        if not all(torch.isfinite(t).all() for t in (std_logits, rob_logits, logit)):
            raise AsmixError("the mixer gives non-finite logits on one input")
        if not bool(((alpha >= low) & (alpha <= high)).all()):
            raise AsmixError(
                f"the mixer gives alpha {alpha.flatten()[0].item():g} outside its range [{low:g}, {high:g}]"
            )

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
