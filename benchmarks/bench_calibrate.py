"""Cost of calibrate's search against one forward pass of g and h over the calibration set.

The search (the fixed alpha, and MixedNUTS's 8x8x8 grid plus Nelder-Mead) reads cached logits only.
This script times, side by side on the same images, (a) one forward pass of g and h over N
calibration images, (b) the linear search and (c) the MixedNUTS search on their cached logits, and
(d) what re-running the base models per MixedNUTS candidate would cost (candidates x (a)).
The attacked logits are stand-ins (clean logits shifted toward the runner-up), as the attack's cost
is the same whatever is searched. Goal: (b) + (c) a small multiple of (a), far below (d).
Run: python benchmarks/bench_calibrate.py [--n 500] [--device cpu] [--std demo-std --rob demo-rob]
"""

from __future__ import annotations

import argparse
import time

import torch

from asmix.calibration import CachedLogits
from asmix.data import load_data
from asmix.experiments.calibrate import CalibrateConfig, choose_linear, choose_nuts, one_thread
from asmix.models import load_model
from asmix.runtime import predict_logits, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--std", default="demo-std")
    parser.add_argument("--rob", default="demo-rob")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--target", type=float, default=0.99)
    args = parser.parse_args()
    device = resolve_device(args.device)
    x, y = load_data(args.dataset, n_examples=args.n)
    std = load_model(args.std, dataset=args.dataset).to(device).eval()
    rob = load_model(args.rob, dataset=args.dataset).to(device).eval()
    predict_logits(std, x[:8], batch_size=250, device=device)  # warm-up
    start = time.perf_counter()
    std_logits = predict_logits(std, x, batch_size=250, device=device)
    rob_logits = predict_logits(rob, x, batch_size=250, device=device)
    forward = time.perf_counter() - start
    runner_up = rob_logits.scatter(1, y[:, None], float("-inf")).max(1).values
    attacked = rob_logits.clone()
    attacked[torch.arange(len(y)), y] = (rob_logits.gather(1, y[:, None])[:, 0] + runner_up) / 2 + 0.3
    cached = CachedLogits(std_logits.double(), rob_logits.double(), attacked.double(), y)
    config = CalibrateConfig(target_clean_acc=args.target)
    with one_thread():
        linear, _ = choose_linear(cached, config)
        nuts, _ = choose_nuts(cached, config)
    candidates = nuts.details["maps_evaluated"]
    print(f"{len(x)} images, {args.std} / {args.rob}, device {device}")
    print(f"(a) forward pass of g and h:        {forward:8.3f} s")
    print(f"(b) linear search (exact in alpha): {linear.seconds:8.3f} s  = {linear.seconds / forward:6.2f} x (a)")
    print(f"(c) MixedNUTS search, {candidates} maps:  {nuts.seconds:8.3f} s  = {nuts.seconds / forward:6.2f} x (a)")
    print(
        f"(d) re-running g and h per map:     {candidates * forward:8.1f} s  = {candidates:6d} x (a)"
        f"  -> the cache saves {candidates * forward / (linear.seconds + nuts.seconds):.0f}x"
    )


if __name__ == "__main__":
    main()
