"""What every command shares: errors as exit codes (one line, exit 2), signals from the first line, --debug, exit
code constants."""

from __future__ import annotations

from contextlib import contextmanager

import typer

from medisyn_cli.core.errors import Interrupted, MedisynError
from medisyn_cli.core.progress import console

state = {"debug": False}


EXIT_MEMORISES = 3  # a class kept producing near-copies of training images
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")  # SLURM preemption and its --signal walltime warning


class Stopped(BaseException):
    """SIGTERM/SIGUSR1 outside the batch loop. A BaseException, as KeyboardInterrupt is, so that no library's
    `except Exception` (around an optional import, say) swallows it and the command runs on."""

    exit_code = 75


def interrupt_on_signals() -> None:
    """SIGTERM and SIGUSR1 stop the command (one line, exit 75: the sbatch script requeues) from the CLI's first
    line; `generate` replaces them while it makes batches, so the batch in flight is finished first."""
    import signal

    def handler(number, frame):
        raise Stopped(
            f"{signal.Signals(number).name}: stopped before the command finished; what it completed is kept: run "
            f"the same command again (generate: with --resume, same options)"
        )

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), handler)


@contextmanager
def errors_as_exit_codes():
    """MedisynError -> one line, exit 2; anything unexpected -> one line, exit 1; --debug shows tracebacks."""
    try:
        yield
    except MedisynError as exc:
        if state["debug"]:
            raise
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (Interrupted, Stopped) as exc:
        console.print(f"interrupted: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print("interrupted: Ctrl-C", highlight=False)
        raise typer.Exit(130) from None
    except OSError as exc:
        if state["debug"]:
            raise
        full = storage_full(exc)
        console.print(
            f"[red]error:[/red] {full or f'{type(exc).__name__}: {exc} (rerun with --debug for the traceback)'}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2 if full else 1) from None
    except Exception as exc:
        if state["debug"]:
            raise
        console.print(
            f"[red]error:[/red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def storage_full(exc: OSError) -> str | None:
    """One line for a write refused for lack of room (disk full, quota, a file size limit such as `ulimit -f`):
    the file, the cause, and how to go on; None for any other OSError."""
    import errno

    causes = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "the file size limit (ulimit -f, or the file system's largest file) is reached",
    }
    if exc.errno not in causes:
        return None
    return (
        f"{exc.filename or 'a file'}: {exc.strerror} (errno {exc.errno}: {causes[exc.errno]}); make room or raise "
        f"the limit, then run the same command again (generate: with --resume, same options; the batches done are "
        f"kept)"
    )
