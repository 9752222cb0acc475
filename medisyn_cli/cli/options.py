"""One table of defaults: a Typer option takes its default and help from a config dataclass field.

`option(GenerateConfig, "seed", "--seed")` is `typer.Option(0, "--seed", help=...)` with the field's default
and its `metadata["help"]`, so the CLI and the Python API cannot disagree (tests/test_cli_defaults.py checks
every command). The owner may also be an API function (its parameter's default; help then given here), for the
few commands whose API takes loose parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import typer


@dataclasses.dataclass(frozen=True)
class Source:
    """Where an option's default and help come from: a dataclass field or a function parameter of `owner`."""

    owner: Any
    name: str
    to_cli: Callable[[Any], Any] | None = None  # the API's value -> what the option parses (a tuple -> "a,b")

    def default(self) -> Any:
        """The API's default; Ellipsis (required) when it has none."""
        if dataclasses.is_dataclass(self.owner):
            field = {f.name: f for f in dataclasses.fields(self.owner)}[self.name]
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            return ...
        default = inspect.signature(self.owner).parameters[self.name].default
        return ... if default is inspect.Parameter.empty else default

    def cli_default(self) -> Any:
        """The option's default: the API's, converted by `to_cli`."""
        default = self.default()
        return default if default is ... or self.to_cli is None else self.to_cli(default)

    def help(self) -> str | None:
        """The field's metadata["help"] (None for a function parameter)."""
        if not dataclasses.is_dataclass(self.owner):
            return None
        return {f.name: f for f in dataclasses.fields(self.owner)}[self.name].metadata.get("help")


def _help(source: Source, help: str | None) -> str:
    """The table's help; `help` only where the table has none (a function parameter, a dataclass not ours)."""
    table = source.help()
    if table and help:
        raise ValueError(f"{source.owner.__name__}.{source.name}: help is in the table; do not repeat it")
    if not (table or help):
        raise ValueError(f"{source.owner.__name__}.{source.name}: no help (field metadata or help=)")
    return table or help


def option(
    owner: Any,
    name: str,
    *flags: str,
    help: str | None = None,
    to_cli: Callable[[Any], Any] | None = None,
    **extra: Any,
) -> Any:
    """typer.Option with the default and help of `owner`'s field (or parameter) `name`."""
    source = Source(owner, name, to_cli)
    info = typer.Option(source.cli_default(), *flags, help=_help(source, help), **extra)
    info.source = source
    return info


def argument(
    owner: Any,
    name: str,
    *,
    help: str | None = None,
    to_cli: Callable[[Any], Any] | None = None,
    **extra: Any,
) -> Any:
    """typer.Argument with the default and help of `owner`'s field (or parameter) `name`."""
    source = Source(owner, name, to_cli)
    info = typer.Argument(source.cli_default(), help=_help(source, help), **extra)
    info.source = source
    return info


def comma_list(values: tuple) -> str:
    """(0.1, 0.25, 1.0) -> '0.1,0.25,1': a tuple default as the comma list the option parses."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


PROGRESS_HELP = "Show a progress bar (else log lines)."


def progress_option(owner: Any) -> Any:
    """--progress/--no-progress, bound to `owner`'s show_progress (an API parameter or a config field)."""
    table = Source(owner, "show_progress").help()
    return option(owner, "show_progress", "--progress/--no-progress", help=None if table else PROGRESS_HELP)
