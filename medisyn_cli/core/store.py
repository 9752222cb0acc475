"""The resume unit: every batch of a run is written under OUT/_work and marked done last; merge consolidates.

    OUT/_work/config.json                 what the result depends on; every process and resume must agree
    OUT/_work/parquet/b-0000012-00000.parquet     the batch's rows (renamed in when complete)
    OUT/_work/imagefolder/b-0000012.csv   its metadata.csv rows
    OUT/_work/images/<label>/<id>.png     its PNGs (the ImageFolder, published by one rename when complete)
    OUT/_work/rejected/b-0000012.parquet  its rejected near-copies
    OUT/_work/done/b-0000012.json         written last: ids kept and per-class counts

A batch without its done file is made again from scratch (same ids, same seeds, same images), so a run killed
at any moment loses at most the batches in flight. When every batch is done, `consolidate` writes the final
parquet/part-*.parquet, imagefolder/metadata.csv and rejected.parquet in plan order, identical whatever the
sharding and however often the run was interrupted. `parquet/` and `imagefolder/` are built under OUT/_work and
each appears in OUT by one rename, so no loader ever sees a partial dataset; run.json is written last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import naming, to_json
from medisyn_cli.core.runlock import RunBusy, RunLock

WORK = "_work"


class IncompleteRun(MedisynError):
    """merge found batches that are not done yet."""


def batch_name(batch: int) -> str:
    return f"b-{batch:07d}"


class WorkDir:
    """OUT/_work of one run: config.json shared by every process, per-batch files, done markers written last.

    Subclasses name another folder, its sub-folders and lock (index_shards.ShardDir for sharded index builds).
    """

    NAME, FOLDERS, LOCK = WORK, ("done", "parquet", "imagefolder", "images", "rejected"), "consolidate.lock"

    def __init__(self, out: Path):
        self.out, self.root = Path(out), Path(out) / self.NAME

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def exists(self) -> bool:
        return self.config_path.exists()

    def create_or_join(self, record: dict, resolved: tuple[str, ...] = ()) -> bool:
        """Write config.json if no process has yet (atomically); else check its key matches (`resolved` key fields
        are compared only when both give them). True if created."""
        for name in self.FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".config.json.{os.getpid()}.tmp"
        try:
            with naming(self.config_path):
                tmp.write_text(to_json(record))
            os.link(tmp, self.config_path)  # atomic: fails if another process got there first
            return True
        except FileExistsError:
            check_same_run(self.read_config()["key"], record["key"], self.out, resolved)
            return False
        finally:
            tmp.unlink(missing_ok=True)

    @property
    def lock_path(self) -> Path:
        return self.root / self.LOCK

    def lock(self) -> bool:
        """Take the right to consolidate or merge; False if another live process has it (a dead one's is taken
        over). Held until `unlock` or the process ends."""
        try:
            self._lock = RunLock(self.lock_path, f"consolidation of {self.out}").acquire()
            return True
        except RunBusy:
            return False

    def unlock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def read_config(self) -> dict:
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, ValueError) as exc:
            raise MedisynError(f"{self.config_path}: cannot read the run's recorded config ({exc})") from exc

    def clean_partial(self) -> None:
        """Remove temp files left by killed processes; only when no process is writing (all batches done)."""
        for folder in (self.root, self.out / "imagefolder"):
            if folder.exists():
                for tmp in folder.rglob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    def done(self) -> set[int]:
        """Numbers of the batches marked done."""
        return {int(p.stem[2:]) for p in (self.root / "done").glob("b-*.json")}

    def mark_done(self, batch: int, record: dict) -> None:
        path = self.root / "done" / f"{batch_name(batch)}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(to_json(record, indent=None))
        tmp.replace(path)

    def done_records(self):
        """The done files in batch order."""
        for path in sorted((self.root / "done").glob("b-*.json")):
            yield json.loads(path.read_text())


def missing_report(batches: int, done: set[int], shard_count: int, batch_sizes) -> dict[int, tuple[int, int]]:
    """shard -> (missing batches, missing images) for every shard with work left."""
    report: dict[int, list[int]] = {}
    for batch in range(batches):
        if batch not in done:
            entry = report.setdefault(batch % shard_count, [0, 0])
            entry[0] += 1
            entry[1] += batch_sizes(batch)
    return {shard: (b, n) for shard, (b, n) in sorted(report.items())}


# --- consolidation ----------------------------------------------------------------------------------------


def differences(recorded: dict, current: dict, resolved: tuple[str, ...] = ()) -> list[str]:
    """'option: recorded there, current now' for every option that differs (unset `resolved` options skipped)."""
    names = sorted(set(recorded) | set(current))
    return [
        f"{name}: {recorded.get(name)!r} there, {current.get(name)!r} now"
        for name in names
        if recorded.get(name) != current.get(name)
        and not (name in resolved and (current.get(name) is None or recorded.get(name) is None))
    ]


def check_same_run(recorded: dict, current: dict, out, resolved: tuple[str, ...] = ()) -> None:
    """A clear error naming every option that differs from the run already in OUT."""
    differ = differences(recorded, current, resolved)
    if differ:
        raise MedisynError(
            f"--out {out}: holds a run with other settings ({'; '.join(differ)}); use the same "
            f"options, another --out, or --overwrite to start again"
        )
