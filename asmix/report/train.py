"""Rendering of ``TrainResult`` and ``Comparison``: epoch lines, tables, JSON. Reads results only."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from asmix.report import alpha_text, new_figure, percent, save_figure, write_json


def epoch_line(record, epochs: int) -> str:
    """One line per epoch for the live display."""
    return (
        f"epoch {record.epoch}/{epochs}  loss {record.train_loss:.4f}  lr {record.lr:.2e}  "
        f"val clean {percent(record.clean_acc)}%  val PGD {percent(record.attacked_acc)}%  "
        f"alpha clean {alpha_text(record.alpha_clean)} / attacked {alpha_text(record.alpha_attacked)}  "
        f"({record.seconds:.1f}s)"
    )


def history_table(result) -> Table:
    """Training history: loss and validation of the EMA mixer per epoch."""
    config = result.config
    table = Table(
        title=f"train-mixer · setting {config.setting} · {result.n_train} train / {result.n_val} held out · "
        f"val PGD-{config.threat.steps} {config.threat.norm} eps={config.validation_threat.eps:.4g}"
    )
    for column in (
        "epoch",
        "loss",
        "val clean %",
        "val PGD %",
        "alpha clean",
        "alpha attacked",
        "train alpha clean",
        "train alpha attacked",
    ):
        table.add_column(column, justify="right")
    for r in result.history:
        table.add_row(
            str(r.epoch),
            f"{r.train_loss:.4f}",
            percent(r.clean_acc),
            percent(r.attacked_acc),
            alpha_text(r.alpha_clean),
            alpha_text(r.alpha_attacked),
            alpha_text(r.train_alpha_clean),
            alpha_text(r.train_alpha_attacked),
        )
    return table


def head_text(head) -> str:
    """An ``EvaluationHead`` in one phrase: ``range (0.96, 1.00), bias 1.1, scales g 1.2 / h 0.3``, or ``alpha 0.8,
    scales ...`` for a fixed alpha."""
    if head.is_fixed:
        alpha = f"alpha {head.alpha_min:g}"
    else:
        alpha = f"range ({head.alpha_min:.2f}, {head.alpha_max:.2f}), bias {head.alpha_bias:g}"
    return f"{alpha}, scales g {head.std_scale:g} / h {head.rob_scale:g}"


def head_line(result) -> str:
    """The evaluation head the run ended with, and how it was chosen."""
    selection = result.selection
    if selection is None:
        training = " (the training head: alpha can fall to 0, g alone, under attack)"
        return (
            f"head: {head_text(result.head)}, as given (--no-head-choice)"
            + (training if result.head.is_training_head else "")
            + "; choose one with asmix calibrate --mixer"
        )
    if selection.rule == "target":
        status = "target met" if selection.met else "target NOT met, most accurate head chosen"
        rule = f"for clean >= {percent(selection.target_clean_acc)}% ({status})"
    else:
        rule = "by its estimated gain over the tempered fixed alpha of equal clean accuracy"
    return (
        f"head: {head_text(selection.head)}, chosen {rule} on {selection.n_examples} held-out examples: clean "
        f"{percent(selection.clean_acc)}%, AutoAttack-lite pool estimate {percent(selection.estimated_attacked_acc)}% "
        f"vs tempered fixed {head_text(selection.baseline.head)} {percent(selection.baseline.estimated_attacked_acc)}%"
        f" ({selection.estimated_gain:+.2f} points)"
    )


def frontier_table(selection) -> Table:
    """Clean vs AutoAttack-lite pool estimate on the head-choice examples: each family's frontier."""
    table = Table(
        title=f"Head choice frontier · {selection.n_examples} held-out examples · {selection.n_candidates} heads"
    )
    for column in ("family", "head", "clean %", "AA-lite pool %"):
        table.add_column(column, justify="right")
    for family, points in (("mixer", selection.frontier), ("tempered fixed", selection.fixed_frontier)):
        for point in points:
            chosen = point.head in (selection.head, selection.baseline.head)
            table.add_row(
                family,
                head_text(point.head),
                percent(point.clean_acc),
                percent(point.estimated_attacked_acc),
                style="bold" if chosen else None,
            )
    return table


def plot_frontier(selection, path: str | Path) -> Path:
    """The two frontiers of ``frontier_table`` as a PNG, the chosen head and its baseline marked."""
    figure, axes = new_figure()
    for label, points, marker in (
        ("mixer heads", selection.frontier, "o"),
        ("tempered fixed alphas", selection.fixed_frontier, "s"),
    ):
        axes.plot(
            [100 * p.clean_acc for p in points],
            [100 * p.estimated_attacked_acc for p in points],
            marker=marker,
            markersize=3,
            label=label,
        )
    for label, point in (("chosen head", selection.chosen), ("its tempered fixed alpha", selection.baseline)):
        axes.scatter([100 * point.clean_acc], [100 * point.estimated_attacked_acc], s=60, zorder=3, label=label)
    axes.set_xlabel("clean accuracy (%)")
    axes.set_ylabel("AutoAttack-lite pool estimate (%)")
    axes.set_title(f"head choice on {selection.n_examples} held-out examples")
    axes.legend()
    return save_figure(figure, path)


def verdict_table(verdict, title: str = "held-out") -> Table:
    """The mixer against the tempered and plain fixed alphas of equal clean accuracy under adaptive AutoAttack-lite."""
    table = Table(
        title=f"Verdict · {verdict.n_examples} {title} examples · adaptive AutoAttack-lite {verdict.norm} "
        f"eps={verdict.eps:.4g}"
    )
    for column in ("model", "clean", "AA-lite", "mean alpha clean", "mean alpha attacked"):
        table.add_column(column, justify="right")
    rows = [("", verdict.mixer), ("tempered ", verdict.fixed)]
    if verdict.plain != verdict.fixed:
        rows.append(("plain ", verdict.plain))
    for kind, row in rows:
        table.add_row(
            f"{kind}{row.name}",
            f"{percent(row.clean_acc)}% ({row.clean_correct})",
            f"{percent(row.attacked_acc)}% ({row.attacked_correct})",
            alpha_text(row.alpha_clean),
            alpha_text(row.alpha_attacked),
            style="bold" if row.alpha is None else None,
        )
    return table


def write_train_outputs(result, out_dir: str | Path, comparison=None) -> list[Path]:
    """``train_result.json``, ``head_frontier.png`` (the head choice's frontiers) and ``comparison.json`` (the verdict
    on evaluation examples), where there is one, in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_json(result, out_dir / "train_result.json")]
    if result.selection is not None:
        paths.append(plot_frontier(result.selection, out_dir / "head_frontier.png"))
    if comparison is not None:
        paths.append(write_json(comparison, out_dir / "comparison.json"))
    return paths
