"""One defaults table (#15): every Typer option bound to a config field has that field's default and help."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.cli.options import argument, comma_list, option
from medisyn_cli.dataset.formats import parse_format_list
from medisyn_cli.evaluate.utility import UtilityConfig, parse_fractions
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.screening.audit import ScreenConfig, screen_dataset
from medisyn_cli.screening.build import IndexConfig, build_index
from medisyn_cli.study.build import StudyConfig
from medisyn_cli.study.design import parse_mix

# Options with no field or parameter behind them, and why.
UNBOUND = {
    ("generate", "slurm_array"): "None runs here; SlurmOptions.array has no default",
    ("screen", "fail_on_copies"): "an exit code, not an API parameter",
}


def _commands() -> list[tuple[str, object]]:
    found = []

    def walk(command, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in sorted(command.commands.items()):
                walk(sub, path + (name,))
        else:
            found.append((" ".join(path), command))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = _commands()
IDS = [path for path, _ in COMMANDS]


def _sources(command) -> dict:
    """Parameter name -> the options.Source its default came from (None: a plain typer.Option)."""
    function = inspect.unwrap(command.callback)
    parameters = inspect.signature(function).parameters
    return {name: getattr(p.default, "source", None) for name, p in parameters.items()}


def _api_default(owner, name: str):
    """The default as the API declares it, read independently of cli.options."""
    if dataclasses.is_dataclass(owner):
        spec = {f.name: f for f in dataclasses.fields(owner)}[name]
        if spec.default is not dataclasses.MISSING:
            return spec.default
        return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else ...
    default = inspect.signature(owner).parameters[name].default
    return ... if default is inspect.Parameter.empty else default


def test_every_command_is_found():
    assert {
        "generate",
        "train",
        "screen",
        "index build",
        "evaluate utility",
        "evaluate privacy",
        "evaluate leakage",
        "evaluate fidelity",
        "evaluate alignment",
        "judge build",
        "study build",
        "study serve",
        "study score",
        "report",
    } <= set(IDS)


@pytest.mark.parametrize("path, command", COMMANDS, ids=IDS)
def test_options_take_default_and_help_from_the_table(path, command):
    sources = _sources(command)
    for param in command.params:
        source = sources[param.name]
        flag = (param.opts or [param.name])[0]
        if source is None:  # a required value has no default to drift; every other one needs a source
            assert param.required or (path, param.name) in UNBOUND, f"medisyn {path} {flag}: not from a table"
            continue
        default = _api_default(source.owner, source.name)
        if default is ...:
            assert param.required, f"medisyn {path} {flag}: the API requires it, the CLI does not"
        else:
            expected = default if source.to_cli is None else source.to_cli(default)
            assert not param.required, f"medisyn {path} {flag}: required, the API has a default"
            assert param.default == expected, f"medisyn {path} {flag}: {param.default!r} != {expected!r}"
        assert param.help and param.help.strip(), f"medisyn {path} {flag}: no help"
        table_help = source.help()
        assert table_help is None or param.help == table_help, f"{path} {flag}: help is not the table's"


def test_unbound_options_exist():
    by_path = dict(COMMANDS)
    for path, name in UNBOUND:
        assert _sources(by_path[path])[name] is None, f"{path} {name} is bound now: drop it from UNBOUND"


@pytest.mark.parametrize("path, command", COMMANDS, ids=IDS)
def test_help_renders(path, command):
    result = CliRunner().invoke(app, path.split() + ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for param in command.params:
        if param.opts and param.opts[0].startswith("--"):
            assert param.opts[0] in result.output


def test_converted_defaults_parse_back():
    """Where the option spells the API's value differently, parsing the option's default gives it back."""
    generate = {p.name: p for p in dict(COMMANDS)["generate"].params}
    assert parse_format_list(generate["format"].default) == GenerateConfig.formats
    assert parse_fractions(comma_list(UtilityConfig.fractions)) == UtilityConfig.fractions
    assert parse_mix(comma_list(StudyConfig.mix)) == StudyConfig.mix
    assert comma_list((5, 10)) == "5,10"


@pytest.mark.parametrize("config, function", [(IndexConfig, build_index), (ScreenConfig, screen_dataset)])
def test_loose_api_defaults_match_their_table(config, function):
    """build_index / screen_dataset keep their keyword signatures; their defaults are the table's."""
    params = inspect.signature(function).parameters
    assert [f.name for f in dataclasses.fields(config)] == list(params)
    for spec in dataclasses.fields(config):
        default = params[spec.name].default
        declared = ... if default is inspect.Parameter.empty else default
        assert _api_default(config, spec.name) == declared, spec.name


def test_option_refuses_missing_or_repeated_help():
    @dataclass
    class Example:
        documented: int = field(default=3, metadata={"help": "A documented field."})
        bare: int = 4

    assert option(Example, "documented", "--documented").default == 3
    assert option(Example, "bare", "--bare", help="Given here.").help == "Given here."
    assert argument(Example, "documented").help == "A documented field."
    with pytest.raises(ValueError, match="no help"):
        option(Example, "bare", "--bare")
    with pytest.raises(ValueError, match="help is in the table"):
        option(Example, "documented", "--documented", help="Again.")


def test_function_parameter_defaults():
    def serve(study: str, port: int = 8000) -> None:
        """An API function."""

    assert option(serve, "port", "--port", help="Port.").default == 8000
    assert argument(serve, "study", help="Folder.").default is ...
    assert isinstance(option(serve, "port", "--port", help="Port."), typer.models.OptionInfo)
