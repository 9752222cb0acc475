"""The one module that deletes or replaces files in folders a user names: what medisyn owns, and nothing else.

The rule, for every command that writes a folder: it may create the folder, or reuse one that holds medisyn's
marker (`.medisyn`: the command and run id that made it, and `files`, the record of every file it wrote there);
it never deletes or overwrites a file it did not write. A foreign non-empty folder is refused with one line.
`--overwrite` moves the old result aside and, once the new one is complete, deletes only the files the old one
recorded; anything else stays and is named. Temp names are `.medisyn-tmp-<run id>-NAME`, inside a folder the
command owns, so no user file can collide with them. Nothing outside `core/` calls rmtree, unlink or rmdir
(tests/test_ownership.py): they call `remove_temp`, `remove_private`, `remove_recorded` or `discard` here.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.runlock import RunBusy, RunLock, busy_message, read_holder

MARKER = ".medisyn"
LOCK = ".medisyn.lock"
TMP = ".medisyn-tmp-"
PRIVATE = ("_work", "_shards")  # medisyn's own scratch folders inside a folder it owns
NESTED = ("screen", "evaluate", "report")  # commands whose folder inside a result is part of that result
LEGACY_MARKER = "output folder of medisyn generate\n"  # written by medisyn 0.1, without a run id


# --- markers ------------------------------------------------------------------------------------------


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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def read_marker(out: Path) -> dict | None:
    """The marker of a folder medisyn made, or None if `out` is not one."""
    try:
        text = (Path(out) / MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if text == LEGACY_MARKER:
        return {"tool": "medisyn", "command": "generate", "run_id": "v0.1"}
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


def _new_marker(out: Path, run_id: str, command: str) -> dict:
    marker = {"tool": "medisyn", "command": command, "run_id": run_id, "created": now()}
    parent = read_marker(Path(out).parent)
    if parent is not None:  # a folder inside another medisyn folder (DATASET/screen): part of that result
        marker["parent"] = parent["run_id"]
    return marker


def write_marker(out: Path, marker: dict) -> None:
    """Replace the marker (the caller holds the folder's lock)."""
    tmp = Path(out) / f"{TMP}{uuid.uuid4().hex[:8]}-marker"
    tmp.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, Path(out) / MARKER)


def claim_marker(out: Path, run_id: str, command: str = "generate") -> str:
    """Mark `out` as the folder of run `run_id`, unless a marker is there; returns the folder's run id.

    The marker appears complete or not at all, and of several processes (shards) starting at once, one writes it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{TMP}{uuid.uuid4().hex}-marker"
    tmp.write_text(json.dumps(_new_marker(out, run_id, command)) + "\n")
    try:
        os.link(tmp, out / MARKER)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return (read_marker(out) or {}).get("run_id", run_id)


def record_files(out: Path, names, lists: dict[str, str] | None = None, replace: bool = False) -> None:
    """Add `names` (relative paths) to the marker's record of files written; `lists`: a recorded CSV whose
    column names more files (relative to the CSV's folder), e.g. {"imagefolder/metadata.csv": "file_name"}."""
    marker = read_marker(out)
    if marker is None:
        raise MedisynError(f"{out}: no {MARKER} marker, so medisyn cannot record its files there")
    files = set() if replace else set(marker.get("files") or [])
    marker["files"] = sorted(files | {Path(name).as_posix() for name in names})
    if lists is not None or replace:
        marker["lists"] = {**({} if replace else marker.get("lists") or {}), **(lists or {})}
    write_marker(out, marker)


def recorded(out: Path, fallback=None) -> set[str] | None:
    """Relative paths of the files medisyn recorded writing in `out` (the lists expanded); `fallback(out)` (or
    None) when the marker holds no record (a folder of an older version, or a run killed before its record)."""
    marker = read_marker(out) or {}
    if "files" not in marker:
        return fallback(Path(out)) if fallback is not None else None
    names = set(marker["files"])
    for listing, column in (marker.get("lists") or {}).items():
        names |= listed_files(Path(out), listing, column)
    return names


def listed_files(out: Path, listing: str, column: str) -> set[str]:
    """The files a recorded CSV names (relative to `out`); empty if it is missing or unreadable."""
    base = Path(listing).parent
    try:
        with open(out / listing, newline="", encoding="utf-8") as handle:
            return {(base / row[column]).as_posix() for row in csv.DictReader(handle) if row.get(column)}
    except (OSError, KeyError, ValueError, csv.Error):
        return set()


# --- claiming a folder ----------------------------------------------------------------------------------


def resolve_out(path: Path, option: str = "--out") -> Path:
    """The folder a path names: `.` and symlinks resolved (a symlink to a folder is followed, never replaced)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise MedisynError(f"{option} {path}: a symbolic link to {os.readlink(path)}, which does not exist")
    resolved = path.resolve()
    if resolved.exists() and not resolved.is_dir():
        raise MedisynError(f"{option} {path}: exists and is not a folder")
    return resolved


def refuse_cwd(out: Path, option: str = "--out") -> None:
    """--overwrite moves `out` aside: refused when it is the current folder or holds it."""
    cwd = Path.cwd().resolve()
    if cwd == out or out in cwd.parents:
        raise MedisynError(
            f"{option} {out}: is the current folder (or holds it), which --overwrite cannot move aside; "
            f"run the command from another folder"
        )


def refuse_aside(out: Path, option: str = "--out") -> None:
    """A run moved aside by --overwrite waits to be deleted: nothing may be written into it."""
    for folder in (out, *out.parents):
        marker = read_marker(folder) if ".previous-" in folder.name else None  # moved back: writable again
        if marker is not None and marker.get("aside"):
            raise MedisynError(
                f"{option} {out}: is inside {folder}, a run moved aside by --overwrite of "
                f"{marker['aside'].get('of')} (deleted when that completes); choose another folder"
            )


def foreign_message(out: Path, option: str, command: str) -> str:
    return (
        f"{option} {out}: folder exists, is not empty and was not made by medisyn {command} (no {MARKER} "
        f"marker), so medisyn will neither write into it nor delete anything there; choose another folder"
    )


def refuse_foreign(out: Path, command: str, fallback=None, option: str = "--out") -> None:
    """MedisynError if `out` is a file, or a non-empty folder medisyn did not make (one holding only the files
    `fallback(out)` names, an older medisyn's, is accepted)."""
    if out.exists() and not out.is_dir():
        raise MedisynError(f"{option} {out}: exists and is not a folder")
    if holds_files(out) and not is_ours(out) and legacy_files(out, fallback) is None:
        raise MedisynError(foreign_message(out, option, command))


class Owned:
    """A folder this process may write, holding its lock: files are checked free, written, recorded."""

    def __init__(
        self, path: Path, command: str, marker: dict, lock: RunLock | None, created: bool, fallback=None
    ):
        self.path, self.command, self.marker, self.lock, self.created = path, command, marker, lock, created
        self.run_id, self.fallback, self.notes, self.marked = new_run_id(), fallback, [], False

    def temp(self, name: str) -> Path:
        """A temp path of this run inside the folder: `.medisyn-tmp-<run id>-NAME`."""
        return self.path / f"{TMP}{self.run_id}-{name}"

    def foreign(self, names) -> list[str]:
        """The `names` that exist here and medisyn did not record writing."""
        mine = recorded(self.path, self.fallback) or set()
        return [n for n in names if (self.path / n).exists() and Path(n).as_posix() not in mine]

    def check_free(self, names, option: str = "--out") -> None:
        """MedisynError naming the first file of `names` that exists and is not medisyn's."""
        foreign = self.foreign(names)
        if foreign:
            raise MedisynError(
                f"{option} {self.path}: holds {foreign[0]}, which medisyn did not write; it is left as it is "
                f"(move it away, or choose another folder)"
            )

    def record(self, names) -> None:
        """Add `names` (relative paths this run wrote) to the folder's record."""
        record_files(self.path, names)

    def keep(self) -> None:
        """The command completed: the folder and its marker stay even if it wrote no file (an empty copy)."""
        self.marked = False

    def publish(self, tmp: Path, name: str) -> Path:
        """Rename this run's temp file `tmp` to NAME (checked free first) and record it."""
        self.check_free([name])
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        record_files(self.path, [name])
        return target

    def write_text(self, name: str, text: str) -> Path:
        """Write NAME (a temp name first, then one rename) and record it."""
        tmp = self.temp(Path(name).name)
        tmp.write_text(text, encoding="utf-8")
        try:
            return self.publish(tmp, name)
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Drop the lock; a marker this run wrote into a folder it left empty is removed (and the folder, if
        this run created it)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.marked and not holds_files(self.path, lambda p: p.name in (MARKER, LOCK)):
            for name in (MARKER, LOCK):
                (self.path / name).unlink(missing_ok=True)
            if self.created:
                remove_empty(self.path)

    def __enter__(self) -> Owned:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(
    path: Path,
    command: str,
    option: str = "--out",
    accept: tuple[str, ...] = (),
    fallback=None,
    adopt: bool = False,
) -> Owned:
    """Take `path` for `command`: create it, or reuse a folder made by medisyn `command` (or one of `accept`);
    its lock is held until `release`. A foreign non-empty folder, a file or a run moved aside: MedisynError.
    `fallback(folder)`: the files medisyn wrote in a folder whose marker holds no record (older versions);
    `adopt`: a folder without a marker that holds only such files is taken as medisyn's."""
    out = resolve_out(path, option)
    refuse_aside(out, option)
    created = not out.exists()
    refuse_foreign(out, command, fallback if adopt else None, option)
    adopt = legacy_files(out, fallback) if adopt else None
    marker = read_marker(out)
    if marker is not None and marker.get("command", "generate") not in (command, *accept):
        raise MedisynError(
            f"{option} {out}: is the folder of medisyn {marker.get('command', 'generate')}, not of "
            f"{command}; choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out / LOCK, f"{option} {out}")
    try:
        lock.acquire()
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    marked = marker is None and not adopt
    if marker is None:
        claim_marker(out, new_run_id(), command)
        record_files(out, adopt or [])
        marker = read_marker(out)
    owner = Owned(out, command, marker, lock, created, fallback)
    owner.marked = marked
    owner.notes = recover(out)
    return owner


def legacy_files(out: Path, fallback) -> set[str] | None:
    """A folder without a marker that holds only files an older medisyn wrote there (`fallback` names them)."""
    if fallback is None or not out.is_dir() or is_ours(out):
        return None
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()}
    return names if names and names <= set(fallback(out)) else None


def recover(out: Path) -> list[str]:
    """Under the folder's lock, what runs killed mid-write left: an old result moved into a temp folder by
    an unfinished replace is moved back; other temp entries of dead runs are removed. Returns one note each."""
    notes = []
    for temp in sorted(out.glob(f"{TMP}*")):
        if temp.is_dir() and temp.name.endswith("-old"):
            back = [p for p in temp.rglob("*") if not p.is_dir() and not (out / p.relative_to(temp)).exists()]
            for path in back:
                (out / path.relative_to(temp)).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, out / path.relative_to(temp))
            notes.append(
                f"{len(back)} files of the result a killed --overwrite had moved aside were put back"
            )
        else:
            notes.append(f"removed {temp.name}, the unfinished output of a run that was killed")
        _delete(temp)
    return notes


def refuse_if_busy(folder: Path, what: str) -> None:
    """RunBusy, naming the process, if a live process holds `folder`'s lock."""
    holder = read_holder(folder / LOCK)
    if holder is not None and not RunLock(folder / LOCK).is_stale(holder):
        raise RunBusy(busy_message(folder / LOCK, what, holder))


# --- deleting: only temp names, private folders, and recorded files -------------------------------------


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_temp(path: Path) -> None:
    """Delete a temp file or folder this process made (its name says so: `.medisyn-tmp-*` or `*.tmp*`)."""
    path = Path(path)
    if not (path.name.startswith(TMP) or ".tmp" in path.name):
        raise ValueError(f"{path}: not a temp name, medisyn will not delete it")
    _delete(path)


def remove_private(path: Path) -> None:
    """Delete a path inside medisyn's own scratch folder (OUT/_work, INDEX/_shards, a temp folder): claims
    refuse a foreign folder before any command writes there, so these names are medisyn's."""
    path = Path(path)
    if not any(part in PRIVATE or part.startswith(TMP) for part in path.parts):
        raise ValueError(f"{path}: not inside a scratch folder of medisyn's, medisyn will not delete it")
    _delete(path)


def remove_empty(folder: Path) -> bool:
    """Remove a folder only if it is empty (a folder this process created and wrote nothing into)."""
    try:
        Path(folder).rmdir()
        return True
    except OSError:
        return False


def remove_recorded(root: Path, names) -> list[str]:
    """Delete the files `names` (relative to `root`) and the folders that leaves empty; returns the names
    of the entries left in `root`."""
    root = Path(root)
    parents = set()
    for name in sorted(set(names)):
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif path.is_dir():
            continue  # a folder is removed only once empty
        parents.update(p for p in path.parents if root in p.parents)
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: something medisyn did not write is there
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def discard(folder: Path, fallback=None) -> list[str]:
    """Delete a result medisyn made (moved aside, or replaced): only the files its marker records (`fallback`
    names them for folders without a record), and nested medisyn folders that belong to it; returns the
    relative paths left in place (their folders kept)."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return []
    names = set(recorded(folder, fallback) or ())
    for nested in sorted(p.parent for depth in ("*", "*/*") for p in folder.glob(f"{depth}/{MARKER}")):
        inner = read_marker(nested)
        if inner is not None and inner.get("parent") == marker["run_id"] and inner.get("command") in NESTED:
            discard(nested)
    for name in (MARKER, LOCK):
        names.add(name)
    names |= {p.relative_to(folder).as_posix() for p in folder.glob(f"{TMP}*") if p.is_file()}
    for temp in folder.glob(f"{TMP}*"):
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
    left = remove_recorded(folder, names)
    if not left:
        try:
            folder.rmdir()
        except OSError:
            pass
    return left


# --- --overwrite: the old result moved aside -----------------------------------------------------------


def aside_path(out: Path) -> Path:
    """Where an overwritten run waits until the new one completes: a sibling named after its run id."""
    marker = read_marker(out) or {}
    base = out.with_name(f"{out.name}.previous-{marker.get('run_id', 'run')}")
    path, number = base, 1
    while path.exists():
        path, number = base.with_name(f"{base.name}-{number}"), number + 1
    return path


def move_aside(out: Path, by: str = "") -> Path:
    """Rename medisyn's folder `out` out of the way (one rename), marked as moved aside; returns where it went.
    Refused (RunBusy) while a process writes into a medisyn folder inside it."""
    for nested in out.iterdir():
        if nested.is_dir() and (nested / LOCK).exists():
            refuse_if_busy(nested, f"{nested} (inside {out}, which --overwrite would move aside)")
    target = aside_path(out)
    out.rename(target)
    marker = read_marker(target)
    if marker is not None:
        marker["aside"] = {"of": str(out), "by": by, "at": now()}
        write_marker(target, marker)
    return target


def find_asides(out: Path) -> list[Path]:
    """Runs moved aside from `out` by an --overwrite that never completed (killed), oldest first."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    found = [p for p in out.parent.glob(f"{out.name}.previous-*") if p.is_dir() and is_ours(p)]
    return sorted(found, key=lambda p: (read_marker(p) or {}).get("aside", {}).get("at", ""))


def asides_note(out: Path, skip: Path | None = None) -> str:
    """One sentence naming the runs a killed --overwrite left beside `out` (empty if none)."""
    found = [p for p in find_asides(out) if p != skip]
    if not found:
        return ""
    return (
        f"{len(found)} earlier run(s) moved aside by an --overwrite of {out} that did not complete are kept: "
        f"{', '.join(map(str, found))} (delete them, or move one back, when you no longer need them)"
    )


def replace_in_place(owner: Owned, staging: Path, names: list[str]) -> list[str]:
    """Publish a complete new result built in `staging` (inside `owner.path`) over the old one: the old
    recorded files are moved into a temp folder, the new ones renamed in, the record replaced, the old files
    deleted. Returns the entries left that medisyn did not write."""
    out = owner.path
    old_names = sorted(recorded(out, owner.fallback) or ())
    owner.check_free(names)
    old = owner.temp("old")
    for name in old_names:
        if (out / name).exists() and name not in (MARKER, LOCK):
            (old / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(out / name, old / name)
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    record_files(out, names, replace=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    remove_recorded(out, [n for n in old_names if n not in names])  # their emptied folders
    mine = set(names) | {MARKER, LOCK}
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if not p.is_dir() and p.relative_to(out).as_posix() not in mine
    )
