"""Rendering of ``TrainResult`` and ``Comparison``: epoch lines, tables, JSON. Reads results only."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from asmix.report import alpha_text, percent, write_json


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


def selection_line(selection) -> str:
    """The evaluation head chosen for ``--target-clean-acc``."""
    status = "target met" if selection.met else "target NOT met, most accurate head chosen"
    return (
        f"head: alpha range ({selection.alpha_min:.2f}, {selection.alpha_max:.2f}), bias {selection.alpha_bias:g}, "
        f"for clean >= {percent(selection.target_clean_acc)}% ({status}): on {selection.n_examples} held-out "
        f"examples clean {percent(selection.clean_acc)}%, AutoAttack-lite pool estimate "
        f"{percent(selection.estimated_attacked_acc)}%"
    )


def verdict_table(verdict, title: str = "held-out") -> Table:
    """The mixer against the fixed alpha of equal clean accuracy under adaptive AutoAttack-lite."""
    table = Table(
        title=f"Verdict · {verdict.n_examples} {title} examples · adaptive AutoAttack-lite {verdict.norm} "
        f"eps={verdict.eps:.4g}"
    )
    for column in ("model", "clean", "AA-lite", "mean alpha clean", "mean alpha attacked"):
        table.add_column(column, justify="right")
    for row in (verdict.mixer, verdict.fixed):
        table.add_row(
            row.name,
            f"{percent(row.clean_acc)}% ({row.clean_correct})",
            f"{percent(row.attacked_acc)}% ({row.attacked_correct})",
            alpha_text(row.alpha_clean),
            alpha_text(row.alpha_attacked),
            style="bold" if row.alpha is None else None,
        )
    return table


def write_train_outputs(result, out_dir: str | Path, comparison=None) -> list[Path]:
    """``train_result.json`` (and ``comparison.json``, the verdict on evaluation examples) in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [write_json(result, out_dir / "train_result.json")]
    if comparison is not None:
        paths.append(write_json(comparison, out_dir / "comparison.json"))
    return paths
