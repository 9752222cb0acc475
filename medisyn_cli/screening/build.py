"""`medisyn index build` as a Python API: check options, embed the sources (or one shard of them), write the index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from medisyn_cli.core.datasets import count_images, find_sources, iter_source_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.outdir import holds_files
from medisyn_cli.core.shards import shard_from_env
from medisyn_cli.screening.embed import get_embedder
from medisyn_cli.screening.embedding import embed_sources
from medisyn_cli.screening.faiss_index import INDEX_TYPES, parse_memory
from medisyn_cli.screening.index import (
    INDEX_FILE,
    KEYS_FILE,
    META_FILE,
    REGIONS_FILE,
    REGIONS_MAX,
    TARGET_FPR,
    VECTORS_FILE,
)
from medisyn_cli.screening.index_shards import build_shard
from medisyn_cli.screening.index_write import finish_index
from medisyn_cli.screening.learned import CONFIG_FILE, WEIGHTS_FILE, fit_for_index, untrained


@dataclass(frozen=True)
class IndexConfig:
    """Options of `medisyn index build`: the defaults table of the CLI and of build_index's keywords."""

    sources: tuple[str, ...] = field(
        metadata={
            "help": "Training images: image folders (recursive), ImageFolders with metadata.csv, Parquet "
            "datasets with an image column."
        }
    )
    out: str = field(metadata={"help": "Index folder to write."})
    embedder: str = field(
        default="pixel",
        metadata={
            "help": "pixel (default, no weights), phash, learned (a copy descriptor trained here on these "
            "images, saved in the index), clip:<model> or hf:<model>."
        },
    )
    index_type: str = field(default="auto", metadata={"help": "auto, flat (exact), hnsw or ivfpq."})
    max_memory: str | None = field(
        default=None,
        metadata={"help": "Memory budget for the index, e.g. 4GB (auto picks a type that fits)."},
    )
    batch_size: int = field(default=256, metadata={"help": "Images decoded and embedded at a time."})
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar (else log lines)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing index folder."})
    shard: str | None = field(
        default=None,
        metadata={  # build_index takes a core.shards.Shard
            "help": "K/N: embed shard K (from 0) of N into --out; the last shard builds the index (default: "
            "from SLURM_ARRAY_TASK_ID, RANK...)."
        },
    )
    target_fpr: float | None = field(
        default=TARGET_FPR,
        metadata={  # build_index: None also means that
            "help": "False-positive rate the near-copy threshold is calibrated for on the index's own images "
            "(0 = the embedder's default threshold)."
        },
    )
    regions: bool | None = field(
        default=None,
        metadata={
            "help": "Index 16 overlapping tiles of every image too, so crops and partial copies match "
            "(default: up to 20,000 images; screening is 2.4x slower with them: "
            "benchmarks/screen_speed.py)."
        },
    )


def build_index(
    sources: list[str | Path],
    out: Path,
    embedder: str = "pixel",
    index_type: str = "auto",
    max_memory: str | None = None,
    batch_size: int = 256,
    show_progress: bool = True,
    overwrite: bool = False,
    shard=None,
    target_fpr: float | None = TARGET_FPR,
    regions: bool | None = None,
) -> dict:
    """Embed every image of `sources`; write index.faiss, keys.parquet, index.json to `out`; return index.json's content.

    The threshold is calibrated on the index's own images for `target_fpr` false positives (None: the
    embedder's default). With a `shard` (shards.Shard; None: from the SLURM
    environment, as the CLI resolves it) of several, embed only this shard's batches; the shard
    that completes the last batch builds the index (index_shards.py, at the default target, without regions).
    `regions` (default: up to REGIONS_MAX images, float embedders) adds the vectors of 16 overlapping tiles of
    every training image, so crops and partial copies match the region they copy."""
    # 1. check every option before any work, and refuse a non-empty `out`
    out = Path(out)
    shard = shard_from_env(os.environ) if shard is None else shard  # a SLURM array task: as the CLI does
    budget = parse_memory(max_memory)
    check_target_fpr(target_fpr)
    if index_type not in INDEX_TYPES:
        raise MedisynError(f"index type '{index_type}': expected one of {', '.join(INDEX_TYPES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MedisynError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    found = find_sources(list(sources))
    model = untrained() if embedder.strip() == "learned" else get_embedder(embedder)
    if model.binary and index_type == "ivfpq":
        raise MedisynError(f"index type 'ivfpq' is for float vectors; {model.name} codes use flat or hnsw")
    if shard is not None and shard.count > 1 and model.name == "learned":
        raise MedisynError(
            "--embedder learned: no sharded builds (the descriptor is trained on all images at once)"
        )
    if shard is not None and shard.count > 1:
        return build_shard(found, out, model, index_type, budget, batch_size, show_progress, shard)
    _prepare_out(out, overwrite)
    total = sum(count_images(source) for source in found)
    if (
        model.name == "learned"
    ):  # trained on the images it indexes, saved in `out` (learned.safetensors/.json)
        model = fit_for_index(
            [record for source in found for record in iter_source_records(source)], out, show_progress
        )
    tiled = not model.binary and bool(model.region_views())
    regions = (tiled and total <= REGIONS_MAX) if regions is None else bool(regions and tiled)
    # 2. embed in batches into a memmap, keys straight to parquet
    started = time.time()
    try:
        embedded = embed_sources(found, model, out, total, batch_size, show_progress, regions)
        return finish_index(out, embedded, model, found, index_type, budget, started, sources, target_fpr)
    finally:
        for tmp in out.glob("*.tmp"):
            tmp.unlink()


def check_target_fpr(target_fpr: float | None) -> None:
    """MedisynError unless `target_fpr` is None or a rate in (0, 0.5)."""
    if target_fpr is not None and (
        isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not 0 < target_fpr < 0.5
    ):
        raise MedisynError(
            f"target false-positive rate must be a number in (0, 0.5), e.g. 0.005, got {target_fpr!r}"
        )


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless overwrite, and then only an index folder (index.json or leftovers)."""
    if out.exists() and not out.is_dir():
        raise MedisynError(f"{out}: exists and is not a folder")
    if holds_files(out):
        if not overwrite:
            raise MedisynError(f"{out}: folder exists and is not empty (use overwrite to replace the index)")
        ours = {INDEX_FILE, KEYS_FILE, META_FILE, VECTORS_FILE, REGIONS_FILE, WEIGHTS_FILE, CONFIG_FILE}
        if not all(p.name in ours or p.name.endswith(".tmp") for p in out.iterdir()):
            raise MedisynError(
                f"{out}: overwrite only replaces an index folder, and this folder holds other files"
            )
        for p in out.iterdir():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
