"""The `medisyn` command: one Typer app; each command group lives in its own module and calls the Python API."""

from __future__ import annotations

import sys

import typer

from medisyn_cli.cli.common import Stopped, interrupt_on_signals, state
from medisyn_cli.cli.evaluate import evaluate_app, report_command
from medisyn_cli.cli.generate import generate, merge
from medisyn_cli.cli.judge import judge_app
from medisyn_cli.cli.options import VocabularyGroup
from medisyn_cli.cli.provenance import provenance
from medisyn_cli.cli.publish import publish_command
from medisyn_cli.cli.screening import index_app, screen
from medisyn_cli.cli.study import study_app
from medisyn_cli.cli.train import train
from medisyn_cli.core.errors import Interrupted
from medisyn_cli.core.progress import console, results
from medisyn_cli.core.version import __version__

# Help without a terminal (`medisyn generate --help > f`) wraps at this width and never cuts an option name.
HELP_WIDTH_WITHOUT_TERMINAL = 120

app = typer.Typer(
    cls=VocabularyGroup,
    add_completion=True,
    no_args_is_help=True,
    help="Make synthetic medical image datasets with text-guided latent diffusion.\n\n"
    "Example: medisyn generate --manifest prompts/mini_dermoscopy.csv --n 60 --out derm-synth",
)


def _print_version(value: bool) -> None:
    if value:
        results.print(f"medisyn {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state["debug"] = debug


app.command()(generate)
app.command()(train)
app.command()(screen)
app.command()(merge)
app.command()(provenance)
app.command("publish")(publish_command)
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(judge_app, name="judge")  # cli.judge also adds `evaluate alignment`
app.add_typer(study_app, name="study")
app.command("report")(report_command)
app.add_typer(index_app, name="index")


def main() -> None:
    """Console-script entry point."""
    try:
        interrupt_on_signals()
        _help_width()
        app()
    except (Interrupted, Stopped) as exc:  # a signal before a command's errors_as_exit_codes
        console.print(f"interrupted: {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


def _help_width() -> None:
    """Typer renders help at 80 columns without a terminal, cutting option names; give it room instead."""
    import typer.rich_utils

    if typer.rich_utils.MAX_WIDTH is None and not sys.stdout.isatty():
        typer.rich_utils.MAX_WIDTH = HELP_WIDTH_WITHOUT_TERMINAL
