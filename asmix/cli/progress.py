"""Progress of long commands: rich bars on a terminal; in a batch log (stderr redirected, a SLURM job) one
plain line per task at most every 30 seconds or 10% of the task, and when it finishes. Inside a unit (an attack
stage, a target class) ``stage`` shows where the work is: one bar on a terminal, a line every 30 seconds in a log."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from asmix.runtime import ProgressFn, StageEvent

LOG_INTERVAL_SECONDS = 30.0
LOG_STEPS = 10
"""A line at each tenth of a task at most (and every 30 seconds)."""


@dataclass
class _TaskLog:
    started: float
    last_time: float
    last_step: int = 0
    done: bool = False


@dataclass
class PlainProgress:
    """A ``ProgressFn`` that writes ``task: done/total (pct), rate/s, time left`` lines through ``write``."""

    write: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    interval: float = LOG_INTERVAL_SECONDS
    steps: int = LOG_STEPS
    tasks: dict[str, _TaskLog] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a task is timed from the end of the previous one (or the display's start): callers that report only
        # finished units give their first report after real work
        self._free_since = self.clock()
        self._last_line = self._free_since

    def stage(self, event: StageEvent) -> None:
        """A line for ``event`` when no line was written for ``interval`` seconds (a unit that takes minutes)."""
        now = self.clock()
        if now - self._last_line >= self.interval:
            self._write(event.line(), now)

    def _write(self, line: str, now: float) -> None:
        self.write(line)
        self._last_line = now

    def __call__(self, task: str, completed: int, total: int) -> None:
        now = self.clock()
        if task not in self.tasks or (self.tasks[task].done and completed < total):  # new, or started again
            self.tasks[task] = _TaskLog(started=self._free_since, last_time=self._free_since)
        log = self.tasks[task]
        if log.done:
            return
        share = completed / total if total else 1.0
        step = completed * self.steps // total if total else self.steps
        finished = completed >= total
        if not (finished or now - log.last_time >= self.interval or step > log.last_step):
            return
        elapsed = now - log.started
        rate = completed / elapsed if elapsed > 0 else 0.0
        left = (total - completed) / rate if rate > 0 else None
        timing = (
            f"{_clock(elapsed)} elapsed"
            if finished
            else f"{_clock(left)} left"
            if left is not None
            else "time left unknown"
        )
        self._write(f"{task}: {completed}/{total} ({100 * share:.0f}%), {rate:.1f}/s, {timing}", now)
        log.last_time, log.last_step, log.done = now, step, finished
        if finished:
            self._free_since = now


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@contextmanager
def progress_display(console: Console) -> Iterator[ProgressFn]:
    """Rich bars (one per task name) when ``console`` is a terminal, else ``PlainProgress`` lines on it."""
    if not console.is_terminal:
        yield PlainProgress(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield _Bars(progress)


@dataclass
class _Bars:
    """A ``ProgressFn`` with one rich bar per task, and one more for the stage inside the current unit."""

    progress: Progress
    tasks: dict[str, int] = field(default_factory=dict)
    stage_bar: int | None = None

    def __call__(self, task: str, completed: int, total: int) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total)
        self.progress.update(self.tasks[task], completed=completed, total=total)

    def stage(self, event: StageEvent) -> None:
        if self.stage_bar is None:
            self.stage_bar = self.progress.add_task("", total=event.total)
        self.progress.update(self.stage_bar, description=event.line(), completed=event.step, total=event.total)
