"""The paper's CIFAR-10 pair at full size (BiT-R152x2 at 128 px as g, RobustBench's WRN-70-16 of
Wang2023Better_WRN-70-16 as h), with random weights loaded through asmix's own loaders (issue 21, item 4).

Measures, on one device:
1. train-mixer throughput (clean images/s, each with its attacked copies; setting C with the defaults) in fp32 and
   with bf16 autocast of the frozen base models (goal: bf16 >= 1.8x fp32);
2. peak memory of each phase (CUDA: ``max_memory_allocated``; CPU: the process's peak resident set);
3. forward + backward (the input gradient an attack needs) of the adaptive mix divided by that of g plus h (goal
   <= 1.10);
4. standard AutoAttack images/s on the mix. With random weights the labels are the mix's own predictions, so every
   image starts robust; random networks break faster than trained ones, so read this as an upper bound on speed.

    python benchmarks/bench_paper_pair.py --device cuda [--batch-size 64] [--train-steps 4] [--aa-images 64]
    python benchmarks/bench_paper_pair.py --device cpu --batch-size 2 --repeats 1 --train-steps 1 \\
        --apgd-steps-df 1 --aa-images 0
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mixer import median_fwd_bwd  # noqa: E402

STD, ROB = "bit-r152", "Wang2023Better_WRN-70-16"


def random_pair(folder: Path, device: torch.device):
    """g and h through ``asmix.models.load_model`` with random-weight state dicts written to ``folder``."""
    import timm
    from safetensors.torch import save_file

    from asmix.compat import import_robustbench
    from asmix.models import load_model

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    std = timm.create_model("resnetv2_152x2_bit", pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in std.state_dict().items()}, folder / "g.safetensors")
    rob = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")][ROB]["model"]()
    save_file({k: v.contiguous() for k, v in rob.state_dict().items()}, folder / "h.safetensors")
    del std, rob
    std = load_model(STD, dataset="cifar10", weights=folder / "g.safetensors").to(device)
    rob = load_model(ROB, dataset="cifar10", weights=folder / "h.safetensors").to(device)
    return std, rob


class PeakMemory:
    """Peak memory of a phase in GiB: CUDA's allocator peak since the phase began, or the process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux; never reset


def bench_training(
    std, rob, device: torch.device, batch_size: int, steps: int, apgd_steps_df: int | None
) -> dict[bool, float]:
    from asmix.attacks.pgd import ThreatModel
    from asmix.experiments.train import TrainConfig, train_mixer
    from asmix.runtime import RunSettings

    x = torch.rand(batch_size * (steps + 1), 3, 32, 32)
    y = torch.randint(0, 10, (len(x),))
    rates = {}
    for bf16 in (False, True):
        stamps: list[float] = []
        config = TrainConfig(
            epochs=1, bf16=bf16, threat=ThreatModel(eps=8 / 255, steps=0), run=RunSettings(batch_size=batch_size)
        )
        if apgd_steps_df is not None:
            config = replace(config, apgd_steps_df=apgd_steps_df)
        with PeakMemory(device) as memory:
            train_mixer(
                std,
                rob,
                x,
                y,
                x[:batch_size],
                y[:batch_size],
                config,
                device=device,
                judge_mixer=False,
                on_step=lambda epoch, step, stamps=stamps: stamps.append(time.perf_counter()),
            )
        rates[bf16] = batch_size * (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        print(
            f"  train-mixer {'bf16' if bf16 else 'fp32'}: {rates[bf16]:8.2f} clean images/s, peak {memory.gib:.1f} GiB"
        )
    print(f"  bf16 / fp32 = {rates[True] / rates[False]:.2f}   (goal >= 1.8)")
    return rates


def bench_overhead(std, rob, device: torch.device, batch_size: int, repeats: int) -> float:
    from asmix.mixer import MixingNetwork
    from asmix.mixing import MixedClassifier

    x = torch.rand(batch_size, 3, 32, 32, device=device)
    mixer = MixingNetwork.build(std, rob, x).to(device).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    with PeakMemory(device) as memory:
        median = median_fwd_bwd({"g": std, "h": rob, "mixed": mixed}, x, repeats)
    for name, seconds in median.items():
        print(f"  fwd+bwd {name:6s} {1000 * seconds:9.1f} ms (batch {batch_size})")
    ratio = median["mixed"] / (median["g"] + median["h"])
    print(f"  ratio mixed / (g + h) = {ratio:.3f}   (goal <= 1.10), peak {memory.gib:.1f} GiB")
    return ratio


def bench_autoattack(std, rob, device: torch.device, n_images: int) -> float:
    from asmix.attacks.autoattack import standard_autoattack
    from asmix.mixing import MixedClassifier

    mixed = MixedClassifier(std, rob, alpha=0.8).eval()
    x = torch.rand(n_images, 3, 32, 32, device=device)
    with torch.no_grad():
        y = mixed(x).argmax(1)  # every image starts robust
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        run = standard_autoattack(mixed, x, y, eps=8 / 255)
        seconds = time.perf_counter() - start
    robust = int(run.robust[:, -1].sum())
    print(
        f"  standard AutoAttack on the mix (alpha 0.8): {n_images / seconds:.2f} images/s, {robust}/{n_images} left "
        f"robust (random weights: an upper bound on speed), peak {memory.gib:.1f} GiB"
    )
    return n_images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--aa-images", type=int, default=64)
    parser.add_argument("--apgd-steps-df", type=int, default=None, help="training attack steps (default: asmix's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"paper pair {STD} (128 px) + {ROB}, random weights, {name}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        std, rob = random_pair(Path(folder), device)
    bench_overhead(std, rob, device, args.batch_size, args.repeats)
    bench_training(std, rob, device, args.batch_size, args.train_steps, args.apgd_steps_df)
    if args.aa_images:
        bench_autoattack(std, rob, device, args.aa_images)


if __name__ == "__main__":
    main()
