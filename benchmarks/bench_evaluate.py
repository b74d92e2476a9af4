"""Wall time of ``asmix evaluate --attack aa`` over a direct AutoAttack call, side by side.

Both run standard AutoAttack on the same mixed classifier h_alpha and the same examples, in this
process, alternating, each timed from loading the models to the last attack. Goal: ratio <= 1.05.

    python benchmarks/bench_evaluate.py --rob demo-rob --n-examples 200 --batch-size 100 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def direct_autoattack(args) -> float:
    """The reference: load the pair, build h_alpha, one ``run_standard_evaluation`` call."""
    import torch

    from asmix.compat import register_autoattack
    from asmix.experiments.inputs import PairSource, load_pair
    from asmix.mixing import MixedClassifier

    start = time.perf_counter()
    pair = load_pair(PairSource(std=args.std, rob=args.rob, n_examples=args.n_examples))
    mixed = MixedClassifier(pair.std, pair.rob, args.alpha).eval()
    adversary = register_autoattack().AutoAttack(
        mixed, eps=args.eps, norm="Linf", version="standard", device=torch.device("cpu"), seed=0
    )
    adversary.run_standard_evaluation(pair.x, pair.y, batch_size=args.batch_size)
    return time.perf_counter() - start


def asmix_evaluate(args, out_dir: Path, run: int) -> float:
    """``asmix evaluate --attack aa`` through the CLI entry point (in process)."""
    from asmix.cli import main

    sys.argv = [
        "asmix",
        "evaluate",
        "--std",
        args.std,
        "--rob",
        args.rob,
        "--alpha",
        str(args.alpha),
        "--attack",
        "aa",
        "--eps",
        str(args.eps),
        "--n-examples",
        str(args.n_examples),
        "--batch-size",
        str(args.batch_size),
        "--device",
        "cpu",
        "--json",
        str(out_dir / f"run{run}.json"),
        "--out",
        str(out_dir / f"run{run}.npz"),
    ]
    start = time.perf_counter()
    try:
        main()
    except SystemExit as done:  # the entry point exits like a console script
        if done.code not in (0, None):
            raise
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--std", default="demo-std")
    parser.add_argument("--rob", default="demo-rob")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--n-examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # a shared machine: one thread keeps both timings comparable
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.repeats):
            theirs.append(direct_autoattack(args))
            ours.append(asmix_evaluate(args, Path(folder), run))
            print(
                f"run {run}: direct AutoAttack {theirs[-1]:.1f} s, asmix evaluate --attack aa {ours[-1]:.1f} s",
                file=sys.stderr,
            )
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        f"std={args.std} rob={args.rob} alpha={args.alpha} n={args.n_examples} batch={args.batch_size}: "
        f"direct {statistics.median(theirs):.1f} s, asmix evaluate {statistics.median(ours):.1f} s, "
        f"ratio {ratio:.3f} (goal <= 1.05)"
    )


if __name__ == "__main__":
    main()
