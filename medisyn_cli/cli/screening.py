"""`medisyn screen` and `medisyn index build / merge`."""

from __future__ import annotations

from pathlib import Path

import typer

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import VocabularyGroup, argument, json_option, option, progress_option
from medisyn_cli.cli.tables import Tables, column, number, percent
from medisyn_cli.core.progress import console
from medisyn_cli.core.shards import resolve_shard
from medisyn_cli.screening.audit import ScreenConfig, screen_dataset
from medisyn_cli.screening.build import IndexConfig, build_index
from medisyn_cli.screening.index_shards import merge_shards


def screen(
    dataset: Path = argument(ScreenConfig, "dataset"),
    index: Path = option(ScreenConfig, "index", "--index"),
    threshold: float | None = option(ScreenConfig, "threshold", "--threshold"),
    out: Path | None = option(ScreenConfig, "report_dir", "--out", "-o"),
    keep_out: Path | None = option(ScreenConfig, "keep_out", "--keep-out"),
    fail_on_copies: bool = typer.Option(False, "--fail-on-copies", help="Exit 1 if any near-copy is found."),
    embedder: str | None = option(ScreenConfig, "embedder", "--embedder"),
    batch_size: int = option(ScreenConfig, "batch_size", "--batch-size"),
    training_thumbnails: bool = option(
        ScreenConfig, "training_thumbnails", "--training-thumbnails/--no-training-thumbnails"
    ),
    progress: bool = progress_option(ScreenConfig),
    json_path: str | None = json_option(),
) -> None:
    """Audit a dataset: the nearest training image of every image, near-copies flagged, an HTML report.

    Writes OUT/screen.parquet, screen.csv, screen.json and report.html; --json adds the summary table.

    Example: medisyn screen derm-synth --index train-index --out derm-screen --fail-on-copies
    """
    with Tables("screen", json_path) as tables:
        with errors_as_exit_codes():
            summary = screen_dataset(
                dataset,
                index,
                threshold,
                out,
                keep_out,
                embedder,
                batch_size,
                show_progress=progress,
                training_thumbnails=training_thumbnails,
            )
        _print_screen(tables, summary)
    if fail_on_copies and (summary.near_copies or summary.errors):
        if summary.errors:
            console.print(
                f"--fail-on-copies: {summary.errors} unreadable images count as failures (they could "
                f"not be shown not to be copies)",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(1)


def _print_screen(tables: Tables, summary) -> None:
    rows = [
        {"label": label, "screened": n, "near_copies": copies}
        for label, (n, copies) in summary.per_label.items()
    ]
    rows.append({"label": "all", "screened": summary.screened, "near_copies": summary.near_copies})
    tables.values["threshold"] = summary.threshold
    tables.show(
        "screen",
        f"screened {summary.dataset} against {summary.index} (threshold {summary.threshold:g})",
        [column("label"), column("screened"), column("near-copies", "near_copies")],
        rows,
        style=lambda row: "bold" if row is rows[-1] else "red" if row["near_copies"] else None,
    )
    if summary.errors:
        console.print(
            f"{summary.errors} unreadable images (rows with an error in screen.csv)", highlight=False
        )
    console.print(
        f"report: {summary.report_dir / 'report.html'}"
        + (f"; copy without near-copies: {summary.kept_out}" if summary.kept_out else ""),
        highlight=False,
    )


index_app = typer.Typer(
    cls=VocabularyGroup, no_args_is_help=True, help="Indexes of training images, for near-copy screening."
)


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
    json_path: str | None = json_option(),
) -> None:
    """Embed training images and build the FAISS index that `generate --index` and `screen` search.

    Writes OUT/index.json (embedder, threshold, calibration) beside the index; --json adds the summary tables.

    Example: medisyn index build ../shared/data --out train-index
    """
    import os

    with Tables("index build", json_path) as tables:
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
        _print_index(tables, out, meta)


@index_app.command("merge")
def index_merge(
    out: Path = typer.Argument(..., help="Folder of a sharded `index build`."),
    json_path: str | None = json_option(),
) -> None:
    """Build the index from every shard's embeddings, or name the shards that are not done."""
    with Tables("index merge", json_path) as tables:
        with errors_as_exit_codes():
            meta = merge_shards(out)
        _print_index(tables, out, meta)


def _print_calibration(tables: Tables, calibration: dict) -> None:
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
    tables.values["calibration"] = {
        k: calibration.get(k) for k in ("threshold", "target_fpr", "negatives", "floor", "partial_threshold")
    }
    tables.show(
        "calibration",
        "measured on the index's own images",
        [
            column("threshold", fmt=_g),
            column("false positives", "fpr", percent),
            column("copies caught", "tpr", percent),
        ],
        [row for row in calibration["curve"] if abs(row["threshold"] - calibration["threshold"]) <= 0.0151],
    )


def _g(value) -> str:
    return f"{value:g}"


def _print_index(tables: Tables, out: Path, meta: dict) -> None:
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
    row = {
        "images": meta["count"],
        "skipped": skipped["count"],
        "embedder": meta["embedder"]["spec"],
        "index": index["type"],
        "recall_at_1": index["recall_at_1"],
        "threshold": meta["threshold"],
    }
    tables.show(
        "index",
        f"index {out} ({meta['seconds']:.0f} s)",
        [
            column("images"),
            column("skipped"),
            column("embedder"),
            column("index"),
            column("recall@1", "recall_at_1", lambda v: "exact" if v is None else f"{v:.3f}"),
            column("threshold", fmt=_g),
        ],
        [row],
    )
    nearest = meta["nearest_neighbour_similarity"]
    if nearest["percentiles"]:
        shown = [k for k in nearest["percentiles"] if k in ("p1", "p5", "p50", "p95", "p99", "p100")]
        tables.show(
            "nearest_neighbour_similarity",
            f"similarity of training images to their nearest other training image ({nearest['sample']} sampled)",
            [column(k.replace("p100", "max"), k, number(3)) for k in shown]
            + [column(">= threshold", "at_or_above_threshold", percent)],
            [{**nearest["percentiles"], "at_or_above_threshold": nearest["at_or_above_threshold"]}],
        )
    _print_calibration(tables, meta.get("screening", {}).get("calibration", {}))
    for item in skipped["files"][:20]:
        console.print(f"skipped {item['key']}: {item['reason']}", highlight=False, soft_wrap=True)
    if skipped["count"] > 20:
        console.print(
            f"... and {skipped['count'] - 20} more (all listed in {out / 'index.json'})", highlight=False
        )
