"""`medisyn screen` and `medisyn index build / merge`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import argument, option, progress_option
from medisyn_cli.core.progress import console, results
from medisyn_cli.core.shards import resolve_shard
from medisyn_cli.screening.audit import ScreenConfig, screen_dataset
from medisyn_cli.screening.build import IndexConfig, build_index
from medisyn_cli.screening.index_shards import merge_shards


def screen(
    dataset: Path = argument(ScreenConfig, "dataset"),
    index: Path = option(ScreenConfig, "index", "--index"),
    threshold: float | None = option(ScreenConfig, "threshold", "--threshold"),
    report: Path | None = option(ScreenConfig, "report_dir", "--report"),
    keep_out: Path | None = option(ScreenConfig, "keep_out", "--keep-out"),
    fail_on_copies: bool = typer.Option(False, "--fail-on-copies", help="Exit 1 if any near-copy is found."),
    embedder: str | None = option(ScreenConfig, "embedder", "--embedder"),
    batch_size: int = option(ScreenConfig, "batch_size", "--batch-size"),
    training_thumbnails: bool = option(
        ScreenConfig, "training_thumbnails", "--training-thumbnails/--no-training-thumbnails"
    ),
    progress: bool = progress_option(ScreenConfig),
) -> None:
    """Audit a dataset: the nearest training image of every image, near-copies flagged, an HTML report.

    Example: medisyn screen derm-synth --index train-index --fail-on-copies
    """
    with errors_as_exit_codes():
        summary = screen_dataset(
            dataset,
            index,
            threshold,
            report,
            keep_out,
            embedder,
            batch_size,
            show_progress=progress,
            training_thumbnails=training_thumbnails,
        )
    table = Table(
        title=f"screened {summary.dataset} against {summary.index} (threshold {summary.threshold:g})"
    )
    for name in ("label", "screened", "near-copies"):
        table.add_column(name)
    for label, (n, copies) in summary.per_label.items():
        table.add_row(label, str(n), str(copies), style="red" if copies else None)
    table.add_row("all", str(summary.screened), str(summary.near_copies), style="bold")
    results.print(table)
    if summary.errors:
        console.print(
            f"{summary.errors} unreadable images (rows with an error in screen.csv)", highlight=False
        )
    console.print(
        f"report: {summary.report_dir / 'report.html'}"
        + (f"; copy without near-copies: {summary.kept_out}" if summary.kept_out else ""),
        highlight=False,
    )
    if fail_on_copies and (summary.near_copies or summary.errors):
        if summary.errors:
            console.print(
                f"--fail-on-copies: {summary.errors} unreadable images count as failures (they could "
                f"not be shown not to be copies)",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(1)


index_app = typer.Typer(no_args_is_help=True, help="Indexes of training images, for near-copy screening.")


@index_app.command("build")
def index_build(
    sources: list[Path] = argument(IndexConfig, "sources"),
    out: Path = option(IndexConfig, "out", "--out", "-o"),
    embedder: str = option(IndexConfig, "embedder", "--embedder"),
    index_type: str = option(IndexConfig, "index_type", "--index-type"),
    max_memory: str | None = option(IndexConfig, "max_memory", "--max-memory"),
    batch_size: int = option(IndexConfig, "batch_size", "--batch-size"),
    overwrite: bool = option(IndexConfig, "overwrite", "--overwrite"),
    shard: str | None = option(IndexConfig, "shard", "--shard"),
    progress: bool = progress_option(IndexConfig),
    target_fpr: float = option(IndexConfig, "target_fpr", "--target-fpr"),
    regions: bool | None = option(IndexConfig, "regions", "--regions/--no-regions"),
) -> None:
    """Embed training images and build the FAISS index that `generate --index` and `screen` search.

    Example: medisyn index build ../shared/data --out train-index
    """
    import os

    with errors_as_exit_codes():
        place = resolve_shard(shard, os.environ)
        meta = build_index(
            sources,
            out,
            embedder,
            index_type,
            max_memory,
            batch_size,
            progress,
            overwrite,
            place,
            target_fpr or None,
            regions,
        )
    _print_index(out, meta)


@index_app.command("merge")
def index_merge(out: Path = typer.Argument(..., help="Folder of a sharded `index build`.")) -> None:
    """Build the index from every shard's embeddings, or name the shards that are not done."""
    with errors_as_exit_codes():
        meta = merge_shards(out)
    _print_index(out, meta)


def _print_calibration(calibration: dict) -> None:
    """The threshold calibration of `index build`: the chosen threshold and the measured curve around it."""
    if "curve" not in calibration:
        if calibration.get("skipped"):
            console.print(f"threshold not calibrated: {calibration['skipped']}", highlight=False)
        return
    console.print(
        f"threshold {calibration['threshold']:g}: calibrated for {calibration['target_fpr']:.2%} false "
        f"positives ({calibration['negatives']} of its own images and changed copies against the other "
        f"training images, never below {calibration['floor']:g}; {calibration['seconds']:.0f} s)",
        highlight=False,
        soft_wrap=True,
    )
    if "partial_threshold" in calibration:
        console.print(
            f"partial threshold {calibration['partial_threshold']:g}: the best half of an image matching a training "
            f"image's (markers, text, local edits); both rules together flag "
            f"{calibration['partial_fpr_at_threshold']:.1%} of the same negatives",
            highlight=False,
            soft_wrap=True,
        )
    table = Table(title="measured on the index's own images")
    for name in ("threshold", "false positives", "copies caught"):
        table.add_column(name)
    for row in calibration["curve"]:
        if abs(row["threshold"] - calibration["threshold"]) <= 0.0151:
            table.add_row(f"{row['threshold']:g}", f"{row['fpr']:.1%}", f"{row['tpr']:.1%}")
    results.print(table)


def _print_index(out: Path, meta: dict) -> None:
    if meta.get("partial"):
        console.print(
            f"shard {meta['shard']} embedded {meta['made']} batches; {meta['done']} of {meta['batches']} "
            f"batches are done. The last shard to finish builds the index (or run: medisyn index merge "
            f"{out})",
            highlight=False,
            soft_wrap=True,
        )
        return
    if meta.get("note"):
        console.print(meta["note"], highlight=False)
    index, skipped = meta["index"], meta["skipped"]
    table = Table(title=f"index {out} ({meta['seconds']:.0f} s)")
    for name in ("images", "skipped", "embedder", "index", "recall@1", "threshold"):
        table.add_column(name)
    recall = "exact" if index["recall_at_1"] is None else f"{index['recall_at_1']:.3f}"
    table.add_row(
        str(meta["count"]),
        str(skipped["count"]),
        meta["embedder"]["spec"],
        index["type"],
        recall,
        f"{meta['threshold']:g}",
    )
    results.print(table)
    nearest = meta["nearest_neighbour_similarity"]
    if nearest["percentiles"]:
        spread = Table(
            title=f"similarity of training images to their nearest other training image "
            f"({nearest['sample']} sampled)"
        )
        shown = {
            k: v for k, v in nearest["percentiles"].items() if k in ("p1", "p5", "p50", "p95", "p99", "p100")
        }
        for name in shown:
            spread.add_column(name.replace("p100", "max"))
        spread.add_column(">= threshold")
        spread.add_row(*(f"{v:.3f}" for v in shown.values()), f"{nearest['at_or_above_threshold']:.1%}")
        results.print(spread)
    _print_calibration(meta.get("screening", {}).get("calibration", {}))
    for item in skipped["files"][:20]:
        console.print(f"skipped {item['key']}: {item['reason']}", highlight=False, soft_wrap=True)
    if skipped["count"] > 20:
        console.print(
            f"... and {skipped['count'] - 20} more (all listed in {out / 'index.json'})", highlight=False
        )
