"""What every output format shares: the OutputFormat interface, the run facts its files carry, one-rename publishing.

A format is one module owning one folder of OUT. Its life in a run:

    fmt.write_batch(work, "b-0000012", items, run)   # one batch's (row, png) pairs under OUT/_work, atomically
    fmt.consolidate(work, out, batches, run)         # every done batch, in plan order -> OUT/<folder>, one rename
    fmt.keep_out(out, copy, drop_ids)                # `screen --keep-out`: a copy of OUT/<folder> without drop_ids
    fmt.card_lines(output, run)                      # the dataset card's lines on that folder
    fmt.files(out)                                   # the files it wrote in OUT (what --overwrite may delete)

`items`' PNG bytes are final (marked by the caller with marks.mark_png when the run marks its images); every
method is deterministic: the same rows and PNGs give the same bytes, whatever the sharding or resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.ownership import listed_files, remove_private, remove_recorded
from medisyn_cli.dataset.marks import Mark, weights_digest

DEFAULT_SHARD_SIZE = 1000  # WebDataset images per tar shard
DEFAULT_ROWS_PER_PART = 5000  # Parquet rows per part file


@dataclass(frozen=True)
class RunInfo:
    """The facts of a run that its files carry: taken from OUT/_work/config.json, so every shard and resume agrees.

    `started` (ISO 8601, the run's first start) dates the DICOM objects: a resumed run writes the same bytes."""

    run_id: str
    started: str
    labels: tuple[str, ...] = ()
    model: str = ""
    model_sha256: str = ""
    version: str = ""
    marked: bool = True  # False: `generate --no-mark` (PNG and Parquet unmarked; DICOM is always marked)
    shard_size: int = DEFAULT_SHARD_SIZE
    rows_per_part: int = DEFAULT_ROWS_PER_PART

    def mark(self, image_id: str = "") -> Mark:
        """The synthetic-content mark of one image of this run (dicom uses it even when `marked` is False)."""
        return Mark(self.run_id, image_id, self.model, self.model_sha256, self.version)


def content_id(record: dict) -> str:
    """The id the run's files carry: a digest of its run key (every option that changes the images), so the
    same run made twice, in shards or resumed gives the same bytes; a record without a key: its run_id."""
    if not record.get("key"):
        return str(record["run_id"])
    canonical = json.dumps(record["key"], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_info(record: dict, marked: bool | None = None, shard_size: int = DEFAULT_SHARD_SIZE) -> RunInfo:
    """RunInfo from a run record (OUT/_work/config.json or run.json); `marked` None: the record's --no-mark."""
    model, options = record.get("model") or {}, record.get("options") or {}
    return RunInfo(
        run_id=content_id(record),
        started=str(record["started"]),
        labels=tuple((record.get("manifest") or {}).get("classes") or ()),
        model=str(model.get("name") or model.get("source") or ""),
        model_sha256=weights_digest(model.get("weights_sha256")),
        version=str(record.get("medisyn") or ""),
        marked=options.get("mark", True) if marked is None else marked,
        shard_size=options.get("shard_size") or shard_size,
        rows_per_part=options.get("rows_per_part") or DEFAULT_ROWS_PER_PART,
    )


class OutputFormat(Protocol):
    """One output format: the folder it owns and the four steps of its life (see the module docstring)."""

    name: str  # the --format value
    folder: str  # OUT/<folder>
    help: str  # one line for --help and error texts

    def write_batch(
        self, work: Path, batch: str, items: Sequence[tuple[dict, bytes]], run: RunInfo
    ) -> dict: ...

    def consolidate(self, work: Path, out: Path, batches: Sequence[str], run: RunInfo) -> dict: ...

    def describe(self, folder: Path) -> dict: ...

    def files(self, out: Path) -> set[str]: ...

    def keep_out(self, out: Path, target: Path, drop: set[str]) -> dict: ...

    def card_lines(self, output: dict, run: RunInfo) -> list[str]: ...


def fresh(path: Path) -> Path:
    """`path` (inside OUT/_work) with whatever a killed process left there removed (a file or a folder)."""
    remove_private(path)
    return path


def publish(
    staged: Path, final: Path, build: Callable[[Path], dict], describe: Callable[[Path], dict]
) -> dict:
    """build(staged) from scratch, then rename staged -> final in one step; a final already published (by a
    consolidation killed after its rename) is described instead. Readers see no folder or the whole one."""
    if final.exists() and not staged.exists():
        return describe(final)
    if final.exists():
        raise MedisynError(f"{final}: exists and was not published by this run; move it away, then run again")
    output = build(fresh(staged))
    staged.rename(final)
    return output


def publish_over_older(
    staged: Path, final: Path, build: Callable[[Path], dict], describe: Callable[[Path], dict]
) -> dict:
    """publish() for the formats an older medisyn wrote in place (parquet, imagefolder): a partial folder left by
    its interrupted consolidation is removed first (only the files it recorded writing)."""
    if final.exists() and not staged.exists():
        return describe(final)
    output = build(staged)  # imagefolder's staged folder already holds the batches' PNGs
    if final.exists():
        root = final.parent
        remove_recorded(root, [p.relative_to(root).as_posix() for p in final.rglob("part-*.parquet")])
        listing = f"{final.name}/metadata.csv"
        remove_recorded(root, [*listed_files(root, listing, "file_name"), listing])
        if final.exists():
            raise MedisynError(f"{final}: holds files medisyn did not write; move them away, then run again")
    staged.rename(final)
    return output


def link_or_copy(source: Path, target: Path) -> None:
    """target as a hard link of source (a copy where the file system has none)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def batch_paths(root: Path, batches: Sequence[str], suffix: str = "") -> list[Path]:
    """root/<batch><suffix> for each batch, in order; MedisynError naming the first that is missing."""
    paths = [root / f"{batch}{suffix}" for batch in batches]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise MedisynError(
            f"{missing[0]}: batch marked done but its files are missing ({len(missing)} batches); remove its done "
            f"marker in {root.parent / 'done'} and run again with --resume"
        )
    return paths
