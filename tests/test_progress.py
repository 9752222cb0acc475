"""Progress (#28): every long command shows it and takes --no-progress; without a terminal (a batch job's log)
it prints plain lines, never a bar, and the result table after them has every number whole."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from PIL import Image, ImageOps
from rich.console import Console
from rich.progress import TextColumn

from medisyn_cli.cli.main import app
from medisyn_cli.core.progress import LoggingProgress, Task, current, reporting

FIXTURES = Path(__file__).parent / "fixtures"
LONG_COMMANDS = (
    "generate",
    "train",
    "index build",
    "screen",
    "provenance",
    "evaluate utility",
    "evaluate privacy",
    "evaluate leakage",
    "evaluate fidelity",
    "evaluate alignment",
    "judge build",
    "study build",
    "report",
)


def _command(path: str):
    command = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", LONG_COMMANDS)
def test_every_long_command_takes_no_progress(path):
    options = {flag for param in _command(path).params for flag in param.opts + param.secondary_opts}
    assert {"--progress", "--no-progress"} <= options, path


def _logging(every: float) -> tuple[LoggingProgress, io.StringIO]:
    buffer = io.StringIO()
    progress = LoggingProgress(TextColumn("{task.description}"), console=Console(file=buffer), every=every)
    return progress, buffer


def test_without_a_terminal_lines_come_every_period_and_once_per_task_at_the_end():
    progress, buffer = _logging(every=0.0)
    with progress:
        task = Task(progress, "reading --train", 4)
        task.advance(2)
        task.advance(2, "last batch")
    rate = r"(\d+\.\d\d|-) img/s"
    patterns = [rf"reading --train: 2/4 {rate}", rf"reading --train: 4/4 {rate} last batch"]
    patterns.append(patterns[-1] + r" done in \d+\.\d s")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 3 and all(re.fullmatch(p, line) for p, line in zip(patterns, lines)), lines


def test_no_line_before_the_period_and_none_at_the_end_of_a_failed_or_disabled_block():
    progress, buffer = _logging(every=3600.0)
    with pytest.raises(RuntimeError), progress:
        Task(progress, "embedding", 10).advance(5)
        raise RuntimeError("bad image")
    assert buffer.getvalue() == ""
    progress, buffer = _logging(every=0.0)
    progress.disable = True
    with progress:
        Task(progress, "embedding", 10).advance(10)
    assert buffer.getvalue() == ""


def test_reporting_is_the_current_display_and_nests_into_one():
    assert current() is None
    Task(None, "nothing shown").advance(3)  # without a display: a no-op
    with reporting(show_progress=False) as outer:
        assert current() is outer
        with reporting(show_progress=True) as inner:  # alignment building a judge: the same display
            assert inner is outer
        assert current() is outer
    assert current() is None


def _label_folders(folder: Path, images: list[Path], view) -> Path:
    for path in images:
        label = "cell" if "blood" in path.name or "platelet" in path.name else "xray"
        (folder / label).mkdir(parents=True, exist_ok=True)
        view(Image.open(path)).save(folder / label / path.name)
    return folder


def _run_logged(tmp_path: Path, *options: str) -> str:
    """`medisyn evaluate fidelity ... > log 2>&1` (no terminal, no COLUMNS); the log's text."""
    images = sorted((FIXTURES / "images" / "images").glob("*.png"))
    real = _label_folders(tmp_path / "real", images, lambda i: i)
    synthetic = _label_folders(tmp_path / "synthetic", images, ImageOps.mirror)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medisyn_cli", "evaluate", "fidelity", "--real", str(real)]
    command += ["--synthetic", str(synthetic), "--features", "pixel", "--bootstrap", "5", "--per-class"]
    log = tmp_path / "log"
    with open(log, "w") as handle:
        subprocess.run(
            command + ["--out", str(tmp_path / "out"), *options],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            check=True,
            timeout=300,
        )
    return log.read_text()


def test_evaluate_in_a_log_prints_progress_lines_and_its_table_with_every_number_whole(tmp_path):
    text = _run_logged(tmp_path)
    lines = text.splitlines()
    assert any(line.startswith("reading --real: 12/12 ") and "done in" in line for line in lines), text
    assert any(line.startswith("reading --synthetic: 12/12 ") and "done in" in line for line in lines)
    assert any(line.startswith("fidelity: bootstrap FID: 15/15 ") for line in lines), text
    assert "…" not in text and "\r" not in text and "\x1b[" not in text and "ETA" not in text
    result = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    for scope, row in [("all", result["overall"]), *result["per_class"].items()]:
        cells = [c.strip() for c in next(line for line in lines if line.startswith(f"│ {scope} ")).split("│")]
        low, high = row["ci95"]["fid"]
        assert cells[4] == f"{row['fid']:.2f} [{low:.2f}, {high:.2f}]", cells
        numbers = [row[k] for k in ("precision", "recall", "density", "coverage")]
        assert cells[6:10] == [f"{v:.3f}" for v in numbers], cells
        assert cells[10:12] == [f"{row[k]:.3f}" for k in ("real_diversity", "synthetic_diversity")]


def test_no_progress_prints_only_the_results(tmp_path):
    text = _run_logged(tmp_path, "--no-progress")
    assert "reading" not in text and "done in" not in text and "bootstrap FID" not in text
    assert "fidelity, features: pixel" in text
