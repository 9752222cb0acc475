"""File plumbing written once: atomic writes (temp name, then rename) and JSON that never holds NaN."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temp name beside `path`, then rename it in: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def finite(value):
    """`value` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def to_json(data, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN/Infinity; other objects as str)."""
    return json.dumps(finite(json.loads(json.dumps(data, default=str))), indent=indent, allow_nan=False)


def write_json(path: Path, data, indent: int | None = 2) -> None:
    """Write strict JSON atomically."""
    atomic_write_text(path, to_json(data, indent))
