"""`medisyn provenance`: which files of a dataset are synthetic, by their marks or by a match in an index."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import argument, option, progress_option
from medisyn_cli.core.progress import console, results
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
) -> None:
    """Is each image synthetic, and why: its mark (XMP, DICOM, Parquet), a near-copy in --index, or none.

    Example: medisyn provenance site-data/ --index my-outputs-index --out prov --fail-on-synthetic
    """
    with errors_as_exit_codes():
        screen = index_screen(index, threshold) if index is not None else None
        summary = check_provenance(
            paths, out, screen, str(index) if index else None, batch_size, show_progress=progress
        )
    table = Table(title=f"provenance of {summary.files} images")
    for name in ("evidence", "images", "synthetic"):
        table.add_column(name)
    for evidence, count in sorted(summary.evidence.items()):
        synthetic = evidence.startswith("mark") or evidence == "match"
        table.add_row(evidence, str(count), "yes" if synthetic else "no", style="red" if synthetic else None)
    table.add_row("all", str(summary.files), str(summary.synthetic), style="bold")
    results.print(table)
    matched = f"; matched against {index}" if index else "; no --index: marks only"
    console.print(f"table: {summary.out / 'provenance.csv'}{matched}", highlight=False, soft_wrap=True)
    if fail_on_synthetic and summary.synthetic:
        console.print(f"--fail-on-synthetic: {summary.synthetic} synthetic images", highlight=False)
        raise typer.Exit(1)
