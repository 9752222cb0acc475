"""`medisyn index build` as a Python API: check options, embed the sources (or one shard of them), write the index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from medisyn_cli.core.datasets import count_images, find_sources, iter_source_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.ownership import Owned, claim, remove_temp, replace_in_place
from medisyn_cli.core.progress import console
from medisyn_cli.core.shards import shard_from_env
from medisyn_cli.screening.embed import embedder_names, get_embedder
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
from medisyn_cli.screening.index_shards import SHARDS, build_shard
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
            "help": "pixel (default, no weights), learned (a copy descriptor trained here on these images, "
            f"saved in the index), or another registered embedder: {', '.join(embedder_names())}."
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
    # 2. take --out (locked); build in a temp folder of this run inside it; the old index stays until then
    with claim(out, "index build", fallback=_legacy_index_files, adopt=True) as owner:
        for note in owner.notes:
            console.print(f"note: --out {out}: {note}", highlight=False, soft_wrap=True)
        _check_replace(owner, overwrite)
        staging = owner.temp("new")
        staging.mkdir()
        try:
            meta = _build(
                found,
                model,
                staging,
                index_type,
                budget,
                batch_size,
                show_progress,
                target_fpr,
                regions,
                sources,
            )
            left = replace_in_place(
                owner,
                staging,
                sorted(p.name for p in staging.iterdir() if p.is_file() and not p.name.endswith(".tmp")),
            )
        finally:
            remove_temp(staging)
        if left:
            console.print(
                f"note: --out {out}: {len(left)} files medisyn did not write are left there: {', '.join(left[:5])}",
                highlight=False,
                soft_wrap=True,
            )
        return meta


def _build(
    found, model, staging: Path, index_type, budget, batch_size, show_progress, target_fpr, regions, sources
) -> dict:
    """Embed every image into `staging` and write the index files there (index.json last)."""
    total = sum(count_images(source) for source in found)
    if (
        model.name == "learned"
    ):  # trained on the images it indexes, saved with them (learned.safetensors/.json)
        model = fit_for_index(
            [record for source in found for record in iter_source_records(source)], staging, show_progress
        )
    tiled = not model.binary and bool(model.region_views())
    regions = (tiled and total <= REGIONS_MAX) if regions is None else bool(regions and tiled)
    started = time.time()
    embedded = embed_sources(found, model, staging, total, batch_size, show_progress, regions)
    return finish_index(staging, embedded, model, found, index_type, budget, started, sources, target_fpr)


def check_target_fpr(target_fpr: float | None) -> None:
    """MedisynError unless `target_fpr` is None or a rate in (0, 0.5)."""
    if target_fpr is not None and (
        isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not 0 < target_fpr < 0.5
    ):
        raise MedisynError(
            f"target false-positive rate must be a number in (0, 0.5), e.g. 0.005, got {target_fpr!r}"
        )


INDEX_FILES = (INDEX_FILE, KEYS_FILE, META_FILE, VECTORS_FILE, REGIONS_FILE, WEIGHTS_FILE, CONFIG_FILE)


def _legacy_index_files(folder: Path) -> set[str]:
    """The files an older `index build` wrote (a folder with index.json and no record of its files)."""
    return (
        {name for name in INDEX_FILES if (folder / name).is_file()}
        if (folder / META_FILE).is_file()
        else set()
    )


def _check_replace(owner: Owned, overwrite: bool) -> None:
    """A complete index is replaced only with overwrite; none of the files to write may be someone else's."""
    if (owner.path / META_FILE).is_file() and not overwrite:
        raise MedisynError(
            f"--out {owner.path}: holds an index; use --overwrite to replace it (the old one is kept until the "
            f"new one is complete), or another --out"
        )
    owner.check_free(INDEX_FILES)
    if (owner.path / SHARDS / "config.json").exists():
        raise MedisynError(
            f"--out {owner.path}: holds an unfinished sharded build ({SHARDS}/); finish it with the same "
            f"options and --shard K/N, or choose another --out"
        )
