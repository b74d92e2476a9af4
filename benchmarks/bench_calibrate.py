"""Cost of calibrate's search against one forward pass of g and h over the calibration set.

The searches (the fixed alpha; MixedNUTS's 8x8x8 grid plus Nelder-Mead; a trained mixer's heads) read cached
logits only. This script times, side by side on the same images, (a) one forward pass of g and h over N
calibration images, (b) the linear search and (c) the MixedNUTS search on their cached logits, (d) what
re-running the base models per MixedNUTS candidate would cost (candidates x (a)); and for the mixer family
(e) the one forward pass of g, h and the mixer that caches its pool (the N clean images and the two attacked
copies), (f) scoring every head of the grid from that cache, and (g) re-running the pool per head.
The attacked inputs and logits are stand-ins (clean logits shifted toward the runner-up; images plus
uniform noise), as the attacks' cost is the same whatever is searched. Goal: (b), (c), (e) + (f) small
multiples of (a), far below (d) and (g).
Run: python benchmarks/bench_calibrate.py [--n 500] [--device cpu] [--std demo-std --rob demo-rob] [--mixer DIR]
"""

from __future__ import annotations

import argparse
import time

import torch

from asmix.calibration import CachedLogits
from asmix.data import load_data
from asmix.experiments.calibrate import CalibrateConfig, choose_linear, choose_nuts, one_thread
from asmix.experiments.train.selection import cache_pool, choose_from_caches, head_grid
from asmix.mixer import MixingNetwork, load_mixer
from asmix.mixing import MixedClassifier
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
    parser.add_argument("--mixer", default=None, help="a train-mixer folder (default: an untrained mixer)")
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

    if args.mixer:
        mixer = load_mixer(args.mixer)[0]
    else:
        mixer = MixingNetwork.build(std, rob, x[:2]).eval()
    mixed = MixedClassifier(std, rob, mixer).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    pools = [x] + [(x + 0.3 * (2 * torch.rand(x.shape, generator=generator) - 1)).clamp(0, 1) for _ in range(2)]
    start = time.perf_counter()
    caches = [cache_pool(mixed, points, 250, device) for points in pools]
    mixer_forward = time.perf_counter() - start
    heads = head_grid(0.5, 0.2)
    start = time.perf_counter()
    with one_thread():
        choose_from_caches(mixed, caches, y, args.target, min_alpha=0.5, max_width=0.2)
    mixer_search = time.perf_counter() - start

    print(f"{len(x)} images, {args.std} / {args.rob}, device {device}")
    print(f"(a) forward pass of g and h:        {forward:8.3f} s")
    print(f"(b) linear search (exact in alpha): {linear.seconds:8.3f} s  = {linear.seconds / forward:6.2f} x (a)")
    print(f"(c) MixedNUTS search, {candidates} maps:  {nuts.seconds:8.3f} s  = {nuts.seconds / forward:6.2f} x (a)")
    print(
        f"(d) re-running g and h per map:     {candidates * forward:8.1f} s  = {candidates:6d} x (a)"
        f"  -> the cache saves {candidates * forward / (linear.seconds + nuts.seconds):.0f}x"
    )
    print(f"(e) g, h and mixer over the pool:   {mixer_forward:8.3f} s  = {mixer_forward / forward:6.2f} x (a)")
    print(f"(f) mixer head search, {len(heads)} heads: {mixer_search:8.3f} s  = {mixer_search / forward:6.2f} x (a)")
    print(
        f"(g) re-running the pool per head:   {len(heads) * mixer_forward:8.1f} s  = {len(heads):6d} x (e)"
        f"  -> the cache saves {len(heads) * mixer_forward / (mixer_forward + mixer_search):.0f}x"
    )


if __name__ == "__main__":
    main()
