"""``--report``: a command's printed tables, recorded by rich, as a Markdown or HTML file with its PNG plots."""

from __future__ import annotations

import html
import os
import shlex
import sys
from pathlib import Path

from rich.console import Console

from asmix.io import atomic_write_text


def _relative(image: Path, report: Path) -> str:
    return Path(os.path.relpath(image.resolve(), report.resolve().parent)).as_posix()


def report_markdown(text: str, images: list[Path], report: Path, title: str) -> str:
    lines = [f"# {title}", "", "```text", text.rstrip(), "```", ""]
    lines += [f"![{image.stem}]({_relative(image, report)})" for image in images]
    return "\n".join(lines) + "\n"


def report_html(recorded: str, images: list[Path], report: Path, title: str) -> str:
    figures = "".join(
        f'<figure><img src="{html.escape(_relative(image, report))}" alt="{html.escape(image.stem)}">'
        f"<figcaption>{html.escape(image.name)}</figcaption></figure>\n"
        for image in images
    )
    heading = f"<h1>{html.escape(title)}</h1>\n"
    body_start = recorded.find("<body>")
    if body_start < 0:
        return heading + recorded + figures
    body_start += len("<body>")
    body_end = recorded.rfind("</body>")
    return recorded[:body_start] + heading + recorded[body_start:body_end] + figures + recorded[body_end:]


def write_report_file(report: Path, console: Console, images: list[Path]) -> Path:
    """Everything ``console`` recorded (kept in its record, so several reports can be written) and the images."""
    title = shlex.join(["asmix", *sys.argv[1:]])
    if report.suffix.lower() == ".html":
        document = report_html(console.export_html(inline_styles=True, clear=False), images, report, title)
    else:
        document = report_markdown(console.export_text(clear=False), images, report, title)
    return atomic_write_text(report, document)
