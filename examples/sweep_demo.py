"""The fixed-alpha sweep from Python, on the embedded demo pair: what `asmix sweep-alpha` runs.

Run: python examples/sweep_demo.py   (about a minute on two CPU cores)
"""

from rich.console import Console

import asmix
from asmix.report.sweep import sweep_table, write_sweep_outputs


def main() -> None:
    std, rob = asmix.load_model("demo-std"), asmix.load_model("demo-rob")
    x, y = asmix.load_data("demo", n_examples=300)
    config = asmix.SweepConfig(
        alphas=(0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0),
        threat=asmix.ThreatModel(eps=0.3, steps=20),
        run=asmix.RunSettings(seed=0),
    )
    result = asmix.sweep_alpha(std, rob, x, y, config, models={"std": "demo-std", "rob": "demo-rob"})
    Console().print(sweep_table(result))
    for path in write_sweep_outputs(result, "runs/sweep-demo"):
        print("wrote", path)


if __name__ == "__main__":
    main()
