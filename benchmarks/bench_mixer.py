"""Cost of adaptive smoothing, measured side by side in one run.

1. Forward + backward (gradient w.r.t. the input, as an attack needs) of the adaptive mixed model
   h_alpha_theta divided by that of g plus that of h, on a timm ResNet-18 pair at 32x32 (goal <= 1.25).
2. Training throughput of ``train_mixer`` (clean images per second, each with its attacked copy)
   for settings A, B and C.

    python benchmarks/bench_mixer.py [--device cpu] [--batch-size 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from asmix.attacks.pgd import ThreatModel
from asmix.runtime import RunSettings


def _fwd_bwd_seconds(model, x: torch.Tensor, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        x_in = x.clone().requires_grad_(True)
        start = time.perf_counter()
        output = model(x_in)
        (grad,) = torch.autograd.grad(output.float().sum(), x_in)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def median_fwd_bwd(models: dict, x: torch.Tensor, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of a forward + backward pass of each named model on ``x``, after ``warmup`` passes each; the
    models take turns, so load changes hit all of them alike."""
    for model in models.values():
        _fwd_bwd_seconds(model, x, warmup)
    samples = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            samples[name] += _fwd_bwd_seconds(model, x, 1)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_overhead(device: torch.device, batch_size: int, repeats: int) -> None:
    import timm

    from asmix.mixer import MixingNetwork
    from asmix.mixing import MixedClassifier
    from asmix.models.adapters import InputAdapter

    torch.manual_seed(0)
    std = InputAdapter(timm.create_model("resnet18", pretrained=False, num_classes=10)).eval().to(device)
    rob = InputAdapter(timm.create_model("resnet18", pretrained=False, num_classes=10)).eval().to(device)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    mixer = MixingNetwork.build(std, rob, x).to(device).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    median = median_fwd_bwd({"g": std, "h": rob, "mixed": mixed}, x, repeats, warmup=2)
    parameters = sum(p.numel() for p in mixer.parameters())
    print(
        f"timm resnet18 pair, 32x32, batch {batch_size}, {device}, mixer width {mixer.width} ({parameters:,} "
        f"parameters)"
    )
    for name, seconds in median.items():
        print(f"  fwd+bwd {name:6s} {1000 * seconds:8.2f} ms")
    print(f"  ratio mixed / (g + h) = {median['mixed'] / (median['g'] + median['h']):.3f}   (goal <= 1.25)")


def bench_training(device: torch.device, batch_size: int, steps: int) -> None:
    from asmix.data import load_data
    from asmix.experiments.train import TrainConfig, train_mixer
    from asmix.models import load_model

    std = load_model("demo-std").to(device)
    try:
        rob = load_model("demo-rob").to(device)
    except Exception:  # demo-rob weights not shipped yet: measure with g in both roles
        rob = load_model("demo-std").to(device)
    x, y = load_data("demo", split="train")
    n_train = batch_size * (steps + 1)
    print(
        f"train_mixer throughput on the demo pair, batch {batch_size}, PGD steps 5..10 (A/B), "
        f"C: 1 + 2 APGD copies of chi-square(10) iterations, {device}"
    )
    for setting in ("A", "B", "C"):
        stamps: list[float] = []
        config = TrainConfig(
            setting=setting,
            epochs=1,
            steps_range=(5, 10),
            target_classes=2,
            apgd_steps_df=10,
            threat=ThreatModel(steps=0),
            run=RunSettings(batch_size=batch_size),
        )
        train_mixer(
            std,
            rob,
            x[:n_train],
            y[:n_train],
            x[-batch_size:],
            y[-batch_size:],
            config,
            device=device,
            judge_mixer=False,
            on_step=lambda epoch, step, stamps=stamps: stamps.append(time.perf_counter()),
        )
        rate = batch_size * (len(stamps) - 1) / (stamps[-1] - stamps[0])
        print(f"  setting {setting}: {rate:8.1f} clean images/s (+ as many attacked)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    bench_overhead(device, args.batch_size, args.repeats)
    if not args.skip_training:
        bench_training(device, args.batch_size, args.train_steps)


if __name__ == "__main__":
    main()
