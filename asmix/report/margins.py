"""Rendering of ``MarginsResult``: Table 1 as a rich table, Lemma 3.2 and Lipschitz tables, JSON,
CSV and the histogram of h's margins (correct vs wrong, clean vs attacked)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from asmix.report import new_figure, percent, save_figure, write_csv, write_json

MODEL_LABELS = {"std": "g", "rob": "h", "mixed": "h_alpha"}
INPUT_LABELS = {"clean": "clean", "pgd": "PGD", "autoattack": "AutoAttack", "worst": "worst of all"}


def _gap(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _input_label(result, inputs: str) -> str:
    if inputs == "pgd":
        return f"PGD-{result.config.threat.steps}"
    return INPUT_LABELS.get(inputs, inputs)


def _model_label(result, model: str) -> str:
    return f"h_{result.config.alpha:g}" if model == "mixed" else MODEL_LABELS[model]


def _caption(result) -> str | None:
    names = [f"{MODEL_LABELS[role]} = {result.models[role]}" for role in ("std", "rob") if role in result.models]
    return ", ".join(names) or None


def margins_table(result) -> Table:
    """Table 1: accuracy and mean/median gap p_top - p_runner_up over correct (✓) and wrong (✗) examples."""
    config = result.config
    table = Table(
        title=f"Confidence gap p_top - p_runner-up (Table 1) · {result.n_examples} examples · "
        f"{config.threat.norm} eps={config.threat.eps:.4g}",
        caption=_caption(result),
    )
    for column in ("model", "inputs", "acc %", "✓ mean", "✓ median", "✗ mean", "✗ median"):
        table.add_column(column, justify="left" if column in ("model", "inputs") else "right")
    for model, by_input in result.stats.items():
        for position, (inputs, stats) in enumerate(by_input.items()):
            table.add_row(
                _model_label(result, model) if position == 0 else "",
                _input_label(result, inputs),
                percent(stats.accuracy),
                _gap(stats.mean_gap_correct),
                _gap(stats.median_gap_correct),
                _gap(stats.mean_gap_wrong),
                _gap(stats.median_gap_wrong),
                end_section=position == len(by_input) - 1,
            )
    return table


def lemma32_table(result) -> Table:
    """How many examples meet Lemma 3.2 (h correct with margin >= (1-alpha)/alpha on that input),
    next to the accuracy of h_alpha attacked end to end."""
    rows = result.lemma32
    threshold = rows[0].threshold if rows else float("nan")
    table = Table(title=f"Lemma 3.2 at alpha={result.config.alpha:g}: h's margin >= (1-alpha)/alpha = {threshold:.3f}")
    for column in ("inputs", "h meets Lemma 3.2", "share %", "h_alpha accuracy %"):
        table.add_column(column, justify="left" if column == "inputs" else "right")
    for row in rows:
        table.add_row(
            _input_label(result, row.inputs),
            f"{row.n_satisfied}/{result.n_examples}",
            percent(row.share_satisfied),
            percent(row.mix_accuracy),
        )
    return table


def lipschitz_table(result) -> Table | None:
    """Eq. C.1 local Lipschitz estimate of softmax(h): mean and distribution over examples."""
    stats = result.lipschitz
    if stats is None:
        return None
    others = stats.num_classes - 1
    scope = (
        "all classes"
        if stats.classes_used == others
        else f"only the {stats.classes_used} most likely of {others} other classes (a lower bound)"
    )
    table = Table(
        title=f"Local Lipschitz estimate of softmax(h), eq. C.1 · {result.config.threat.norm} "
        f"eps={result.config.threat.eps:.4g} · {scope}"
    )
    for column in (
        "mean",
        "median",
        "90th pct",
        "max",
        f"local Thm 3.5 radius >= eps, alpha={result.config.alpha:g} (estimate)",
    ):
        table.add_column(column, justify="right")
    certified = "-" if stats.local_radius_at_eps is None else f"{stats.local_radius_at_eps}/{result.n_examples}"
    table.add_row(f"{stats.mean:.3f}", f"{stats.median:.3f}", f"{stats.p90:.3f}", f"{stats.max:.3f}", certified)
    return table


def summary_rows(result) -> list[dict]:
    """One flat row per (model, inputs) for CSV."""
    return [
        {"model": model, "inputs": inputs} | stats.summary()
        for model, by_input in result.stats.items()
        for inputs, stats in by_input.items()
    ]


def plot_margins(result, out_dir: str | Path) -> list[Path]:
    """Histograms of h's gaps, correct vs wrong, on clean and attacked inputs (the long tail of
    Section 5.1.2); a histogram of the Lipschitz estimates when there are some."""
    out_dir = Path(out_dir)
    rob = result.stats["rob"]
    panels = [name for name in ("clean", "pgd", "autoattack") if name in rob]
    figure, axes = new_figure(4.0 * len(panels), 3.6)
    figure.clf()
    axes = [figure.add_subplot(1, len(panels), index + 1) for index in range(len(panels))]
    bins = [i / 20 for i in range(21)]
    for axis, inputs in zip(axes, panels):
        stats = rob[inputs]
        right = [gap for gap, ok in zip(stats.gaps, stats.correct) if ok]
        wrong = [gap for gap, ok in zip(stats.gaps, stats.correct) if not ok]
        axis.hist(right, bins=bins, alpha=0.6, color="tab:green", label=f"correct ({len(right)})")
        axis.hist(wrong, bins=bins, alpha=0.6, color="tab:red", label=f"wrong ({len(wrong)})")
        axis.set_title(f"h, {_input_label(result, inputs)}")
        axis.set_xlabel("p_top - p_runner-up")
        axis.set_xlim(0, 1)
        axis.set_yscale("log")  # the long tail is the point (Section 5.1.2)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("examples (log scale)")
    figure.tight_layout()
    paths = [save_figure(figure, out_dir / "margins_hist.png")]
    if result.lipschitz is not None and result.lipschitz.values:
        figure, axis = new_figure()
        axis.hist(result.lipschitz.values, bins=30, color="tab:blue", alpha=0.8)
        axis.axvline(result.lipschitz.mean, color="black", linestyle="--", label=f"mean {result.lipschitz.mean:.3f}")
        axis.set_xlabel("local Lipschitz estimate of softmax(h) (eq. C.1)")
        axis.set_ylabel("examples")
        axis.legend()
        axis.grid(alpha=0.3)
        paths.append(save_figure(figure, out_dir / "margins_lipschitz.png"))
    return paths


def write_margins_outputs(result, out_dir: str | Path) -> list[Path]:
    """JSON (with h's per-example gaps), CSV of the table and the PNGs into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_json(result, out_dir / "margins.json"), write_csv(summary_rows(result), out_dir / "margins.csv")]
    return paths + plot_margins(result, out_dir)
