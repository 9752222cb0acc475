"""Which output folders are medisyn's, and how an overwritten run is moved aside instead of deleted.

A folder is medisyn's only if it holds `.medisyn`, a marker with a run id that `generate` wrote when it created
the folder. `--overwrite` renames such a folder to `<name>.previous-<run id>` beside it and deletes that only once
the new run is complete, and then only the files medisyn writes: anything else found there is left in place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

MARKER = ".medisyn"
LOCK = ".medisyn.lock"
LEGACY_MARKER = "output folder of medisyn generate\n"  # written by medisyn 0.1, without a run id
# everything generate, merge and screen write into an output folder
ENTRIES = (
    MARKER,
    LOCK,
    "run.json",
    "README.md",
    "parquet",
    "imagefolder",
    "rejected.parquet",
    "_work",
    "screen",
    "slurm",
)


def holds_files(folder: Path, ignore=None) -> bool:
    """True if `folder` exists and is not an empty folder (a file there counts); `ignore(path)` names entries
    that do not count (e.g. a lock or leftover temp files)."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        return True
    return any(ignore is None or not ignore(entry) for entry in folder.iterdir())


def new_run_id() -> str:
    """A random id naming one run."""
    return uuid.uuid4().hex[:12]


def read_marker(out: Path) -> dict | None:
    """The marker of a medisyn output folder, or None if `out` is not one."""
    path = Path(out) / MARKER
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if text == LEGACY_MARKER:
        return {"tool": "medisyn", "run_id": "v0.1"}
    try:
        marker = json.loads(text)
    except ValueError:
        return None
    if not isinstance(marker, dict) or marker.get("tool") != "medisyn" or not marker.get("run_id"):
        return None
    return marker


def is_ours(out: Path) -> bool:
    """True if medisyn made this folder (it holds medisyn's marker with a run id)."""
    return read_marker(out) is not None


def claim_marker(out: Path, run_id: str) -> str:
    """Mark `out` as the output folder of run `run_id`, unless a marker is there; returns the folder's run id.

    The marker appears complete or not at all, and of several processes (shards) starting at once, one writes it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tmp = out / f".{MARKER}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(
        json.dumps({"tool": "medisyn", "command": "generate", "run_id": run_id, "created": created}) + "\n"
    )
    try:
        os.link(tmp, out / MARKER)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return (read_marker(out) or {}).get("run_id", run_id)


def aside_path(out: Path) -> Path:
    """Where an overwritten run waits until the new one completes: a sibling named after its run id."""
    marker = read_marker(out) or {}
    base = out.with_name(f"{out.name}.previous-{marker.get('run_id', 'run')}")
    path, number = base, 1
    while path.exists():
        path, number = base.with_name(f"{base.name}-{number}"), number + 1
    return path


def move_aside(out: Path) -> Path:
    """Rename medisyn's output folder `out` out of the way (one rename); returns where it went."""
    target = aside_path(out)
    out.rename(target)
    return target


def discard_previous(path: Path) -> list[str]:
    """Delete a run moved aside, but only the entries medisyn writes; returns the names left in place."""
    path = Path(path)
    if not path.exists() or not is_ours(path):
        return []
    left = sorted(p.name for p in path.iterdir() if p.name not in ENTRIES)
    for name in ENTRIES:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if not left:
        path.rmdir()
    return left
