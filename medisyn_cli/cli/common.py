"""What every command shares: errors as exit codes (one line, exit 2), --debug, exit code constants."""

from __future__ import annotations

from contextlib import contextmanager

import typer

from medisyn_cli.core.errors import Interrupted, MedisynError
from medisyn_cli.core.progress import console

state = {"debug": False}


EXIT_MEMORISES = 3  # a class kept producing near-copies of training images


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
    except Interrupted as exc:
        console.print(f"interrupted: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print("interrupted: Ctrl-C", highlight=False)
        raise typer.Exit(130) from None
    except Exception as exc:
        if state["debug"]:
            raise
        console.print(
            f"[red]error:[/red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
