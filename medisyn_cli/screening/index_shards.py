"""`medisyn index build --shard K/N`: embedding shards, then one index, for training sets too large for one process.

The images are cut into batches of --batch-size in source order; batch b belongs to shard b mod N (as in
generate). Each shard writes its batches under OUT/_shards, each marked done last, so a killed shard that is
started again redoes only the batch in flight:

    OUT/_shards/config.json             sources fingerprint, embedder, batch size, shard count, index options
    OUT/_shards/vectors/b-0000012.npy   the batch's codes
    OUT/_shards/vectors/b-0000012.tiles.npy   its images' region tiles (up to REGIONS_MAX images, float codes)
    OUT/_shards/keys/b-0000012.parquet  its keys (key, label, source)
    OUT/_shards/done/b-0000012.json     written last: its row count and skipped files

The process that completes the last batch (or `medisyn index merge OUT`) concatenates the batches in order and
builds the same index as one process would: same ids, keys, vectors, skipped list and index.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from medisyn_cli.core.datasets import Record, Source, count_images, find_sources
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.ownership import (
    claim_marker,
    holds_files,
    is_ours,
    new_run_id,
    record_files,
    refuse_if_busy,
    remove_private,
    remove_temp,
)
from medisyn_cli.core.progress import make_progress, rate_text
from medisyn_cli.core.shards import Shard, batch_count, shard_batches
from medisyn_cli.core.store import IncompleteRun, WorkDir, batch_name, missing_report
from medisyn_cli.screening.embed import TILES, Embedder, get_embedder
from medisyn_cli.screening.embedding import (
    Embedded,
    KeyWriter,
    decode_batch,
    embed_batch,
    source_batches,
    source_fingerprint,
)
from medisyn_cli.screening.faiss_index import parse_memory
from medisyn_cli.screening.index import KEYS_FILE, META_FILE, REGIONS_MAX
from medisyn_cli.screening.index_write import finish_index

SHARDS = "_shards"


class ShardDir(WorkDir):
    """OUT/_shards of one sharded index build (config.json, done markers and lock as a generate run's _work)."""

    NAME, FOLDERS, LOCK = SHARDS, ("vectors", "keys", "done"), "merge.lock"

    def write_batch(
        self,
        batch: int,
        codes: np.ndarray,
        records: list,
        skipped: list[dict],
        tiles: np.ndarray | None = None,
    ) -> None:
        """The batch's codes (and region tiles) and keys under temp names, renamed; the done marker last."""
        name = batch_name(batch)
        for suffix, array in ((".npy", codes), (".tiles.npy", tiles)):
            if array is not None:
                with open(self.root / "vectors" / f".{name}{suffix}.tmp", "wb") as handle:
                    np.save(handle, array)
                os.replace(
                    self.root / "vectors" / f".{name}{suffix}.tmp", self.root / "vectors" / f"{name}{suffix}"
                )
        with KeyWriter(self.root / "keys" / f".{name}.parquet.tmp") as keys:
            keys.write(records, 0)
        os.replace(self.root / "keys" / f".{name}.parquet.tmp", self.root / "keys" / f"{name}.parquet")
        self.mark_done(batch, {"rows": len(codes), "skipped": skipped})


def build_shard(
    found: list[Source],
    out: Path,
    model: Embedder,
    index_type: str,
    budget: int | None,
    batch_size: int,
    show_progress: bool,
    shard: Shard,
) -> dict:
    """Embed this shard's batches; build the index if that completed the last batch. Returns index.json's content,
    or {"partial": ...} describing what is left."""
    out = Path(out)
    if (out / META_FILE).exists():
        return _already_built(out)
    if holds_files(out, ignore=lambda p: p.name == SHARDS or p.name.endswith(".tmp")) and not is_ours(out):
        raise MedisynError(
            f"{out}: folder exists and holds other files than a sharded index build ({SHARDS}/)"
        )
    if out.is_dir():
        refuse_if_busy(out, f"--out {out}")  # a single-process build writing it
    claim_marker(out, new_run_id(), "index build")  # every shard: the first one writes it
    total = sum(count_images(source) for source in found)
    batches = batch_count(total, batch_size)
    work = ShardDir(out)
    key = {
        "fingerprint": source_fingerprint(found),
        "sources": [str(s.path) for s in found],
        "total": total,
        "embedder": model.name,
        "settings": json.loads(json.dumps(model.settings(), default=str)),
        "batch_size": batch_size,
        "shards": shard.count,
        "index_type": index_type,
        "max_memory": budget,
    }
    work.create_or_join({"key": key, "batches": batches, "started": time.time()})
    mine = set(shard_batches(batches, shard)) - work.done()
    _embed_mine(
        found,
        model,
        work,
        mine,
        batch_size,
        show_progress,
        f"embedding {shard.name} ({model.name})",
        _regions(model, total),
    )
    if len(work.done()) == batches and work.lock():
        return merge_shards(out)
    return {
        "partial": True,
        "shard": shard.name,
        "made": len(mine),
        "done": len(work.done()),
        "batches": batches,
    }


def _regions(model: Embedder, total: int) -> bool:
    """Whether the build adds region tiles: as one process does (float codes, up to REGIONS_MAX images)."""
    return not model.binary and total <= REGIONS_MAX


def _already_built(out: Path) -> dict:
    return {**json.loads((out / META_FILE).read_text()), "note": "already built: nothing to do"}


def _embed_mine(
    found: list[Source],
    model: Embedder,
    work: ShardDir,
    mine: set[int],
    batch_size: int,
    show_progress: bool,
    title: str,
    regions: bool,
) -> None:

    images, started = 0, time.time()
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task(title, total=len(mine), rate="", info="")
        for number, batch in enumerate(source_batches(found, batch_size)):
            if number not in mine:
                continue
            skipped: list[dict] = []
            decoded, records = decode_batch(batch, skipped)
            codes, records, kept = embed_batch(model, decoded, records, skipped)
            tiles = model.embed_views(kept, TILES).reshape(-1, model.dim) if regions and kept else None
            work.write_batch(number, codes, records, skipped, tiles)
            images += len(batch)
            progress.update(
                task, advance=1, rate=rate_text(images, time.time() - started, "img"), info=f"batch {number}"
            )


def merge_shards(out: str | Path) -> dict:
    """Concatenate every shard's batches in order and build the index; IncompleteRun names what is missing."""
    out = Path(out)
    work = ShardDir(out)
    if not work.config_path.exists():
        if (out / META_FILE).exists():
            return _already_built(out)
        raise MedisynError(f"{out}: not a sharded index build (no {SHARDS}/config.json)")
    config = work.read_config()
    key, batches, done = config["key"], config["batches"], work.done()
    if len(done) < batches:
        missing = missing_report(
            batches,
            done,
            key["shards"],
            lambda b: min(key["batch_size"], key["total"] - b * key["batch_size"]),
        )
        parts = "; ".join(
            f"shard {k}/{key['shards']}: {b} batches ({n} images)" for k, (b, n) in missing.items()
        )
        raise IncompleteRun(
            f"{out}: {batches - len(done)} of {batches} batches are not embedded yet: {parts}. "
            f"Run `medisyn index build` with the same sources and options and --shard K/"
            f"{key['shards']} for each shard listed"
        )
    model = get_embedder(key["embedder"])
    found = find_sources(key["sources"])
    try:
        embedded = _concatenate(work, model, _regions(model, key["total"]))
        meta = finish_index(
            out,
            embedded,
            model,
            found,
            key["index_type"],
            parse_memory(key["max_memory"]),
            config["started"],
            key["sources"],
        )
    finally:
        for tmp in out.glob("*.tmp"):
            remove_temp(tmp)
    record_files(out, [p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")])
    remove_private(work.root)
    return meta


def _concatenate(work: ShardDir, model: Embedder, regions: bool) -> Embedded:
    """The batches' codes (and region tiles) into memmaps and their keys into keys.parquet.tmp, in batch order, ids
    renumbered. Batches embedded by a medisyn without region tiles: the index is built without them."""
    import pyarrow.parquet as pq

    done = list(work.done_records())  # in batch order: rows and skipped files of each batch
    dtype = np.uint8 if model.binary else np.float32
    rows = sum(d["rows"] for d in done)
    vectors = np.lib.format.open_memmap(
        work.out / "embedding.npy.tmp", mode="w+", dtype=dtype, shape=(max(rows, 1), model.code_size)
    )
    regions = regions and all(
        (work.root / "vectors" / f"{batch_name(b)}.tiles.npy").exists()
        for b, d in enumerate(done)
        if d["rows"]
    )
    tiles = (
        np.lib.format.open_memmap(
            work.out / "regions.npy.tmp",
            mode="w+",
            dtype=np.float32,
            shape=(max(rows, 1) * len(TILES), model.dim),
        )
        if regions
        else None
    )
    skipped: list[dict] = []
    count = 0
    with KeyWriter(work.out / (KEYS_FILE + ".tmp")) as keys:
        for batch, record in enumerate(done):
            name = batch_name(batch)
            codes = np.load(work.root / "vectors" / f"{name}.npy")
            vectors[count : count + len(codes)] = codes
            if tiles is not None and len(codes):
                tiles[count * len(TILES) : (count + len(codes)) * len(TILES)] = np.load(
                    work.root / "vectors" / f"{name}.tiles.npy"
                )
            table = pq.read_table(work.root / "keys" / f"{name}.parquet").to_pydict()
            records = [
                (Source(Path(source), "batch"), Record(k, label, None))
                for k, label, source in zip(table["key"], table["label"], table["source"])
            ]
            keys.write(records, count)
            count += len(codes)
            skipped += record["skipped"]
    vectors.flush()
    return Embedded(vectors, count, skipped, tiles)
