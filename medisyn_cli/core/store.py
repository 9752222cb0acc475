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

import csv
import json
import os
import shutil
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import to_json
from medisyn_cli.generate.runkey import check_same_run
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

    def create_or_join(self, record: dict) -> bool:
        """Write config.json if no process has yet (atomically); else check it matches. True if created."""
        for name in self.FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".config.json.{os.getpid()}.tmp"
        tmp.write_text(to_json(record))
        try:
            os.link(tmp, self.config_path)  # atomic: fails if another process got there first
            return True
        except FileExistsError:
            check_same_run(self.read_config()["key"], record["key"], self.out)
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

def consolidate(work: WorkDir, formats: tuple[str, ...], labels: list[str], rows_per_part: int,
                rejected_log=None) -> list[dict]:
    """Write the final dataset files from the batches, in plan order; returns the outputs for run.json.

    `rejected_log`: the log class the run's rejections were written with (None: an unscreened run).

    Each format is built under OUT/_work and published by one rename; a consolidation killed after a rename
    finds that format published and describes it instead of building it again.
    """
    outputs = []
    if "parquet" in formats:
        outputs.append(_publish(work.root / "parquet-out", work.out / "parquet", _describe_parquet,
                                lambda staged: _consolidate_parquet(work.root / "parquet", staged, rows_per_part)))
    if "imagefolder" in formats:
        _adopt_published_pngs(work)
        outputs.append(_publish(work.root / "images", work.out / "imagefolder", _describe_metadata,
                                lambda staged: _consolidate_metadata(work, staged)))
    if rejected_log is not None:
        outputs.append(_consolidate_rejected(work.root / "rejected", rejected_log(work.out / "rejected.parquet")))
    return outputs


def _publish(staged: Path, final: Path, describe, build) -> dict:
    """build(staged), then rename staged -> final in one step; an already published final is described."""
    if final.exists() and not staged.exists():
        return describe(final)
    output = build(staged)
    shutil.rmtree(final, ignore_errors=True)  # a partial one from an older version's interrupted consolidation
    staged.rename(final)
    return output


def _adopt_published_pngs(work: WorkDir) -> None:
    """A run started by medisyn 0.1 wrote PNGs straight to OUT/imagefolder: move them into the staged folder."""
    final, staged = work.out / "imagefolder", work.root / "images"
    if not final.exists() or (final / "metadata.csv").exists() and not staged.exists():
        return
    for png in final.rglob("*.png"):
        target = staged / png.relative_to(final)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(png, target)
    shutil.rmtree(final)


def _describe_parquet(folder: Path) -> dict:
    import pyarrow.parquet as pq

    files = sorted(p.name for p in folder.glob("part-*.parquet"))
    return {"format": "parquet", "rows": sum(pq.ParquetFile(folder / f).metadata.num_rows for f in files),
            "files": files}


def _describe_metadata(folder: Path) -> dict:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    return {"format": "imagefolder", "rows": rows, "files": ["metadata.csv"]}


def _consolidate_parquet(source: Path, target: Path, rows_per_part: int) -> dict:
    """Batch files -> part-NNNNN.parquet of rows_per_part rows (schema and its HF metadata kept)."""
    import pyarrow.parquet as pq

    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("part-*.parquet"):
        old.unlink()
    files, rows, handle, part_rows = [], 0, None, 0
    for batch_file in sorted(source.glob("b-*.parquet")):
        table = pq.read_table(batch_file)
        while table.num_rows:
            if handle is None:
                tmp = target / f".part-{len(files):05d}.parquet.tmp"
                handle = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            take = min(table.num_rows, rows_per_part - part_rows)
            handle.write_table(table.slice(0, take), row_group_size=64)
            table, part_rows, rows = table.slice(take), part_rows + take, rows + take
            if part_rows == rows_per_part:
                files.append(_finish_part(handle, tmp, target, len(files)))
                handle, part_rows = None, 0
    if handle is not None:
        files.append(_finish_part(handle, tmp, target, len(files)))
    return {"format": "parquet", "rows": rows, "files": files}


def _finish_part(handle, tmp: Path, target: Path, number: int) -> str:
    handle.close()
    final = target / f"part-{number:05d}.parquet"
    tmp.replace(final)
    return final.name


def _consolidate_metadata(work: WorkDir, target: Path) -> dict:
    """Batch CSVs -> imagefolder/metadata.csv; PNGs of ids that were not kept (a redone batch) are removed."""
    from medisyn_cli.generate.writers import COLUMNS

    target.mkdir(parents=True, exist_ok=True)
    tmp, rows, listed = target / ".metadata.csv.tmp", 0, set()
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", *COLUMNS])
        writer.writeheader()
        for batch_file in sorted((work.root / "imagefolder").glob("b-*.csv")):
            with open(batch_file, newline="", encoding="utf-8") as source:
                for row in csv.DictReader(source):
                    writer.writerow(row)
                    listed.add(row["file_name"])
                    rows += 1
    tmp.replace(target / "metadata.csv")
    for png in target.rglob("*.png"):
        if png.relative_to(target).as_posix() not in listed:
            png.unlink()
    return {"format": "imagefolder", "rows": rows, "files": ["metadata.csv"]}


def _consolidate_rejected(source: Path, log) -> dict:
    import pyarrow.parquet as pq

    for batch_file in sorted(source.glob("b-*.parquet")):
        table = pq.read_table(batch_file, schema=log.schema)
        log.handle.write_table(table)
        log.rows += table.num_rows
    return {"format": "rejected", **log.close()}


def remove(work: WorkDir) -> None:
    """Delete the work folder once the dataset is consolidated."""
    shutil.rmtree(work.root, ignore_errors=True)
