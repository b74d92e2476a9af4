"""Overhead of the mixed classifier: forward+backward time of h_alpha at a fixed alpha divided by
the sum of the forward+backward times of g and h alone (timm resnet18 pair, random weights, 32x32).

Goal: <= 1.05. Timings are interleaved and the median of repeats is used, so both sides see the
same machine load. Run: python benchmarks/bench_mixing.py [--device cpu] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from asmix import MixedClassifier
from asmix.runtime import resolve_device


def forward_backward_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Wall time of one forward and backward pass to the input (what an attack step costs)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    x_adv = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    torch.autograd.grad(loss, x_adv)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    std = timm.create_model("resnet18", pretrained=False, num_classes=10).to(device).eval()
    rob = timm.create_model("resnet18", pretrained=False, num_classes=10).to(device).eval()
    mixed = MixedClassifier(std, rob, alpha=0.5)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    for model in (std, rob, mixed):  # warm-up
        forward_backward_seconds(model, x, y)
    times = {"std": [], "rob": [], "mixed": []}
    for _ in range(args.repeats):
        for name, model in (("std", std), ("rob", rob), ("mixed", mixed)):
            times[name].append(forward_backward_seconds(model, x, y))
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["mixed"] / (median["std"] + median["rob"])
    print(f"device {device}, batch {args.batch_size}, {args.repeats} interleaved repeats (median)")
    for name, seconds in median.items():
        print(f"  {name:>5}: {1000 * seconds:8.2f} ms forward+backward")
    print(f"ratio mixed / (g + h) = {ratio:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
