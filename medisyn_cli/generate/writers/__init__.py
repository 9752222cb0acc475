"""Dataset writers behind one interface: write(row, png) for each image, then close()."""

from __future__ import annotations

from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.generate.config import FORMATS
from medisyn_cli.generate.writers.base import Writer
from medisyn_cli.generate.writers.imagefolder import ImageFolderWriter
from medisyn_cli.generate.writers.parquet import ParquetWriter


def make_writers(
    formats: tuple[str, ...],
    out: Path,
    labels: list[str],
    rows_per_part: int = 5000,
    batch: str | None = None,
) -> list[Writer]:
    """One writer per requested format, under out/<format>/; for one `batch` of a run, under out/_work/."""
    if batch is None:
        makers = {
            "parquet": lambda: ParquetWriter(out / "parquet", labels, rows_per_part),
            "imagefolder": lambda: ImageFolderWriter(out / "imagefolder"),
        }
    else:
        makers = {
            "parquet": lambda: ParquetWriter(out / "_work" / "parquet", labels, 10**9, prefix=batch),
            "imagefolder": lambda: ImageFolderWriter(
                out / "_work" / "images", out / "_work" / "imagefolder" / f"{batch}.csv"
            ),
        }
    return [makers[f]() for f in formats]


def parse_formats(value: str) -> tuple[str, ...]:
    """'both', 'parquet', 'imagefolder' or a comma list -> tuple of formats."""
    if value == "both":
        return FORMATS
    formats = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise MedisynError(f"--format: '{value}' is not one of parquet, imagefolder, both")
    return formats
