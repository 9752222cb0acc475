"""Consolidation: when every batch of a run is done, write the final parquet/, imagefolder/ and
rejected.parquet in plan order (each format built under OUT/_work and published by one rename)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.ownership import listed_files, remove_empty, remove_private, remove_recorded
from medisyn_cli.core.store import WorkDir
from medisyn_cli.generate.writers.base import COLUMNS


def consolidate(work: WorkDir, formats: tuple[str, ...], rows_per_part: int, rejected_log=None) -> list[dict]:
    """Write the final dataset files from the batches, in plan order; returns the outputs for run.json.

    `rejected_log`: the log class the run's rejections were written with (None: an unscreened run).

    Each format is built under OUT/_work and published by one rename; a consolidation killed after a rename
    finds that format published and describes it instead of building it again.
    """
    outputs = []
    if "parquet" in formats:
        outputs.append(
            _publish(
                work.root / "parquet-out",
                work.out / "parquet",
                _describe_parquet,
                lambda staged: _consolidate_parquet(work.root / "parquet", staged, rows_per_part),
            )
        )
    if "imagefolder" in formats:
        _adopt_published_pngs(work)
        outputs.append(
            _publish(
                work.root / "images",
                work.out / "imagefolder",
                _describe_metadata,
                lambda staged: _consolidate_metadata(work, staged),
            )
        )
    if rejected_log is not None:
        outputs.append(
            _consolidate_rejected(work.root / "rejected", rejected_log(work.out / "rejected.parquet"))
        )
    return outputs


def _publish(staged: Path, final: Path, describe, build) -> dict:
    """build(staged), then rename staged -> final in one step; an already published final is described."""
    if final.exists() and not staged.exists():
        return describe(final)
    output = build(staged)
    if final.exists():  # a partial one from an older version's interrupted consolidation
        root = final.parent
        remove_recorded(root, [p.relative_to(root).as_posix() for p in final.rglob("part-*.parquet")])
        listing = f"{final.name}/metadata.csv"
        remove_recorded(root, [*listed_files(root, listing, "file_name"), listing])
        if final.exists():
            raise MedisynError(f"{final}: holds files medisyn did not write; move them away, then run again")
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
    remove_recorded(work.out, ["imagefolder/metadata.csv"])
    remove_empty(final)


def _describe_parquet(folder: Path) -> dict:
    import pyarrow.parquet as pq

    files = sorted(p.name for p in folder.glob("part-*.parquet"))
    return {
        "format": "parquet",
        "rows": sum(pq.ParquetFile(folder / f).metadata.num_rows for f in files),
        "files": files,
    }


def _describe_metadata(folder: Path) -> dict:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    return {"format": "imagefolder", "rows": rows, "files": ["metadata.csv"]}


def _consolidate_parquet(source: Path, target: Path, rows_per_part: int) -> dict:
    """Batch files -> part-NNNNN.parquet of rows_per_part rows (schema and its HF metadata kept)."""
    import pyarrow.parquet as pq

    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("part-*.parquet"):
        remove_private(old)
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
            remove_private(png)
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
    remove_private(work.root)
