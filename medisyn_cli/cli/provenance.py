"""`medisyn provenance`: which files of a dataset are synthetic, by their marks or by a match in an index."""

from __future__ import annotations

from pathlib import Path

import typer

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import argument, json_option, option, progress_option
from medisyn_cli.cli.tables import Tables, column
from medisyn_cli.core.progress import console
from medisyn_cli.dataset.provenance import Match, ProvenanceConfig, Screen, check_provenance
from medisyn_cli.screening.index import load_index
from medisyn_cli.screening.screener import Screener


def index_screen(index: Path, threshold: float | None = None) -> Screen:
    """A provenance `screen` callable: each image's nearest neighbour in `index` and whether it is a near-copy."""
    screener = Screener(load_index(index), threshold)

    def screen(images: list) -> list[Match]:
        return [Match(r.nn_similarity, r.nn_key, r.near_copy) for r in screener.check(images)]

    return screen


def provenance(
    paths: list[Path] = argument(ProvenanceConfig, "paths"),
    out: Path = option(ProvenanceConfig, "out", "--out", "-o"),
    index: Path | None = option(ProvenanceConfig, "index", "--index"),
    threshold: float | None = option(ProvenanceConfig, "threshold", "--threshold"),
    batch_size: int = option(ProvenanceConfig, "batch_size", "--batch-size"),
    fail_on_synthetic: bool = option(ProvenanceConfig, "fail_on_synthetic", "--fail-on-synthetic"),
    progress: bool = progress_option(ProvenanceConfig),
    json_path: str | None = json_option(),
) -> None:
    """Is each image synthetic, and why: its mark (XMP, DICOM, Parquet), a near-copy in --index, or none.

    Writes OUT/provenance.csv (one row per image); --json adds the summary table.

    Example: medisyn provenance site-data/ --index my-outputs-index --out prov --fail-on-synthetic
    """
    with errors_as_exit_codes():
        screen = index_screen(index, threshold) if index is not None else None
        summary = check_provenance(
            paths, out, screen, str(index) if index else None, batch_size, show_progress=progress
        )
    rows = [
        {
            "evidence": evidence,
            "images": count,
            "synthetic": evidence.startswith("mark") or evidence == "match",
        }
        for evidence, count in sorted(summary.evidence.items())
    ]
    rows.append({"evidence": "all", "images": summary.files, "synthetic": summary.synthetic})
    with Tables("provenance", json_path) as tables:
        tables.show(
            "provenance",
            f"provenance of {summary.files} images",
            [column("evidence"), column("images"), column("synthetic", fmt=_yes_no_or_count)],
            rows,
            style=lambda row: "bold" if row is rows[-1] else "red" if row["synthetic"] else None,
        )
    matched = f"; matched against {index}" if index else "; no --index: marks only"
    console.print(f"table: {summary.out / 'provenance.csv'}{matched}", highlight=False, soft_wrap=True)
    if fail_on_synthetic and summary.synthetic:
        console.print(f"--fail-on-synthetic: {summary.synthetic} synthetic images", highlight=False)
        raise typer.Exit(1)


def _yes_no_or_count(value: bool | int) -> str:
    """A class row says whether its evidence means synthetic; the 'all' row counts the synthetic images."""
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)
