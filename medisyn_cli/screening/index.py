"""Build and load a FAISS index of training-image embeddings, with the metadata that makes it checkable.

An index folder holds:

    index.faiss     the FAISS index (float: inner product = cosine; binary: Hamming)
    keys.parquet    vector id -> key (file path, or parquet file:row id), label where known, source
    vectors.npy     IVF-PQ only: the exact vectors, memory-mapped, to re-score the compressed index's candidates
    regions.faiss   16 overlapping tiles of every training image (embed.TILES), so crops and partial copies
                    match the region they copy (default up to REGIONS_MAX images; float embedders)
    index.json      embedder spec and settings, dim, metric, count, index type and parameters (and recall@1
                    for approximate types), default threshold, source fingerprint, skipped files with reasons,
                    the similarity of each training image to its nearest other training image (percentiles),
                    the screening views and the threshold's calibration on the index's own images (curve),
                    created time, medisyn version. Written last: a folder without it is not an index.

    meta = build_index(["data/train"], Path("train-index"))             # pixel embedder, auto index type
    index = load_index("train-index")
    sims, ids = index.search(index.embedder.embed(images), k=1)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from medisyn_cli.core.datasets import Record, Source, count_images, find_sources, iter_source_records, source_files
from medisyn_cli.screening.embed import TILES, VIEW_SETS, Embedder, get_embedder
from medisyn_cli.core.errors import MedisynError

TARGET_FPR = 0.005  # the default false-positive rate an index calibrates its threshold for (screen.calibrate)

INDEX_FILE, KEYS_FILE, META_FILE, VECTORS_FILE = "index.faiss", "keys.parquet", "index.json", "vectors.npy"
REGIONS_FILE = "regions.faiss"  # vectors of each training image's overlapping tiles (partial copies, crops)
REGIONS_MAX = 20_000            # images up to which `index build` adds the tiles by default (16 vectors each)
REGIONS_FLAT_MAX = 16_384       # tiles searched exactly up to this many (1,024 images), with HNSW beyond
FORMAT = 1
INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
FLAT_MAX = 100_000          # auto: exact search up to this many vectors (and while it fits the memory budget)
HNSW_MAX = 5_000_000        # auto without a budget: HNSW up to this many, IVF-PQ beyond
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
RECALL_QUERIES, NN_SAMPLE = 500, 10_000
PERCENTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)
UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
         "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_memory(text: str | int | None) -> int | None:
    """'4GB', '512MB', '1.5GiB' or a byte count -> bytes; None stays None; anything else -> MedisynError."""
    if text is None or isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise MedisynError(f"max_memory '{text}': expected a size such as 4GB, 512MB or 1.5GiB")
    return int(float(match.group(1)) * UNITS[unit])


# --- choosing and building the FAISS index --------------------------------------------------------------

@dataclass
class IndexPlan:
    """Which FAISS index to build for `count` vectors, with its parameters (stored in index.json)."""

    type: str
    params: dict = field(default_factory=dict)


def plan_index(index_type: str, count: int, embedder: Embedder, budget: int | None) -> IndexPlan:
    """Resolve 'auto' by count and memory budget, and pick the parameters of the chosen type."""
    if index_type not in INDEX_TYPES:
        raise MedisynError(f"index type '{index_type}': expected one of {', '.join(INDEX_TYPES)}")
    if embedder.binary:
        return _plan_binary(index_type, count)
    flat_bytes, hnsw_bytes = count * embedder.dim * 4, count * (embedder.dim * 4 + HNSW_M * 2 * 4 * 1.5)
    if index_type == "auto":
        fits = lambda size: budget is None or size <= budget  # noqa: E731
        index_type = ("flat" if count <= FLAT_MAX and fits(flat_bytes)
                      else "hnsw" if fits(hnsw_bytes) and (budget is not None or count <= HNSW_MAX) else "ivfpq")
    if index_type == "flat":
        return IndexPlan("flat")
    if index_type == "hnsw":
        return IndexPlan("hnsw", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH})
    return IndexPlan("ivfpq", _ivfpq_params(count, embedder.dim, budget))


def _plan_binary(index_type: str, count: int) -> IndexPlan:
    if index_type == "ivfpq":
        raise MedisynError("index type 'ivfpq' is for float vectors; binary hashes use flat or hnsw")
    if index_type == "hnsw" or index_type == "auto" and count > 1_000_000:
        return IndexPlan("hnsw", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH})
    return IndexPlan("flat")


def _ivfpq_params(count: int, dim: int, budget: int | None) -> dict:
    """nlist ~ 4 sqrt(N); PQ code bytes m: a divisor of dim, as large as the budget allows (at most 64)."""
    nlist = int(max(1, min(4 * math.sqrt(count), count // 39)))
    nbits = int(min(8, max(1, math.floor(math.log2(max(2.0, count / 39))))))  # 2**nbits codes, ~39 samples each
    divisors = [m for m in range(1, min(dim, 64) + 1) if dim % m == 0]
    if budget is not None:
        divisors = [m for m in divisors if count * (m + 8) * 1.2 <= budget]
        if not divisors:
            raise MedisynError(f"max_memory {budget / 1e9:.2f} GB is too small for {count} vectors: "
                               f"IVF-PQ needs at least {count * 9.6 / 1e9:.2f} GB")
    return {"nlist": nlist, "m": divisors[-1], "nbits": nbits, "nprobe": min(nlist, 32),
            "train_size": int(min(count, max(256 * 39, nlist * 39, 2 ** nbits * 39)))}


def new_faiss_index(plan: IndexPlan, embedder: Embedder):
    """An empty FAISS index for the plan (IVF-PQ still needs `train`)."""
    import faiss

    if embedder.binary:
        if plan.type == "flat":
            return faiss.IndexBinaryFlat(embedder.dim)
        return faiss.IndexBinaryHNSW(embedder.dim, plan.params["M"])
    if plan.type == "flat":
        return faiss.IndexFlatIP(embedder.dim)
    if plan.type == "hnsw":
        index = faiss.IndexHNSWFlat(embedder.dim, plan.params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = plan.params["efConstruction"]
        return index
    p = plan.params
    quantizer = faiss.IndexFlatIP(embedder.dim)
    return faiss.IndexIVFPQ(quantizer, embedder.dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT)


def set_search_params(index, plan_type: str, params: dict) -> None:
    """efSearch for HNSW, nprobe for IVF: the recall / speed trade-off stored in index.json."""
    if plan_type == "hnsw":
        index.hnsw.efSearch = params.get("efSearch", HNSW_EF_SEARCH)
    elif plan_type == "ivfpq":
        index.nprobe = params.get("nprobe", 1)


def fill_index(vectors: np.ndarray, plan: IndexPlan, embedder: Embedder, chunk: int = 65_536):
    """Build the planned index over `vectors` (may be a memmap), training IVF-PQ on an evenly spread sample."""
    index = new_faiss_index(plan, embedder)
    if plan.type == "ivfpq":
        if len(vectors) < 39 * 2 ** plan.params["nbits"]:  # tiny sets: train anyway, without faiss's warnings
            index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
        step = max(1, len(vectors) // plan.params["train_size"])
        index.train(np.ascontiguousarray(vectors[::step][: plan.params["train_size"]], dtype=np.float32))
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start:start + chunk]))
    set_search_params(index, plan.type, plan.params)
    return index


# --- exact search, recall and the training set's own neighbour distances --------------------------------

def exact_search(vectors: np.ndarray, queries: np.ndarray, embedder: Embedder, k: int = 1,
                 chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (similarity, id) of queries over all vectors, in chunks (works on a memmap)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        sims = _similarity_matrix(queries, np.asarray(vectors[start:start + chunk]), embedder)
        all_s = np.concatenate([best_s, sims], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + sims.shape[1]), sims.shape)], axis=1)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    return best_s, best_i


def _similarity_matrix(queries: np.ndarray, base: np.ndarray, embedder: Embedder) -> np.ndarray:
    if not embedder.binary:
        return queries @ base.T
    q = np.unpackbits(queries, axis=1).astype(np.float32) * 2 - 1
    b = np.unpackbits(base, axis=1).astype(np.float32) * 2 - 1
    return ((q @ b.T + embedder.dim) / (2 * embedder.dim)).astype(np.float32)


def perturbed_queries(vectors: np.ndarray, embedder: Embedder, n: int, seed: int = 0) -> np.ndarray:
    """Near-copy-like queries: sampled training vectors with noise (cosine ~0.95; for hashes ~4% of bits flipped)."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(vectors), size=min(n, len(vectors)), replace=False))
    base = np.asarray(vectors[sample])
    if embedder.binary:
        flips = np.packbits(rng.random((len(base), embedder.dim)) < 0.04, axis=1)
        return base ^ flips
    noisy = base + rng.normal(0, 0.33 / math.sqrt(embedder.dim), base.shape).astype(np.float32)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def search_index(index, queries: np.ndarray, k: int, embedder: Embedder,
                 exact: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FAISS top-k as (similarity, id), higher = more similar; with `exact` vectors (IVF-PQ), the compressed
    index only proposes 4k candidates and their similarity is computed from the exact vectors."""
    with _threads_for(len(queries) * index.ntotal * queries.shape[1]):
        distances, ids = index.search(queries, k if exact is None else max(4 * k, 16))
    if exact is None:
        sims = embedder.similarity_from_distance(distances)
    else:
        sims = np.einsum("nd,nkd->nk", queries, np.asarray(exact[np.maximum(ids, 0)]))
        sims[ids < 0] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    sims = np.clip(sims, -1.0, 1.0).astype(np.float32)
    sims[ids < 0] = -np.inf
    return sims, ids.astype(np.int64)


SMALL_SEARCH = 1_000_000_000  # query x vector x dimension products (about 50 ms on one core) below which one
                               # FAISS thread is faster beside a busy model (benchmarks/overhead.py)


@contextmanager
def _threads_for(work: int):
    """One FAISS thread for small searches (e.g. screening a batch against a small index beside a busy model)."""
    import faiss

    if work >= SMALL_SEARCH:
        yield
        return
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def recall_at_1(search, vectors: np.ndarray, embedder: Embedder, n: int = RECALL_QUERIES) -> float:
    """Share of near-copy queries whose top-1 by `search(queries, k)` is as similar as the exact top-1 (ties count)."""
    queries = perturbed_queries(vectors, embedder, n)
    exact_s, _ = exact_search(vectors, queries, embedder)
    _, approx_i = search(queries, 1)
    found = approx_i[:, 0]
    sims = np.array([_similarity_matrix(q[None], np.asarray(vectors[i])[None], embedder)[0, 0] if i >= 0 else -np.inf
                     for q, i in zip(queries, found)])
    return float(np.mean(sims >= exact_s[:, 0] - 1e-5))


def neighbour_stats(search, vectors: np.ndarray, threshold: float, n: int = NN_SAMPLE) -> dict:
    """Similarity of training images to their nearest *other* training image (self-match excluded)."""
    sample = np.sort(np.random.default_rng(1).choice(len(vectors), size=min(n, len(vectors)), replace=False))
    if len(vectors) < 2:
        return {"sample": int(len(sample)), "percentiles": {}, "at_or_above_threshold": 0}
    sims, ids = search(np.ascontiguousarray(vectors[sample]), min(3, len(vectors)))
    other = ids != sample[:, None]
    nearest = np.array([s[o][0] if o.any() else np.nan for s, o in zip(sims, other)], dtype=np.float64)
    nearest = nearest[~np.isnan(nearest)]
    return {"sample": int(len(sample)),
            "percentiles": {f"p{q}": round(float(np.percentile(nearest, q)), 4) for q in PERCENTILES},
            "at_or_above_threshold": round(float(np.mean(nearest >= threshold)), 4)}


# --- build ----------------------------------------------------------------------------------------------

@dataclass
class Embedded:
    """What the embedding pass produced: vectors on disk, how many, and the records it had to skip."""

    vectors: np.ndarray
    count: int
    skipped: list[dict]
    regions: np.ndarray | None = None  # (count * len(TILES), dim) tile vectors, or None


def build_index(sources: list[str | Path], out: Path, embedder: str = "pixel", index_type: str = "auto",
                max_memory: str | None = None, batch_size: int = 256, show_progress: bool = True,
                overwrite: bool = False, shard=None, target_fpr: float | None = TARGET_FPR,
                regions: bool | None = None) -> dict:
    """Embed every image of `sources`; write index.faiss, keys.parquet, index.json to `out`; return index.json's content.

    The threshold is calibrated on the index's own images for `target_fpr` false positives (None: the
    embedder's default). With a `shard` (shards.Shard) of several, embed only this shard's batches; the shard
    that completes the last batch builds the index (index_shards.py, at the default target, without regions).
    `regions` (default: up to REGIONS_MAX images, float embedders) adds the vectors of 16 overlapping tiles of
    every training image, so crops and partial copies match the region they copy."""
    # 1. check every option before any work, and refuse a non-empty `out`
    out = Path(out)
    budget = parse_memory(max_memory)
    check_target_fpr(target_fpr)
    if index_type not in INDEX_TYPES:
        raise MedisynError(f"index type '{index_type}': expected one of {', '.join(INDEX_TYPES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MedisynError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    found = find_sources(list(sources))
    model = get_embedder(embedder)
    if model.binary and index_type == "ivfpq":
        raise MedisynError(f"index type 'ivfpq' is for float vectors; {model.name} codes use flat or hnsw")
    if shard is not None and shard.count > 1:
        from medisyn_cli.screening.index_shards import build_shard

        return build_shard(found, out, model, index_type, budget, batch_size, show_progress, shard)
    _prepare_out(out, overwrite)
    total = sum(count_images(source) for source in found)
    regions = (not model.binary and total <= REGIONS_MAX) if regions is None else bool(regions and not model.binary)
    # 2. embed in batches into a memmap, keys straight to parquet
    started = time.time()
    try:
        embedded = _embed_sources(found, model, out, total, batch_size, show_progress, regions)
        return finish_index(out, embedded, model, found, index_type, budget, started, sources, target_fpr)
    finally:
        for tmp in out.glob("*.tmp"):
            tmp.unlink()


def finish_index(out: Path, embedded: "Embedded", model: Embedder, found: list[Source], index_type: str,
                 budget: int | None, started: float, sources: list, target_fpr: float | None = TARGET_FPR) -> dict:
    """From embedded vectors (and keys.parquet.tmp) to the index folder: FAISS index, recall, index.json."""
    if embedded.count == 0:
        raise MedisynError(f"{', '.join(map(str, sources))}: none of the {embedded.count + len(embedded.skipped)} "
                           f"images could be read (first error: "
                           f"{embedded.skipped[0]['reason'] if embedded.skipped else '-'})")
    vectors = embedded.vectors[: embedded.count]
    # 3. the FAISS index, its recall when approximate, and the training set's own neighbour similarities
    plan = plan_index(index_type, embedded.count, model, budget)
    index = fill_index(vectors, plan, model)
    exact = _exact_store(vectors, out / (VECTORS_FILE + ".tmp")) if plan.type == "ivfpq" else None
    search = lambda queries, k: search_index(index, queries, k, model, exact)  # noqa: E731
    recall = None if plan.type == "flat" else round(recall_at_1(search, vectors, model), 4)
    tiles = _region_index(embedded, model)
    calibration = _calibrate(out, model, plan, index, exact, embedded.count, target_fpr, tiles)
    threshold = calibration.get("threshold", model.default_threshold)
    meta = _metadata(model, plan, embedded, found, recall, neighbour_stats(search, vectors, threshold),
                     time.time() - started)
    meta.update(threshold=threshold, screening={"views": "general", "calibration": calibration},
                regions=None if tiles is None else {"file": REGIONS_FILE, "tiles": [list(t.box) for t in TILES],
                                                    "count": int(tiles.ntotal)})
    # 4. write under temporary names, then rename; index.json last
    _write_index(index, model, out / (INDEX_FILE + ".tmp"))
    if tiles is not None:
        _write_index(tiles, model, out / (REGIONS_FILE + ".tmp"))
    _write_json(meta, out / (META_FILE + ".tmp"))
    del vectors, embedded
    exact = None  # frees the IVF-PQ exact store before the index is saved
    for name in ((INDEX_FILE, KEYS_FILE) + ((VECTORS_FILE,) if plan.type == "ivfpq" else ())
                 + ((REGIONS_FILE,) if tiles is not None else ()) + (META_FILE,)):
        os.replace(out / (name + ".tmp"), out / name)
    return meta


def check_target_fpr(target_fpr: float | None) -> None:
    """MedisynError unless `target_fpr` is None or a rate in (0, 0.5)."""
    if target_fpr is not None and (isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float))
                                   or not 0 < target_fpr < 0.5):
        raise MedisynError(f"target false-positive rate must be a number in (0, 0.5), e.g. 0.005, got {target_fpr!r}")


def _region_index(embedded: "Embedded", model: Embedder):
    """A FAISS index of every training image's tile vectors (id = image id * len(TILES) + tile), or None: exact up
    to REGIONS_FLAT_MAX tiles, HNSW beyond (1.5x faster at 15k tiles, growing with the count)."""
    if embedded.regions is None:
        return None
    rows = embedded.count * len(TILES)
    plan = IndexPlan("flat") if rows <= REGIONS_FLAT_MAX else \
        IndexPlan("hnsw", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH})
    return fill_index(embedded.regions[:rows], plan, model)


def _calibrate(out: Path, model: Embedder, plan: IndexPlan, index, exact, count: int,
               target_fpr: float | None, tiles=None) -> dict:
    """Screen a sample of the index's own images against it (screen.calibrate); {} without a target or images."""
    from medisyn_cli.core.datasets import open_key
    from medisyn_cli.screening.screener import CALIBRATION_MIN, CALIBRATION_SAMPLE, calibrate

    if target_fpr is None:
        return {"skipped": "no target false-positive rate: the embedder's default threshold"}
    if count < CALIBRATION_MIN:
        return {"skipped": f"{count} images, fewer than {CALIBRATION_MIN}: the embedder's default threshold"}
    keys, labels = _read_keys(out / (KEYS_FILE + ".tmp"))
    meta = {"count": count, "threshold": model.default_threshold, "index": {"type": plan.type},
            "screening": {"views": "general"}}
    training = TrainingIndex(out, meta, model, index, keys, labels, exact, tiles)
    sample = np.sort(np.random.default_rng(2).choice(count, size=min(CALIBRATION_SAMPLE, count), replace=False))
    images = []
    for i in sample:
        try:
            images.append((int(i), open_key(keys[i])))
        except Exception:  # a file that went away since it was embedded: calibrate on the others
            continue
    return calibrate(training, images, target_fpr)


def _exact_store(vectors: np.ndarray, path: Path, chunk: int = 65_536) -> np.ndarray:
    """Copy the vectors to their own .npy (memory-mapped), for re-scoring IVF-PQ candidates exactly."""
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=vectors.shape)
    for start in range(0, len(vectors), chunk):
        store[start:start + chunk] = vectors[start:start + chunk]
    store.flush()
    return store


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless overwrite, and then only an index folder (index.json or leftovers)."""
    if out.exists() and not out.is_dir():
        raise MedisynError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MedisynError(f"{out}: folder exists and is not empty (use overwrite to replace the index)")
        ours = {INDEX_FILE, KEYS_FILE, META_FILE, VECTORS_FILE, REGIONS_FILE}
        if not all(p.name in ours or p.name.endswith(".tmp") for p in out.iterdir()):
            raise MedisynError(f"{out}: overwrite only replaces an index folder, and this folder holds other files")
        for p in out.iterdir():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _embed_sources(found: list[Source], model: Embedder, out: Path, total: int, batch_size: int,
                   show_progress: bool, regions: bool = False) -> Embedded:
    """Decode and embed every image in batches; vectors go to a memmap, keys to keys.parquet.tmp (and with
    `regions`, each image's tile vectors to regions.npy.tmp)."""
    from medisyn_cli.core.progress import make_progress, rate_text

    dtype = np.uint8 if model.binary else np.float32
    vectors = np.lib.format.open_memmap(out / "embedding.npy.tmp", mode="w+", dtype=dtype,
                                        shape=(max(total, 1), model.code_size))
    tiles = np.lib.format.open_memmap(out / "regions.npy.tmp", mode="w+", dtype=np.float32,
                                      shape=(max(total, 1) * len(TILES), model.dim)) if regions else None
    skipped: list[dict] = []
    count, started = 0, time.time()
    with _KeyWriter(out / (KEYS_FILE + ".tmp")) as keys, make_progress(disable=not show_progress) as progress:
        task = progress.add_task(f"embedding ({model.name})", total=total, rate="", info="")
        for batch in _batches(found, batch_size):
            images, records = _decode(batch, skipped)
            codes, records, kept = _embed_batch(model, images, records, skipped)
            vectors[count:count + len(codes)] = codes
            if tiles is not None and len(kept):
                tiles[count * len(TILES):(count + len(codes)) * len(TILES)] = \
                    model.embed_views(kept, TILES).reshape(-1, model.dim)
            keys.write(records, count)
            count += len(codes)
            done = count + len(skipped)
            progress.update(task, completed=done, rate=rate_text(done, time.time() - started, "img"),
                            info=f"{len(skipped)} skipped" if skipped else "")
    vectors.flush()
    if tiles is not None:
        tiles.flush()
    return Embedded(vectors, count, skipped, tiles)


def _batches(found: list[Source], size: int) -> Iterator[list[tuple[Source, Record]]]:
    batch = []
    for source in found:
        for record in iter_source_records(source):
            batch.append((source, record))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _decode(batch: list, skipped: list[dict]) -> tuple[list, list]:
    """PIL images of a batch; unreadable records are added to `skipped` with the reason."""
    images, records = [], []
    for source, record in batch:
        try:
            images.append(record.open())
            records.append((source, record))
        except Exception as exc:  # PIL raises many types for corrupt or truncated data
            skipped.append({"key": record.key, "reason": f"{type(exc).__name__}: {exc}"[:300]})
    return images, records


def _embed_batch(model: Embedder, images: list, records: list, skipped: list[dict]) -> tuple[np.ndarray, list, list]:
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
                skipped.append({"key": record[1].key, "reason": f"embedding failed: {type(exc).__name__}: {exc}"[:300]})
        dtype = np.uint8 if model.binary else np.float32
        return (np.stack(codes) if codes else np.zeros((0, model.code_size), dtype)), kept, kept_images


class _KeyWriter:
    """keys.parquet written batch by batch (id, key, label, source), so memory does not grow with the count."""

    def __init__(self, path: Path):
        self.path, self.writer = path, None

    def __enter__(self) -> "_KeyWriter":
        return self

    def write(self, records: list, first_id: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "id": pa.array(range(first_id, first_id + len(records)), pa.int64()),
            "key": pa.array([r.key for _, r in records], pa.string()),
            "label": pa.array([None if r.label is None else str(r.label) for _, r in records], pa.string()),
            "source": pa.array([str(s.path) for s, _ in records], pa.string())})
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def __exit__(self, *exc) -> None:
        if self.writer is None:
            self.write([], 0)
        self.writer.close()


def _metadata(model: Embedder, plan: IndexPlan, embedded: Embedded, found: list[Source], recall: float | None,
              neighbours: dict, seconds: float) -> dict:
    from medisyn_cli import __version__

    return {
        "format": FORMAT,
        "embedder": {"spec": model.name, "settings": model.settings(), "dim": model.dim, "binary": model.binary},
        "metric": "hamming" if model.binary else "inner_product",
        "similarity": "1 - hamming / bits" if model.binary else "cosine",
        "count": embedded.count,
        "threshold": model.default_threshold,
        "index": {"type": plan.type, "params": plan.params, "recall_at_1": recall,
                  "recall_queries": None if recall is None else RECALL_QUERIES,
                  "vectors": VECTORS_FILE if plan.type == "ivfpq" else None},
        "sources": [str(s.path) for s in found],
        "fingerprint": source_fingerprint(found),
        "skipped": {"count": len(embedded.skipped), "files": embedded.skipped},
        "nearest_neighbour_similarity": neighbours,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "medisyn_version": __version__,
    }


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


def _write_index(index, model: Embedder, path: Path) -> None:
    import faiss

    (faiss.write_index_binary if model.binary else faiss.write_index)(index, str(path))


def _write_json(meta: dict, path: Path) -> None:
    path.write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")


# --- load -----------------------------------------------------------------------------------------------

@dataclass
class TrainingIndex:
    """A loaded index: metadata, the embedder that made it, FAISS search and id -> key lookup."""

    path: Path
    meta: dict
    embedder: Embedder
    faiss_index: object
    keys: list[str]
    labels: list[str | None]
    exact: np.ndarray | None = None  # IVF-PQ: the exact vectors (memory-mapped vectors.npy)
    regions: object | None = None    # FAISS index of the training images' tiles (embed.TILES), or None

    def __len__(self) -> int:
        return int(self.meta["count"])

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, keys: list[str], embedder: Embedder, index_type: str = "flat",
                     labels: list[str | None] | None = None, regions: np.ndarray | None = None) -> "TrainingIndex":
        """An in-memory index over given vectors (no files): for tests, benchmarks and small ad-hoc checks;
        `regions`: (len(vectors) * len(TILES), dim) tile vectors, for region matching."""
        if len(vectors) != len(keys):
            raise MedisynError(f"{len(vectors)} vectors but {len(keys)} keys")
        plan = plan_index(index_type, len(vectors), embedder, None)
        meta = {"format": FORMAT, "count": len(vectors), "threshold": embedder.default_threshold,
                "embedder": {"spec": embedder.name, "settings": _jsonable(embedder.settings()), "dim": embedder.dim,
                             "binary": embedder.binary},
                "index": {"type": plan.type, "params": plan.params}, "screening": {"views": "general"}}
        vectors = np.ascontiguousarray(vectors)
        index = fill_index(vectors, plan, embedder)
        tiles = None
        if regions is not None:
            tiles = _region_index(Embedded(vectors, len(vectors), [], np.ascontiguousarray(regions)), embedder)
        return cls(Path("<memory>"), meta, embedder, index, list(keys), list(labels or [None] * len(keys)),
                   vectors if plan.type == "ivfpq" else None, tiles)

    @property
    def threshold(self) -> float:
        """The default near-copy threshold stored at build time."""
        return float(self.meta["threshold"])

    @property
    def view_set(self) -> str:
        """The query views its threshold was set for: 'general', or 'tuned' for indexes built before issue #16."""
        return self.meta.get("screening", {}).get("views", "tuned")

    def search(self, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 (N, k), ids int64 (N, k)); higher is more similar; missing hits: -inf, -1."""
        dtype = np.uint8 if self.embedder.binary else np.float32
        vectors = np.ascontiguousarray(vectors, dtype=dtype)
        if vectors.ndim != 2 or vectors.shape[1] != self.embedder.code_size:
            raise MedisynError(f"{self.path}: queries must be (N, {self.embedder.code_size}) vectors from "
                               f"{self.embedder.name}, got shape {vectors.shape}")
        if len(vectors) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return search_index(self.faiss_index, vectors, k, self.embedder, self.exact)

    @property
    def can_reconstruct(self) -> bool:
        """Whether exact vectors are kept (flat, hnsw, and IVF-PQ's vectors.npy) for `reconstruct`."""
        return not self.embedder.binary and (self.meta["index"]["type"] in ("flat", "hnsw") or self.exact is not None)

    def reconstruct(self, ids) -> np.ndarray:
        """The exact stored vectors of `ids` (float indexes)."""
        if not self.can_reconstruct:
            raise MedisynError(f"{self.path}: a {self.meta['index']['type']} index does not keep exact vectors")
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self.exact is not None:
            return np.asarray(self.exact[ids], dtype=np.float32)
        return np.stack([self.faiss_index.reconstruct(int(i)) for i in ids]) if len(ids) else \
            np.zeros((0, self.embedder.dim), np.float32)

    def key(self, ids) -> list[str]:
        """Source keys (file paths, or parquet file:row) of vector ids; '' for -1."""
        return [self.keys[i] if i >= 0 else "" for i in np.asarray(ids, dtype=np.int64).ravel()]

    def label(self, ids) -> list[str | None]:
        """Labels of vector ids where the source had them."""
        return [self.labels[i] if i >= 0 else None for i in np.asarray(ids, dtype=np.int64).ravel()]


def load_index(path: str | Path) -> TrainingIndex:
    """Load an index folder written by build_index; MedisynError when it is missing, partial or corrupt."""
    path = Path(path)
    meta = read_meta(path)
    embedder = get_embedder(meta["embedder"]["spec"])
    if _jsonable(embedder.settings()) != meta["embedder"].get("settings"):
        raise MedisynError(f"{path}: built with {embedder.name} settings {meta['embedder'].get('settings')}, but "
                           f"this medisyn computes {_jsonable(embedder.settings())}; rebuild the index")
    faiss_index = _read_faiss(path / INDEX_FILE, embedder)
    keys, labels = _read_keys(path / KEYS_FILE)
    if faiss_index.ntotal != meta["count"] or len(keys) != meta["count"]:
        raise MedisynError(f"{path}: index.json says {meta['count']} vectors, index.faiss has {faiss_index.ntotal} "
                           f"and keys.parquet {len(keys)}; rebuild the index")
    set_search_params(faiss_index, meta["index"]["type"], meta["index"].get("params", {}))
    exact = _read_vectors(path / meta["index"]["vectors"], meta, embedder) if meta["index"].get("vectors") else None
    regions = _read_faiss(path / meta["regions"]["file"], embedder) if meta.get("regions") else None
    if regions is not None and regions.ntotal != meta["count"] * len(TILES):
        raise MedisynError(f"{path}: {REGIONS_FILE} holds {regions.ntotal} tiles, expected {meta['count']} x "
                           f"{len(TILES)}; rebuild the index")
    return TrainingIndex(path, meta, embedder, faiss_index, keys, labels, exact, regions)


def _read_vectors(path: Path, meta: dict, embedder: Embedder) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise MedisynError(f"{path}: cannot read the exact vectors ({type(exc).__name__}); rebuild the index") from exc
    if vectors.shape != (meta["count"], embedder.dim):
        raise MedisynError(f"{path}: shape {vectors.shape}, expected ({meta['count']}, {embedder.dim}); "
                           f"rebuild the index")
    return vectors


def read_meta(path: Path) -> dict:
    """index.json of an index folder, checked for the fields medisyn needs."""
    if not path.is_dir():
        raise MedisynError(f"{path}: no such index folder (build one with `medisyn index build`)")
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise MedisynError(f"{path}: not an index folder, or an unfinished build (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["embedder"]["spec"], meta["count"], meta["index"]["type"], meta["threshold"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as exc:
        raise MedisynError(f"{meta_path}: corrupt index metadata ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise MedisynError(f"{meta_path}: index format {meta.get('format')} is not {FORMAT}; rebuild the index")
    threshold = meta["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise MedisynError(f"{meta_path}: threshold {threshold!r} is not a similarity in (0, 1]; fix index.json or "
                           f"rebuild the index (medisyn index build ... --overwrite)")
    views = meta.get("screening", {}).get("views", "tuned")
    if views not in VIEW_SETS:
        raise MedisynError(f"{meta_path}: unknown view set {views!r} (this medisyn knows {', '.join(VIEW_SETS)}); "
                           f"rebuild the index with this medisyn")
    return meta


def _read_faiss(path: Path, embedder: Embedder):
    import faiss

    if not path.exists():
        raise MedisynError(f"{path}: missing; rebuild the index")
    try:
        return (faiss.read_index_binary if embedder.binary else faiss.read_index)(str(path))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MedisynError(f"{path}: cannot read the FAISS index ({first}); rebuild it") from exc


def _read_keys(path: Path) -> tuple[list[str], list[str | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["id", "key", "label"])
    except Exception as exc:  # missing file or not parquet
        raise MedisynError(f"{path}: cannot read the keys ({type(exc).__name__}); rebuild the index") from exc
    ids = table.column("id").to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise MedisynError(f"{path}: ids are not 0..{len(ids) - 1} in order; rebuild the index")
    return table.column("key").to_pylist(), table.column("label").to_pylist()


def _jsonable(value):
    """Settings as they read back from index.json (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
