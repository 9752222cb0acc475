"""File plumbing written once: atomic writes (temp name, then rename) and JSON that never holds NaN."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temp name beside `path` to write to (ending in `suffix`, e.g. ".png" for format detection); renamed
    to `path` when the block ends, removed if it raises: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        with naming(path):
            yield tmp
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError in the block names `path` if it names no file (a write() refused by a full disk or `ulimit -f`
    says only 'File too large')."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temp name beside `path`, then rename it in: readers see the old file or the new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to a temp name beside `path`, then rename it in."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def finite(value):
    """`value` with numpy scalars as Python numbers and every NaN or infinity as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    numpy = sys.modules.get("numpy")  # a numpy scalar exists only once numpy is imported
    if numpy is not None and isinstance(value, numpy.generic):
        return finite(value.item())
    return value


def to_json(data, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN/Infinity; other objects as str)."""
    return json.dumps(finite(json.loads(json.dumps(data, default=str))), indent=indent, allow_nan=False)


def write_json(path: Path, data, indent: int | None = 2) -> None:
    """Write strict JSON atomically."""
    atomic_write_text(path, to_json(data, indent))
