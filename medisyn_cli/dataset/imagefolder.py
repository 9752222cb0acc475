"""The imagefolder format: OUT/imagefolder/<label>/<id>.png plus metadata.csv with a file_name column (torchvision
and `datasets`); each batch's PNGs under OUT/_work/images, its rows in OUT/_work/imagefolder/<batch>.csv."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from medisyn_cli.core.names import safe_name
from medisyn_cli.core.ownership import listed_files, remove_empty, remove_private, remove_recorded
from medisyn_cli.dataset.base import RunInfo, publish_over_older
from medisyn_cli.dataset.rows import COLUMNS


class ImageFolderWriter:
    """Each PNG appears under its final name only when complete; metadata.csv is renamed in on close."""

    name = "imagefolder"

    def __init__(self, folder: Path, metadata: Path | None = None):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metadata = metadata or folder / "metadata.csv"
        self.metadata.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.metadata.with_name(f".{self.metadata.name}.tmp")
        self.handle = open(self.partial, "w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.handle, fieldnames=["file_name", *COLUMNS])
        self.csv.writeheader()
        self.rows = 0

    def write(self, row: dict, png: bytes) -> None:
        relative = f"{safe_name(row['label'])}/{row['id']}.png"
        target = self.folder / relative
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, target)
        self.csv.writerow({"file_name": relative, **{k: row.get(k) for k in COLUMNS}})
        self.rows += 1

    def close(self) -> dict:
        self.handle.close()
        os.replace(self.partial, self.metadata)
        return {"format": self.name, "rows": self.rows, "files": [self.metadata.name]}


class ImageFolderFormat:
    """OUT/imagefolder/<label>/<id>.png + metadata.csv; the PNGs are staged under OUT/_work/images."""

    name = folder = "imagefolder"
    help = "imagefolder/<label>/<id>.png + metadata.csv (torchvision ImageFolder, `datasets` imagefolder)"

    def write_batch(self, work: Path, batch: str, items: Sequence[tuple[dict, bytes]], run: RunInfo) -> dict:
        """The batch's PNGs under OUT/_work/images (each renamed in when complete) and its rows' CSV."""
        writer = ImageFolderWriter(work / "images", work / self.folder / f"{batch}.csv")
        for row, png in items:
            writer.write(row, png)
        return writer.close()

    def consolidate(self, work: Path, out: Path, batches: Sequence[str], run: RunInfo) -> dict:
        """metadata.csv from every batch's rows, in plan order; the staged PNG folder published by one rename."""
        _adopt_published_pngs(work, out / self.folder)
        return publish_over_older(
            work / "images",
            out / self.folder,
            lambda staged: _consolidate_metadata(work, staged),
            self.describe,
        )

    def describe(self, folder: Path) -> dict:
        """The run.json entry of an imagefolder folder."""
        with open(folder / "metadata.csv", newline="", encoding="utf-8") as handle:
            rows = sum(1 for _ in csv.DictReader(handle))
        return {"format": self.name, "rows": rows, "files": ["metadata.csv"]}

    def files(self, out: Path) -> set[str]:
        """The files of this format in OUT, relative to it: metadata.csv and the PNGs it lists."""
        return {f"{self.folder}/metadata.csv"} | listed_files(out, f"{self.folder}/metadata.csv", "file_name")

    def keep_out(self, out: Path, target: Path, drop: set[str]) -> dict:
        """Copy OUT/imagefolder to target/imagefolder without the images whose id is in `drop`."""
        if not (out / self.folder / "metadata.csv").exists():
            return {"format": self.name, "rows": 0, "files": []}
        filter_imagefolder(out / self.folder, lambda row: row["id"] not in drop, target / self.folder)
        return self.describe(target / self.folder)

    def card_lines(self, output: dict, run: RunInfo) -> list[str]:
        """The card's lines on the imagefolder folder."""
        return ["- `imagefolder/<label>/<id>.png` with `imagefolder/metadata.csv` (`file_name` + provenance)"]


def _adopt_published_pngs(work: Path, final: Path) -> None:
    """A run started by medisyn 0.1 wrote PNGs straight to OUT/imagefolder: move them into the staged folder."""
    staged = work / "images"
    if not final.exists() or (final / "metadata.csv").exists() and not staged.exists():
        return
    for png in final.rglob("*.png"):
        target = staged / png.relative_to(final)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(png, target)
    remove_recorded(final.parent, ["imagefolder/metadata.csv"])
    remove_empty(final)


def _consolidate_metadata(work: Path, target: Path) -> dict:
    """Batch CSVs -> imagefolder/metadata.csv; PNGs of ids that were not kept (a redone batch) are removed."""
    target.mkdir(parents=True, exist_ok=True)
    tmp, rows, listed = target / ".metadata.csv.tmp", 0, set()
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", *COLUMNS])
        writer.writeheader()
        for batch_file in sorted((work / "imagefolder").glob("b-*.csv")):
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


def filter_imagefolder(folder: Path, keep, target: Path) -> None:
    """Copy the kept images of an ImageFolder and the matching rows of its metadata.csv."""
    target.mkdir(parents=True, exist_ok=True)
    with (
        open(folder / "metadata.csv", newline="", encoding="utf-8") as src,
        open(target / "metadata.csv", "w", newline="", encoding="utf-8") as dst,
    ):
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
        writer.writeheader()
        for row in reader:  # unreadable rows were reported, not copied
            if keep(row) and (folder / row["file_name"]).is_file():
                (target / row["file_name"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / row["file_name"], target / row["file_name"])
                writer.writerow(row)


FORMAT = ImageFolderFormat()
