"""Rendering of ``SweepResult``: table, JSON, CSV and the Figure-4/Figure-5 plots."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from asmix.report import new_figure, percent, save_figure, write_csv, write_json


def sweep_table(result) -> Table:
    """Figure-4 data as a table: base models first, then one row per alpha (accuracies in %)."""
    models = result.models
    table = Table(
        title=f"Fixed-alpha sweep · {result.n_examples} examples · "
        f"PGD-{result.config.threat.steps} {result.config.threat.norm} eps={result.config.threat.eps:.4g}"
    )
    for column in ("model / alpha", "clean", "STD attack", "ROB attack", "MIX attack"):
        table.add_column(column, justify="right")
    for name, label in (("std", "g"), ("rob", "h")):
        base = result.base[name]
        title = f"{label} ({models[name]})" if name in models else label
        table.add_row(
            title,
            percent(base.clean),
            percent(base.std_attack),
            percent(base.rob_attack),
            percent(base.std_attack if name == "std" else base.rob_attack),
            style="dim",
        )
    for row in result.rows:
        table.add_row(
            f"{row.alpha:.3f}",
            percent(row.clean),
            percent(row.std_attack),
            percent(row.rob_attack),
            percent(row.mix_attack),
        )
    return table


def plot_sweep(result, out_dir: str | Path) -> list[Path]:
    """Two PNGs: accuracy vs alpha (Figure 4) and clean vs attacked accuracy over alpha (Figure 5)."""
    out_dir = Path(out_dir)
    alphas = [row.alpha for row in result.rows]
    figure, axes = new_figure()
    for key, label in (
        ("clean", "clean"),
        ("std_attack", "STD attack"),
        ("rob_attack", "ROB attack"),
        ("mix_attack", "MIX attack"),
    ):
        values = [getattr(row, key) for row in result.rows]
        if all(value is not None for value in values):
            axes.plot(alphas, [100 * value for value in values], marker="o", markersize=3, label=label)
    axes.set_xlabel("alpha")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(-2, 102)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title("Accuracy of the mixed classifier vs alpha")
    paths = [save_figure(figure, out_dir / "sweep_accuracy.png")]

    attacked = "mix_attack" if all(row.mix_attack is not None for row in result.rows) else None
    if attacked is None:
        attacked = next(
            (key for key in ("rob_attack", "std_attack") if all(getattr(row, key) is not None for row in result.rows)),
            None,
        )
    if attacked is not None:
        figure, axes = new_figure()
        xs = [100 * row.clean for row in result.rows]
        ys = [100 * getattr(row, attacked) for row in result.rows]
        axes.plot(xs, ys, marker="o", markersize=3)
        for row, x_value, y_value in zip(result.rows, xs, ys):
            axes.annotate(f"{row.alpha:.2f}", (x_value, y_value), fontsize=6, alpha=0.7)
        axes.set_xlabel("clean accuracy (%)")
        axes.set_ylabel(f"{attacked.replace('_', ' ').upper()} accuracy (%)")
        axes.grid(alpha=0.3)
        axes.set_title("Accuracy-robustness trade-off over alpha")
        paths.append(save_figure(figure, out_dir / "sweep_tradeoff.png"))
    return paths


def write_sweep_outputs(result, out_dir: str | Path) -> list[Path]:
    """JSON, CSV and both plots of a sweep into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_json(result, out_dir / "sweep.json"), write_csv(result.to_dict()["rows"], out_dir / "sweep.csv")]
    return paths + plot_sweep(result, out_dir)
