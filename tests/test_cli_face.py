"""The face of the CLI (#28): `--version`, and output that is never cut when it goes to a file."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import typer.main

from medisyn_cli.cli.main import app
from medisyn_cli.core.progress import UNLIMITED_WIDTH, output_width
from medisyn_cli.core.version import __version__


def _leaf_commands() -> list[tuple[list[str], object]]:
    found = []

    def walk(command, path: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in sorted(command.commands.items()):
                walk(sub, path + [name])
        else:
            found.append((path, command))

    walk(typer.main.get_command(app), [])
    return found


def test_version_prints_the_package_version():
    done = subprocess.run(["medisyn", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"medisyn {__version__}"


def test_output_width_is_unlimited_without_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # an exported COLUMNS must not cut a batch job's log
    assert output_width(io.StringIO()) == UNLIMITED_WIDTH


@pytest.mark.slow
def test_help_redirected_to_a_file_has_every_option_name_whole(tmp_path):
    """`medisyn X --help > f` (no terminal) names every option of X in full, and cuts nothing with an ellipsis."""
    script = (
        "import sys; from medisyn_cli.cli.main import main; sys.argv = ['medisyn'] + sys.argv[1:]; main()"
    )
    from concurrent.futures import ThreadPoolExecutor

    commands = list(_leaf_commands())

    def write_help(job: tuple[int, tuple]) -> str:
        number, (path, _) = job
        log = tmp_path / f"help-{number}.txt"
        with log.open("w") as out:
            subprocess.run(
                [sys.executable, "-c", script, *path, "--help"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        return log.read_text()

    with ThreadPoolExecutor(2) as pool:  # each process is CPU-bound importing medisyn: one per core
        texts = list(pool.map(write_help, enumerate(commands)))
    for (path, command), text in zip(commands, texts):
        assert "…" not in text, f"medisyn {' '.join(path)} --help cuts text"
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for name in param.opts:
                if name.startswith("--"):
                    assert name in text, f"medisyn {' '.join(path)} --help lost {name}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_while_the_cli_imports_exits_75_with_one_line(name):
    """A preemption in the first second (while `medisyn` imports its stages) requeues like any other: exit 75."""
    import signal
    import time

    process = subprocess.Popen(
        ["medisyn", "generate", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.4)  # the console script has installed its early handlers; the CLI's imports take longer
    process.send_signal(getattr(signal, name))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 75, (process.returncode, err)
    assert err.strip().splitlines() == [
        f"interrupted: {name}: stopped while medisyn was starting; nothing was written: "
        "run the same command again (generate: with --resume if its run had started before)"
    ]
