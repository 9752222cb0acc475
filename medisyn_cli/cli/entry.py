"""The `medisyn` console script: SIGTERM/SIGUSR1 are handled before anything else is imported.

Importing the CLI loads every stage (one to two seconds); a batch scheduler that preempts a job in that window
must still get the documented exit code 75 (the sbatch script requeues on it) and one line, not 143 in silence.
cli/main.py installs the full handlers once it is loaded.
"""

from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
EXIT_INTERRUPTED = 75
EXIT_CTRL_C = 130


def _stopped_while_starting(number, frame) -> None:
    sys.stderr.write(
        f"interrupted: {signal.Signals(number).name}: stopped while medisyn was starting; nothing was written: "
        "run the same command again (generate: with --resume if its run had started before)\n"
    )
    sys.stderr.flush()
    # nothing is open for writing yet, and an exception raised inside an import can be swallowed by a library's
    # bare `except:` (the command then ran on), so leave at once
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    """Console-script entry point: early stop handlers, then the CLI."""
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stopped_while_starting)
    try:
        from medisyn_cli.cli.main import main as run_cli  # deferred on purpose: see the module docstring
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: Ctrl-C while medisyn was starting\n")
        raise SystemExit(EXIT_CTRL_C) from None
    run_cli()
