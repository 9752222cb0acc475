"""The layout of a `generate` output folder: which files medisyn writes there (its formats' folders, run.json, the
card, logs), for folders whose marker holds no record of its files (made by an older version, or a run killed
before it completed) and for the record a completed run writes. The rule itself lives in core/ownership.py."""

from __future__ import annotations

import re
from pathlib import Path

from medisyn_cli.core.ownership import MARKER, discard
from medisyn_cli.dataset.formats import format_files

TOP_FILES = ("run.json", "README.md", "rejected.parquet", "report.html", "report.json")
SLURM_LOG = re.compile(r"slurm/(generate\.sbatch|\d+_\d+\.out)")
SCREEN_FILES = ("screen.parquet", "screen.csv", "screen.json", "report.html")


def generate_files(out: Path) -> set[str]:
    """Relative paths of the files a generate run (and screen, report, SLURM under it) writes in `out`."""
    out = Path(out)
    names = {name for name in TOP_FILES if (out / name).is_file()}
    names |= format_files(out)  # every registered format's (imagefolder: metadata.csv and the PNGs it lists)
    names |= {p.relative_to(out).as_posix() for p in (out / "_work").rglob("*") if not p.is_dir()}
    names |= {
        p.relative_to(out).as_posix()
        for p in (out / "slurm").glob("*")
        if SLURM_LOG.fullmatch(p.relative_to(out).as_posix())
    }
    if not (out / "screen" / MARKER).exists():  # screen of an older version: its screen.json names its files
        names |= {f"screen/{name}" for name in SCREEN_FILES}
    return names


def run_files(out: Path) -> tuple[list[str], dict[str, str]]:
    """The record a completed generate run writes into its marker: files, and the CSV that lists its PNGs."""
    names = [
        n
        for n in sorted(generate_files(out))
        if not n.startswith(("_work/", "screen/", "report."))
        and (not n.startswith("imagefolder/") or n == "imagefolder/metadata.csv")
    ]
    if not (out / "imagefolder" / "metadata.csv").exists():
        names = [n for n in names if n != "imagefolder/metadata.csv"]
        return names, {}
    return names, {"imagefolder/metadata.csv": "file_name"}


def discard_previous(path: Path) -> list[str]:
    """Delete a run moved aside, but only the files it recorded writing; returns the paths left in place."""
    return discard(path, generate_files)
