"""The summary tables a command prints, and the same rows as JSON (`--json PATH`, or `-` for stdout).

A table is a list of rows (dicts of raw values) and its columns (a header, the row keys it shows, how it shows
them), so the JSON holds exactly the values the table shows, unrounded:

    {"command": "screen", "tables": {"screen": {"title": "...", "columns": {"label": ["label"], ...},
                                                "rows": [{"label": "cell", "screened": 4, ...}]}},
     "values": {...}}
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.core.files import to_json, write_json
from medisyn_cli.core.progress import results

JSON_HELP = (
    "Also write the summary table(s) as JSON to this file (written atomically; replaced if it exists), "
    "or - for stdout (the table then goes to stderr)."
)


@dataclass(frozen=True)
class Column:
    """One column of a summary table: its header, the row keys behind it, and how a row shows in it."""

    header: str
    keys: tuple[str, ...]
    show: Callable[[dict], str]


def column(header: str, key: str | None = None, fmt: Callable[[Any], str] = str) -> Column:
    """A column showing one value: row[key] (key defaults to the header; None if absent) through `fmt`."""
    key = key or header
    return Column(header, (key,), lambda row: fmt(row.get(key)))


def number(digits: int = 3) -> Callable[[Any], str]:
    """A formatter: a float with `digits` decimals; '-' for None or NaN."""

    def fmt(value) -> str:
        return "-" if value is None or value != value else f"{value:.{digits}f}"

    return fmt


def percent(value) -> str:
    """0.125 -> '12.5%'; '-' for None."""
    return "-" if value is None else f"{value:.1%}"


class Tables:
    """The tables one command prints; on leaving the block, written as JSON to `json_path` if one is given.

    With `json_path` "-", the JSON is stdout's only content: what the command prints goes to stderr instead.
    The JSON is written when the block ends without an error (a command's own exit code, such as
    `screen --fail-on-copies`, is raised after the block), and only if a table was shown."""

    def __init__(self, command: str, json_path: str | None = None):
        self.command, self.json_path = command, json_path
        self.tables: dict[str, dict] = {}
        self.values: dict[str, Any] = {}

    def __enter__(self) -> Tables:
        if self.json_path == "-":
            results.file = sys.stderr
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.json_path == "-":
            results.file = None  # back to stdout
        if self.json_path and self.tables and exc_type is None:
            with errors_as_exit_codes():
                self.write()

    def show(
        self,
        name: str,
        title: str,
        columns: Iterable[Column],
        rows: Iterable[dict],
        caption: str | None = None,
        style: Callable[[dict], str | None] | None = None,
        no_wrap: bool = False,
    ) -> None:
        """Print a table of `rows` and keep its values for the JSON under `name`."""
        columns, rows = list(columns), list(rows)
        table = Table(title=title, caption=caption)
        for col in columns:
            table.add_column(col.header, no_wrap=no_wrap)
        for row in rows:
            table.add_row(*(col.show(row) for col in columns), style=style(row) if style else None)
        results.print(table)
        keys = list(dict.fromkeys(key for col in columns for key in col.keys))
        self.tables[name] = {
            "title": title,
            "columns": {col.header: list(col.keys) for col in columns},
            "rows": [{key: row.get(key) for key in keys} for row in rows],
        }

    def document(self) -> dict:
        """What --json writes."""
        return {
            "command": self.command,
            "tables": self.tables,
            **({"values": self.values} if self.values else {}),
        }

    def write(self) -> None:
        """The JSON to `json_path` (atomically; its folder created) or to stdout for "-"."""
        if self.json_path == "-":
            sys.stdout.write(to_json(self.document()) + "\n")
            sys.stdout.flush()
            return
        path = Path(self.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.document())
