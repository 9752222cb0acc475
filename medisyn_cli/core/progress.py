"""The rich progress bar every long job uses; plain log lines when stderr is not a terminal (batch jobs)."""

from __future__ import annotations

import os
import sys
import time

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
    """The width to render for: the terminal's (None lets rich ask it), $COLUMNS if set, else unlimited."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    isatty = getattr(stream, "isatty", None)
    return None if isatty is not None and isatty() else UNLIMITED_WIDTH


console = Console(stderr=True, width=output_width(sys.stderr))
results = Console(width=output_width(sys.stdout))


class LoggingProgress(Progress):
    """A Progress that also prints one line per task every `every` seconds when not on a terminal."""

    def __init__(self, *columns, every: float = 30.0, **kwargs):
        super().__init__(*columns, **kwargs)
        self.every, self.last_log = every, 0.0

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if self.console.is_terminal or self.disable or time.time() - self.last_log < self.every:
            return
        self.last_log = time.time()
        task = self._tasks[task_id]
        fields = " ".join(str(v) for v in task.fields.values() if v)
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
