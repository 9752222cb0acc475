"""Prompt manifests (CSV or JSONL) -> validated rows; every error names file:line and column."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import string
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.names import safe_name

REQUIRED = ("label", "prompt")
TEMPLATED = ("prompt", "negative_prompt")
MODES = ("RGB", "L")
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
MAX_LABEL = 200  # bytes of the file-safe label: <label>-<index>.png and its temp name stay under 255


@dataclass(frozen=True)
class PromptRow:
    """One prompt variant of a class, with its placeholders filled in."""

    line: int
    label: str
    prompt: str
    negative_prompt: str
    weight: float | None
    mode: str


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its rows, classes in first-seen order, class weights and hash."""

    path: Path
    sha256: str
    rows: tuple[PromptRow, ...]

    @cached_property
    def _classes(self) -> dict[str, list[PromptRow]]:
        """Rows grouped by class, classes in first-seen order: one pass, so no lookup scans every row."""
        classes: dict[str, list[PromptRow]] = {}
        for row in self.rows:
            classes.setdefault(row.label, []).append(row)
        return classes

    @property
    def labels(self) -> list[str]:
        return list(self._classes)

    def weights(self) -> dict[str, float]:
        return {label: rows[-1].weight for label, rows in self._classes.items()}

    def variants(self, label: str) -> list[PromptRow]:
        return list(self._classes.get(label, ()))


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a CSV or JSONL manifest; raise MedisynError naming file:line on bad input."""
    path = Path(path)
    if not path.exists():
        raise MedisynError(f"{path}: manifest not found")
    if path.is_dir():
        raise MedisynError(f"{path}: is a folder, expected a .csv or .jsonl manifest")
    raw = path.read_bytes()
    text = _decode(path, raw)
    if not text.strip():
        raise MedisynError(f"{path}: manifest is empty")
    records = _jsonl_records(path, text) if path.suffix in (".jsonl", ".ndjson") else _csv_records(path, text)
    rows = tuple(_parse_row(path, line, record) for line, record in records)
    if not rows:
        raise MedisynError(f"{path}: manifest has a header but no rows")
    return Manifest(path=path, sha256=hashlib.sha256(raw).hexdigest(), rows=_class_weights(path, rows))


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MedisynError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from exc


def _csv_records(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    _check_columns(path, columns)
    reader.fieldnames = columns
    records = []
    for record in reader:
        line = reader.line_num
        if None in record:
            raise MedisynError(f"{path}:{line}: more values than the {len(columns)} columns of the header")
        if all(not (v or "").strip() for v in record.values()):
            continue
        records.append((line, {k: (v or "").strip() for k, v in record.items()}))
    return records


def _jsonl_records(path: Path, text: str) -> list[tuple[int, dict]]:
    records = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as exc:
            raise MedisynError(f"{path}:{line}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise MedisynError(f"{path}:{line}: expected a JSON object per line")
        _check_columns(path, list(record), line)
        records.append((line, {k: _json_value(path, line, k, v) for k, v in record.items()}))
    return records


def _json_value(path: Path, line: int, column: str, value) -> str:
    """A JSONL value as the text a CSV cell would hold: text columns take strings, others strings or numbers."""
    if value is None:
        return ""
    text_only = column in (*REQUIRED, *TEMPLATED, "mode")
    if isinstance(value, str) or (
        not text_only and isinstance(value, int | float) and not isinstance(value, bool)
    ):
        return str(value).strip()
    wanted = "a string" if text_only else "a string or a number"
    raise MedisynError(
        f"{path}:{line}: column '{column}': expected {wanted}, got a JSON {_json_type(value)} "
        f"({json.dumps(value)[:60]})"
    )


def _json_type(value) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _check_columns(path: Path, columns: list[str], line: int = 1) -> None:
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise MedisynError(
            f"{path}:{line}: column {', '.join(repr(c) for c in repeated)} appears more than once in "
            f"the header; give each column once"
        )
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise MedisynError(
            f"{path}:{line}: missing required column '{missing[0]}' (found: {', '.join(columns) or 'none'})"
        )


def _parse_row(path: Path, line: int, record: dict) -> PromptRow:
    for column in REQUIRED:
        if not record.get(column):
            raise MedisynError(f"{path}:{line}: column '{column}' is empty")
    _label(path, line, record["label"])
    return PromptRow(
        line=line,
        label=record["label"],
        prompt=render(path, line, "prompt", record),
        negative_prompt=render(path, line, "negative_prompt", record)
        if record.get("negative_prompt")
        else "",
        weight=_weight(path, line, record.get("weight", "")),
        mode=_mode(path, line, record.get("mode", "")),
    )


def render(path: Path, line: int, column: str, record: dict) -> str:
    """Fill {placeholders} of a template column with the row's other columns."""
    template = record[column]
    values = {**record, "label_text": record["label"].replace("_", " ")}
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
        names = [name for name, _, _ in fields]
    except ValueError as exc:
        raise MedisynError(
            f"{path}:{line}: column '{column}': bad template ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    shaped = [
        f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        for name, spec, conversion in fields
        if spec or conversion
    ]
    if shaped:
        raise MedisynError(
            f"{path}:{line}: column '{column}': placeholder {shaped[0][:60]} has a format; write "
            f"plain {{name}} placeholders"
        )
    unknown = [n for n in names if n not in values or n in TEMPLATED]
    if unknown:
        usable = sorted(k for k in values if k not in TEMPLATED)
        raise MedisynError(
            f"{path}:{line}: column '{column}': unknown placeholder {{{unknown[0]}}} "
            f"(available: {', '.join('{' + k + '}' for k in usable)})"
        )
    return template.format(**values)


def _weight(path: Path, line: int, value: str) -> float | None:
    if value == "":
        return None
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0 or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise MedisynError(
            f"{path}:{line}: column 'weight': '{value}' is not a positive number from {MIN_WEIGHT:g} "
            f"to {MAX_WEIGHT:g}"
        )
    return weight


def _label(path: Path, line: int, label: str) -> None:
    """A label names files and folders: its file-safe form must fit in a file name with room for the id."""
    if len(safe_name(label).encode()) > MAX_LABEL:
        raise MedisynError(
            f"{path}:{line}: column 'label': '{label[:40]}...' is {len(label)} characters; labels "
            f"name files and folders and must be at most {MAX_LABEL} characters"
        )


def _mode(path: Path, line: int, value: str) -> str:
    if value == "":
        return "RGB"
    if value.upper() not in MODES:
        raise MedisynError(f"{path}:{line}: column 'mode': '{value}' is not one of {', '.join(MODES)}")
    return value.upper()


def _class_weights(path: Path, rows: tuple[PromptRow, ...]) -> tuple[PromptRow, ...]:
    """One weight per class: stated values must agree; blank rows take the class's (default 1)."""
    stated: dict[str, PromptRow] = {}
    for row in rows:
        seen = stated.setdefault(row.label, row) if row.weight is not None else row
        if seen.weight != row.weight:
            raise MedisynError(
                f"{path}:{row.line}: column 'weight': class '{row.label}' has weight {row.weight:g} "
                f"here but {seen.weight:g} on line {seen.line}; give one weight per class"
            )
    return tuple(
        replace(row, weight=stated[row.label].weight if row.label in stated else 1.0) for row in rows
    )
