"""Rendering of ``CertifyResult``: certified accuracy at chosen radii (table, CSV, JSON) and the
certified accuracy vs l_2 radius curves of Figures 6 and 7 (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from asmix.report import new_figure, percent, save_figure, write_csv, write_json

BOUND_LABELS = {"lipschitz": "Thm 3.5 (Lipschitz)", "rs": "Thm A.2 (RS)"}
SHORT_BOUND_LABELS = {"lipschitz": "3.5 Lip", "rs": "A.2 RS"}


def _entry_label(entry, short: bool = False) -> str:
    if short:
        model = {"mixed": f"h_a a={entry.alpha:.3g}", "rob": "h", "baseline": "base h"}[entry.name]
        return model if entry.sigma is None else f"{model} s={entry.sigma:g}"
    model = "h" if entry.alpha == 1.0 else f"h_alpha, alpha={entry.alpha:.3g}"
    if entry.name == "baseline":
        model = "baseline h"
    return model if entry.sigma is None else f"{model}, sigma={entry.sigma:g}"


def certify_table(result) -> Table:
    """Certified accuracy (%) of each classifier and bound at the configured radii."""
    from asmix.experiments.certify import guarantee

    config = result.config
    title = f"Certified accuracy (%) vs l_2 radius · {result.n_examples} examples"
    if config.smoothing:
        title += f" · {config.n_samples} noise samples"
    caption = guarantee(config)
    if config.match_clean_acc and result.baseline_clean_accuracy is not None:
        baseline = percent(result.baseline_clean_accuracy)
        caption += f" · alpha {result.alpha:.3f} matches the baseline's clean accuracy {baseline}%"
    table = Table(title=title, caption=caption)
    table.add_column("classifier", no_wrap=True)
    table.add_column("bound", no_wrap=True)
    table.add_column("clean", justify="right")
    for radius in config.radii:
        table.add_column(f"{radius:g}", justify="right")
    for entry in result.entries:
        for position, curve in enumerate(entry.curves):
            table.add_row(
                _entry_label(entry, short=True) if position == 0 else "",
                SHORT_BOUND_LABELS[curve.bound],
                f"{100 * entry.clean_accuracy:.1f}" if position == 0 else "",
                *(f"{100 * value:.1f}" for value in curve.certified),
                end_section=position == len(entry.curves) - 1,
            )
    return table


def summary_rows(result) -> list[dict]:
    """One flat row per (classifier, bound) for CSV."""
    rows = []
    for entry in result.entries:
        for curve in entry.curves:
            row = {
                "classifier": entry.name,
                "alpha": entry.alpha,
                "sigma": entry.sigma,
                "bound": curve.bound,
                "clean_accuracy": entry.clean_accuracy,
            }
            rows.append(row | {f"r={radius:g}": value for radius, value in zip(result.config.radii, curve.certified)})
    return rows


def _curve_points(radii, correct, n: int) -> tuple[list[float], list[float]]:
    """Step curve of certified accuracy (%) from per-example radii: drops after each radius."""
    certified = sorted(r for r, ok in zip(radii, correct) if ok and r >= 0 and not math.isnan(r))
    xs, ys = [0.0], [100.0 * len(certified) / n]
    remaining = len(certified)
    for radius in certified:
        if math.isinf(radius):
            break
        xs += [radius, radius]
        ys += [100.0 * remaining / n, 100.0 * (remaining - 1) / n]
        remaining -= 1
    return xs, ys


def plot_certify(result, out_dir: str | Path) -> list[Path]:
    """Certified accuracy vs l_2 radius for every classifier and bound; hollow circles at r = 0
    mark clean accuracy (the discontinuity of Figures 6 and 7)."""
    out_dir = Path(out_dir)
    figure, axes = new_figure(7.0, 4.5)
    finite = [
        r for entry in result.entries for curve in entry.curves for r in curve.radii if math.isfinite(r) and r > 0
    ]
    right = max(finite + [max(result.config.radii, default=0.0), 1e-3]) * 1.05
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for index, entry in enumerate(result.entries):
        colour = colours[index % len(colours)]
        for curve in entry.curves:
            xs, ys = _curve_points(curve.radii, curve.correct, result.n_examples)
            xs.append(right)
            ys.append(ys[-1])
            axes.plot(
                xs,
                ys,
                color=colour,
                linestyle="-" if curve.bound == "rs" else "--",
                label=f"{BOUND_LABELS[curve.bound]}, {_entry_label(entry)}",
            )
        axes.plot(
            [0],
            [100 * entry.clean_accuracy],
            marker="o",
            markerfacecolor="none",
            color=colour,
            linestyle="none",
            label=f"clean, {_entry_label(entry)}",
        )
    axes.set_xlim(0, right)
    axes.set_ylim(-2, 102)
    axes.set_xlabel("l_2 radius")
    axes.set_ylabel("certified accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes.set_title("Certified accuracy of the mixed classifier (Figures 6, 7)")
    return [save_figure(figure, out_dir / "certify_curves.png")]


def write_certify_outputs(result, out_dir: str | Path) -> list[Path]:
    """JSON (with per-example radii), CSV of the table and the curve PNG into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_json(result, out_dir / "certify.json"), write_csv(summary_rows(result), out_dir / "certify.csv")]
    return paths + plot_certify(result, out_dir)
