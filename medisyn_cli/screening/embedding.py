"""Embed training images in batches: sources -> decoded images (unreadable ones skipped with a reason) ->
vectors in a memory-mapped file, keys straight to keys.parquet."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medisyn_cli.core.batching import batched
from medisyn_cli.core.datasets import Record, Source, iter_source_records, open_or_skip, source_files
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.progress import make_progress, rate_text
from medisyn_cli.screening.embed import TILES, Embedder
from medisyn_cli.screening.index import KEYS_FILE


@dataclass
class Embedded:
    """What the embedding pass produced: vectors on disk, how many, and the records it had to skip."""

    vectors: np.ndarray
    count: int
    skipped: list[dict]
    regions: np.ndarray | None = None  # (count * len(TILES), dim) tile vectors, or None


def embed_sources(
    found: list[Source],
    model: Embedder,
    out: Path,
    total: int,
    batch_size: int,
    show_progress: bool,
    regions: bool = False,
) -> Embedded:
    """Decode and embed every image in batches; vectors go to a memmap, keys to keys.parquet.tmp (and with
    `regions`, each image's tile vectors to regions.npy.tmp)."""
    dtype = np.uint8 if model.binary else np.float32
    vectors = np.lib.format.open_memmap(
        out / "embedding.npy.tmp", mode="w+", dtype=dtype, shape=(max(total, 1), model.code_size)
    )
    tiles = (
        np.lib.format.open_memmap(
            out / "regions.npy.tmp",
            mode="w+",
            dtype=np.float32,
            shape=(max(total, 1) * len(TILES), model.dim),
        )
        if regions
        else None
    )
    skipped: list[dict] = []
    count, started = 0, time.time()
    with KeyWriter(out / (KEYS_FILE + ".tmp")) as keys, make_progress(disable=not show_progress) as progress:
        task = progress.add_task(f"embedding ({model.name})", total=total, rate="", info="")
        for batch in source_batches(found, batch_size):
            images, records = decode_batch(batch, skipped)
            codes, records, kept = embed_batch(model, images, records, skipped)
            vectors[count : count + len(codes)] = codes
            if tiles is not None and len(kept):
                tiles[count * len(TILES) : (count + len(codes)) * len(TILES)] = model.embed_views(
                    kept, TILES
                ).reshape(-1, model.dim)
            keys.write(records, count)
            count += len(codes)
            done = count + len(skipped)
            progress.update(
                task,
                completed=done,
                rate=rate_text(done, time.time() - started, "img"),
                info=f"{len(skipped)} skipped" if skipped else "",
            )
    vectors.flush()
    if tiles is not None:
        tiles.flush()
    return Embedded(vectors, count, skipped, tiles)


def source_batches(found: list[Source], size: int) -> Iterator[list[tuple[Source, Record]]]:
    """(source, record) pairs of every source, in lists of at most `size`."""
    return batched(((source, record) for source in found for record in iter_source_records(source)), size)


def decode_batch(batch: list, skipped: list[dict]) -> tuple[list, list]:
    """PIL images of a batch; unreadable records are added to `skipped` with the reason."""
    images, records = [], []
    for source, record in batch:
        image = open_or_skip(record, skipped)
        if image is not None:
            images.append(image)
            records.append((source, record))
    return images, records


def embed_batch(
    model: Embedder, images: list, records: list, skipped: list[dict]
) -> tuple[np.ndarray, list, list]:
    """Embed a batch; if it fails, embed image by image and skip the ones that fail. (codes, records, images kept)"""
    try:
        return model.embed(images), records, images
    except MedisynError:
        raise
    except Exception:
        codes, kept, kept_images = [], [], []
        for image, record in zip(images, records):
            try:
                codes.append(model.embed([image])[0])
                kept.append(record)
                kept_images.append(image)
            except Exception as exc:
                skipped.append(
                    {"key": record[1].key, "reason": f"embedding failed: {type(exc).__name__}: {exc}"[:300]}
                )
        dtype = np.uint8 if model.binary else np.float32
        return (np.stack(codes) if codes else np.zeros((0, model.code_size), dtype)), kept, kept_images


class KeyWriter:
    """keys.parquet written batch by batch (id, key, label, source), so memory does not grow with the count."""

    def __init__(self, path: Path):
        self.path, self.writer = path, None

    def __enter__(self) -> KeyWriter:
        return self

    def write(self, records: list, first_id: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "id": pa.array(range(first_id, first_id + len(records)), pa.int64()),
                "key": pa.array([r.key for _, r in records], pa.string()),
                "label": pa.array(
                    [None if r.label is None else str(r.label) for _, r in records], pa.string()
                ),
                "source": pa.array([str(s.path) for s, _ in records], pa.string()),
            }
        )
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def __exit__(self, *exc) -> None:
        if self.writer is None:
            self.write([], 0)
        self.writer.close()


def source_fingerprint(found: list[Source]) -> str:
    """sha256 over the sorted (path, size, mtime) of every file the sources are read from."""
    digest = hashlib.sha256()
    entries = []
    for source in found:
        for path in source_files(source):
            stat = path.stat()
            entries.append(f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}")
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8") + b"\n")
    return "sha256:" + digest.hexdigest()
