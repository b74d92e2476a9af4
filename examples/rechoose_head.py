"""Choose a trained demo mixer's head again for another clean target, then judge it.

The head (alpha range, bias and logit scales) is chosen on the first half of the held-out examples (test images
1,500-1,749 of the shipped demo set), exactly as ``train-mixer`` does (by its gain over the tempered fixed alpha, or
for ``--target-clean-acc``), and judged with adaptive AutoAttack-lite against the tempered and plain fixed alphas of
equal clean accuracy on the first ``--n-eval`` evaluation images (test images 0 to n-1), which no choice touched.

    python examples/rechoose_head.py MIXER_DIR --max-width 0.5 --n-eval 1000
"""

from __future__ import annotations

import argparse
import time

from asmix.data import load_data
from asmix.experiments.train.comparison import judge
from asmix.experiments.train.loop import head_classifier
from asmix.experiments.train.selection import select_head
from asmix.mixer import load_mixer
from asmix.mixing import MixedClassifier
from asmix.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mixer", help="folder written by asmix train-mixer on the demo pair")
    parser.add_argument("--target-clean-acc", type=float, default=None, help="default: choose by gain")
    parser.add_argument("--min-alpha", type=float, default=0.5)
    parser.add_argument("--max-width", type=float, default=0.5)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    x, y = load_data("demo", split="test")
    std, rob = load_model("demo-std"), load_model("demo-rob")
    network, _card = load_mixer(args.mixer, std_model=std, rob_model=rob)  # the card checked g's and h's weights
    mixed = MixedClassifier(std, rob, network).eval()
    head = select_head(
        mixed,
        x[1500:1750],
        y[1500:1750],
        args.target_clean_acc,
        eps=0.3,
        min_alpha=args.min_alpha,
        max_width=args.max_width,
        batch_size=args.batch_size,
    )
    print(head.head, head.baseline, flush=True)
    chosen = head_classifier(std, rob, network, head.head)
    baseline = (head.baseline.head.std_scale, head.baseline.head.rob_scale)
    start = time.perf_counter()
    verdict = judge(
        chosen, x[: args.n_eval], y[: args.n_eval], baseline_scales=baseline, eps=0.3, batch_size=args.batch_size
    )
    print(verdict, f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
