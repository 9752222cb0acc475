"""One table of defaults: a Typer option takes its default and help from a config dataclass field.

`option(GenerateConfig, "seed", "--seed")` is `typer.Option(0, "--seed", help=...)` with the field's default
and its `metadata["help"]`, so the CLI and the Python API cannot disagree (tests/test_cli_defaults.py checks
every command). The owner may also be an API function (its parameter's default; help then given here), for the
few commands whose API takes loose parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from medisyn_cli.cli.tables import JSON_HELP, Tables
from medisyn_cli.core.version import __version__


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
    return _declared(typer.Option, Source(owner, name, to_cli), flags, help, extra)


def argument(
    owner: Any,
    name: str,
    *,
    help: str | None = None,
    to_cli: Callable[[Any], Any] | None = None,
    **extra: Any,
) -> Any:
    """typer.Argument with the default and help of `owner`'s field (or parameter) `name`."""
    return _declared(typer.Argument, Source(owner, name, to_cli), (), help, extra)


def _declared(
    kind: Callable[..., Any], source: Source, flags: tuple[str, ...], help: str | None, extra: dict
) -> Any:
    """`kind` (typer.Option or typer.Argument) with `source`'s default and help, and the source attached."""
    info = kind(source.cli_default(), *flags, help=_help(source, help), **extra)
    info.source = source
    return info


def config_from(command: Callable, owner: Any, values: dict[str, Any], **converted: Any) -> Any:
    """The dataclass `owner` from a command's option values (`values`: its locals()): each option declared with
    `option(owner, field, ...)` or `argument(...)` fills that field, a path as a string and a list as a tuple;
    `converted`: the fields whose values the command converts itself."""
    fields = {}
    for name, param in inspect.signature(command).parameters.items():
        source = getattr(param.default, "source", None)
        if source is not None and source.owner is owner and source.name not in converted:
            fields[source.name] = _api_value(values[name])
    return owner(**fields, **converted)


def _api_value(value: Any) -> Any:
    """A CLI value as the API takes it: Path -> str, list -> tuple (of str where paths)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return tuple(_api_value(item) for item in value)
    return value


def comma_list(values: tuple) -> str:
    """(0.1, 0.25, 1.0) -> '0.1,0.25,1': a tuple default as the comma list the option parses."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


PROGRESS_HELP = "Show a progress bar (else log lines)."


def progress_option(owner: Any) -> Any:
    """--progress/--no-progress, bound to `owner`'s show_progress (an API parameter or a config field)."""
    table = Source(owner, "show_progress").help()
    return option(owner, "show_progress", "--progress/--no-progress", help=None if table else PROGRESS_HELP)


# --- one vocabulary: old option names kept for one release -----------------------------------------------------

# command -> {old name: new name}; an old name works in its command only, hidden from --help
DEPRECATED = {
    "screen": {"--report": "--out"},
    "evaluate privacy": {"--train": "--real-train", "--heldout": "--real-heldout"},
    "evaluate leakage": {"--train": "--real-train", "--test": "--real-test"},
}


def removal_release(version: str = __version__) -> str:
    """The release that drops the old names: the next minor one ('0.1.0' -> '0.2')."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return f"{major}.{minor + 1}"


def deprecation_line(old: str, new: str) -> str:
    """What an old option name prints to stderr, once per command line."""
    return f"medisyn: {old} is deprecated, use {new} (it will be removed in {removal_release()})"


def rename_deprecated(command: Any, args: list[str], aliases: dict[str, str]) -> list[str]:
    """`args` with each old option name of `aliases` renamed to its new one (one deprecation line to stderr per
    old name); values of options and everything after `--` are left alone."""
    names = {name for param in command.params for name in param.opts + param.secondary_opts}
    takes_value = {
        name
        for param in command.params
        if getattr(param, "is_flag", True) is False
        and not getattr(param, "count", False)  # an option with a value
        for name in param.opts
    }
    renamed, warned, value_next = [], set(), False
    for index, arg in enumerate(args):
        if value_next:
            renamed.append(arg)
            value_next = False
            continue
        if arg == "--":
            return renamed + list(args[index:])
        name, equals, value = arg.partition("=")
        new = aliases.get(name)
        if new and new in names and name not in names:
            if name not in warned:
                sys.stderr.write(deprecation_line(name, new) + "\n")
                warned.add(name)
            name, arg = new, new + equals + value
        renamed.append(arg)
        value_next = name in takes_value and not equals
    return renamed


class VocabularyGroup(TyperGroup):
    """A command group whose commands accept their old option names of DEPRECATED (hidden from --help)."""

    def resolve_command(self, ctx: Any, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        path = name if ctx.parent is None else f"{ctx.info_name} {name}"
        if command is not None and path in DEPRECATED:
            rest = rename_deprecated(command, rest, DEPRECATED[path])
        return name, command, rest


# --- --json PATH ------------------------------------------------------------------------------------------------


def _check_json_path(value: str | None) -> str | None:
    if value and value != "-" and Path(value).is_dir():
        raise typer.BadParameter(
            f"{value} is a folder; give a file name such as {Path(value) / 'summary.json'}"
        )
    return value


def json_option() -> Any:
    """--json PATH (or - for stdout): the command's summary table(s) as JSON (cli/tables.py)."""
    return option(Tables, "json_path", "--json", help=JSON_HELP, metavar="PATH", callback=_check_json_path)
