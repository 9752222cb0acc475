"""The rich progress bar every long job uses; plain log lines when stderr is not a terminal (batch jobs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Without a terminal (a batch job's log, a pipe) nothing is cut to 80 columns: lines are as long as they need.
UNLIMITED_WIDTH = 100_000


def output_width(stream) -> int | None:
    """The width to render for: the terminal's (None lets rich ask it, $COLUMNS included), else unlimited."""
    isatty = getattr(stream, "isatty", None)
    return None if isatty is not None and isatty() else UNLIMITED_WIDTH


console = Console(stderr=True, width=output_width(sys.stderr))
results = Console(width=output_width(sys.stdout))


class LoggingProgress(Progress):
    """A Progress that, when not on a terminal (a batch job's log, a pipe), prints plain lines instead of a bar:
    one every `every` seconds (the task last updated), and one per task when the block ends without an error."""

    def __init__(self, *columns, every: float = 30.0, **kwargs):
        super().__init__(*columns, **kwargs)
        self.every, self.last_log = every, time.time()

    def start(self) -> None:
        if self.console.is_terminal:  # no bar drawn into a log, not even the final one
            super().start()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if self.console.is_terminal or self.disable or time.time() - self.last_log < self.every:
            return
        self.last_log = time.time()
        self._log(self._tasks[task_id])

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if self.console.is_terminal:
            self.stop()
        elif not self.disable and exc_type is None:
            for task in self.tasks:
                self._log(task, f"done in {task.finished_time or task.elapsed or 0:.1f} s")

    def _log(self, task, end: str = "") -> None:
        fields = " ".join(str(v) for v in [*task.fields.values(), end] if v)
        count = f"{task.completed:.0f}" if task.total is None else f"{task.completed:.0f}/{task.total:.0f}"
        self.console.print(f"{task.description}: {count} {fields}", highlight=False)


def make_progress(disable: bool = False) -> Progress:
    """A progress bar with count, rate (unit/s), elapsed time and ETA."""
    return LoggingProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        refresh_per_second=2,
    )


def rate_text(done: int, seconds: float, unit: str) -> str:
    """'12.3 img/s' style throughput."""
    return f"{done / seconds:.2f} {unit}/s" if seconds > 0 else f"- {unit}/s"


class Task:
    """One counted task of a progress display, or a no-op without one (`progress` None)."""

    def __init__(
        self, progress: Progress | None, description: str, total: float | None = None, unit: str = "img"
    ):
        self.progress, self.unit, self.done, self.started = progress, unit, 0, time.time()
        self.id = None if progress is None else progress.add_task(description, total=total, rate="", info="")

    def advance(self, count: int = 1, info: str | None = None) -> None:
        """Count `count` more units done; `info` is shown beside the bar and in the log lines."""
        self.done += count
        if self.progress is None:
            return
        extra = {} if info is None else {"info": info}
        rate = rate_text(self.done, time.time() - self.started, self.unit)
        self.progress.update(self.id, advance=count, rate=rate, **extra)


_shown: ContextVar[Progress | None] = ContextVar("medisyn_progress", default=None)


@contextmanager
def reporting(show_progress: bool = True) -> Iterator[Progress]:
    """make_progress(disable=not show_progress), also returned by `current()`: loops deep inside a stage (image
    batches, see core/imagesets.py) report to the display of the API call that runs them."""
    if current() is not None:  # an API call inside another (alignment builds a judge): one display
        yield current()
        return
    with make_progress(disable=not show_progress) as progress:
        token = _shown.set(progress)
        try:
            yield progress
        finally:
            _shown.reset(token)


def current() -> Progress | None:
    """The display of the `reporting` block this code runs in; None outside one (nothing is shown)."""
    return _shown.get()
