"""The output-format registry: --format names -> OutputFormat objects (dataset.base), help and error texts from it.

    register_format("dicom", dicom.FORMAT)      # one module per format; registered here, not by import side effect
    get_format("webdataset").consolidate(work, out, batches, run)
    format_names()                              # ("dicom", "webdataset", ...) for --help and error texts

Adding a format: a module with an object that has the OutputFormat attributes and methods, and one
`register_format` line (here for medisyn's own); another package declares it as an entry point of the
`medisyn.formats` group instead (name = "module:OBJECT"), loaded the first time the registry lists its names or
is asked for one it does not hold (core.plugins).
"""

from __future__ import annotations

from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.plugins import load_plugins
from medisyn_cli.dataset import dicom, imagefolder, parquet, webdataset
from medisyn_cli.dataset.base import OutputFormat

_FORMATS: dict[str, OutputFormat] = {}
PLUGINS = "medisyn.formats"  # the entry point group of other packages' formats
METHODS = ("write_batch", "consolidate", "describe", "files", "keep_out", "card_lines")


def register_format(name: str, fmt: OutputFormat, replace: bool = False) -> None:
    """Make `fmt` the --format value `name`; ValueError if it lacks a method or the name is taken."""
    missing = [m for m in ("folder", "help", *METHODS) if not hasattr(fmt, m)]
    if missing:
        raise ValueError(f"format '{name}': missing {', '.join(missing)}")
    if name in _FORMATS and _FORMATS[name] is not fmt and not replace:
        raise ValueError(f"format '{name}' is already registered")
    if not name or "," in name:
        raise ValueError(f"format name {name!r}: must be a non-empty word without commas")
    _FORMATS[name] = fmt


def unregister_format(name: str) -> None:
    """Remove a registered format (plug-ins and tests)."""
    _FORMATS.pop(name, None)


def _formats() -> dict[str, OutputFormat]:
    load_plugins(PLUGINS, register_format)
    return _FORMATS


def format_names() -> tuple[str, ...]:
    """The registered format names, plug-ins included, in registration order."""
    return tuple(_formats())


def get_format(name: str) -> OutputFormat:
    """The format registered as `name`; MedisynError listing the known names otherwise."""
    try:
        return _FORMATS[name] if name in _FORMATS else _formats()[name]
    except KeyError:
        raise MedisynError(f"--format: '{name}' is not one of {', '.join(format_names())}") from None


def formats_help() -> str:
    """One line per registered format, for --help."""
    return "\n".join(f"{name}: {fmt.help}" for name, fmt in _formats().items())


register_format("parquet", parquet.FORMAT)
register_format("imagefolder", imagefolder.FORMAT)
register_format("dicom", dicom.FORMAT)
register_format("webdataset", webdataset.FORMAT)


# --format values that stand for several formats
ALIASES = {"both": ("parquet", "imagefolder")}
DEFAULT_FORMATS = ALIASES["both"]


def format_option(formats: tuple[str, ...]) -> str:
    """A tuple of formats as --format says it: an alias where one stands for exactly these, else a comma list."""
    aliases = [alias for alias, names in ALIASES.items() if tuple(formats) == names]
    return aliases[0] if aliases else ",".join(formats)


def format_files(out: Path, formats: tuple[str, ...] | None = None) -> set[str]:
    """The files the formats (default: every registered one) wrote in OUT, relative to it."""
    return {name for fmt in formats or format_names() for name in get_format(fmt).files(out)}


def parse_format_list(value: str) -> tuple[str, ...]:
    """'dicom,webdataset' (aliases expanded, duplicates dropped) -> registered names; MedisynError naming the
    unknown ones and listing the known."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    formats = tuple(dict.fromkeys(f for n in names for f in ALIASES.get(n, (n,))))
    unknown = [f for f in formats if f not in _formats()]
    if unknown or not formats:
        known = ", ".join([*format_names(), *ALIASES])
        raise MedisynError(f"--format: '{value}' is not a comma-separated list of {known}")
    return formats
