"""FAISS internals, apart from the index API: choosing an index type for a memory budget, filling it,
searching it (exact re-rank, thread limits), recall and neighbour statistics, reading and writing."""

from __future__ import annotations

import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.screening.embed import TILES, Embedder, blas_threads

FLAT_MAX = 100_000  # auto: exact search up to this many vectors (and while it fits the memory budget)


HNSW_MAX = 5_000_000  # auto without a budget: HNSW up to this many, IVF-PQ beyond


HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128


HNSW_PCA_DIMS, HNSW_PCA_EF_SEARCH = 48, 64  # HNSW of many wide float vectors: its graph on a PCA projection
HNSW_PCA_MIN_DIM, HNSW_PCA_MIN_COUNT, PCA_TRAIN_SIZE = 512, 10_000, 65_536


RECALL_QUERIES, NN_SAMPLE = 500, 10_000


PERCENTILES = (0, 1, 5, 25, 50, 75, 95, 99, 100)


UNITS = {
    "": 1,
    "B": 1,
    "K": 1e3,
    "KB": 1e3,
    "M": 1e6,
    "MB": 1e6,
    "G": 1e9,
    "GB": 1e9,
    "T": 1e12,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_memory(text: str | int | None) -> int | None:
    """'4GB', '512MB', '1.5GiB' or a byte count -> bytes; None stays None; anything else -> MedisynError."""
    if text is None or isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise MedisynError(f"max_memory '{text}': expected a size such as 4GB, 512MB or 1.5GiB")
    return int(float(match.group(1)) * UNITS[unit])


@dataclass
class IndexPlan:
    """Which FAISS index to build for `count` vectors, with its parameters (stored in index.json)."""

    type: str
    params: dict = field(default_factory=dict)

    @property
    def keeps_vectors(self) -> bool:
        """Whether index.faiss holds only a compressed (IVF-PQ) or projected (HNSW over PCA) form of the vectors:
        the exact vectors are then kept in vectors.npy and re-score its candidates."""
        return self.type == "ivfpq" or bool(self.params.get("pca"))


def plan_index(index_type: str, count: int, embedder: Embedder, budget: int | None) -> IndexPlan:
    """Resolve 'auto' by count and memory budget, and pick the parameters of the chosen type."""
    if index_type not in INDEX_TYPES:
        raise MedisynError(f"index type '{index_type}': expected one of {', '.join(INDEX_TYPES)}")
    if embedder.binary:
        return _plan_binary(index_type, count)
    graph_dim = _plan_hnsw(embedder.dim, count).params.get("pca", embedder.dim)
    flat_bytes, hnsw_bytes = count * embedder.dim * 4, count * (graph_dim * 4 + HNSW_M * 2 * 4 * 1.5)
    if index_type == "auto":
        fits = lambda size: budget is None or size <= budget  # noqa: E731
        index_type = (
            "flat"
            if count <= FLAT_MAX and fits(flat_bytes)
            else "hnsw"
            if fits(hnsw_bytes) and (budget is not None or count <= HNSW_MAX)
            else "ivfpq"
        )
    if index_type == "flat":
        return IndexPlan("flat")
    if index_type == "hnsw":
        return _plan_hnsw(embedder.dim, count)
    return IndexPlan("ivfpq", _ivfpq_params(count, embedder.dim, budget))


def _plan_hnsw(dim: int, count: int) -> IndexPlan:
    """HNSW; over HNSW_PCA_MIN_COUNT vectors of HNSW_PCA_MIN_DIM dims or more, its graph is built on a PCA projection
    to HNSW_PCA_DIMS (L2 there is a lower bound of the exact distance) and proposes candidates that the exact
    vectors (vectors.npy) re-score: about 6x the queries per second of an HNSW over the full vectors, at the same
    recall (benchmarks/screen_scale.py)."""
    if dim < HNSW_PCA_MIN_DIM or count < HNSW_PCA_MIN_COUNT:
        return IndexPlan(
            "hnsw", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
        )
    return IndexPlan(
        "hnsw",
        {
            "M": HNSW_M,
            "efConstruction": HNSW_EF_CONSTRUCTION,
            "efSearch": HNSW_PCA_EF_SEARCH,
            "pca": HNSW_PCA_DIMS,
            "train_size": PCA_TRAIN_SIZE,
        },
    )


def _plan_binary(index_type: str, count: int) -> IndexPlan:
    if index_type == "ivfpq":
        raise MedisynError("index type 'ivfpq' is for float vectors; binary hashes use flat or hnsw")
    if index_type == "hnsw" or index_type == "auto" and count > 1_000_000:
        return _plan_hnsw(0, count)
    return IndexPlan("flat")


def _ivfpq_params(count: int, dim: int, budget: int | None) -> dict:
    """nlist ~ 4 sqrt(N); PQ code bytes m: a divisor of dim, as large as the budget allows (at most 64)."""
    nlist = int(max(1, min(4 * math.sqrt(count), count // 39)))
    nbits = int(
        min(8, max(1, math.floor(math.log2(max(2.0, count / 39)))))
    )  # 2**nbits codes, ~39 samples each
    divisors = [m for m in range(1, min(dim, 64) + 1) if dim % m == 0]
    if budget is not None:
        divisors = [m for m in divisors if count * (m + 8) * 1.2 <= budget]
        if not divisors:
            raise MedisynError(
                f"max_memory {budget / 1e9:.2f} GB is too small for {count} vectors: "
                f"IVF-PQ needs at least {count * 9.6 / 1e9:.2f} GB"
            )
    return {
        "nlist": nlist,
        "m": divisors[-1],
        "nbits": nbits,
        "nprobe": min(nlist, 32),
        "train_size": int(min(count, max(256 * 39, nlist * 39, 2**nbits * 39))),
    }


def new_faiss_index(plan: IndexPlan, embedder: Embedder):
    """An empty FAISS index for the plan (IVF-PQ still needs `train`)."""
    import faiss

    if embedder.binary:
        if plan.type == "flat":
            return faiss.IndexBinaryFlat(embedder.dim)
        return faiss.IndexBinaryHNSW(embedder.dim, plan.params["M"])
    if plan.type == "flat":
        return faiss.IndexFlatIP(embedder.dim)
    if plan.type == "hnsw" and plan.params.get("pca"):
        dims = plan.params["pca"]
        graph = faiss.IndexHNSWFlat(dims, plan.params["M"], faiss.METRIC_L2)
        graph.hnsw.efConstruction = plan.params["efConstruction"]
        return faiss.IndexPreTransform(faiss.PCAMatrix(embedder.dim, dims), graph)
    if plan.type == "hnsw":
        index = faiss.IndexHNSWFlat(embedder.dim, plan.params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = plan.params["efConstruction"]
        return index
    p = plan.params
    quantizer = faiss.IndexFlatIP(embedder.dim)
    return faiss.IndexIVFPQ(
        quantizer, embedder.dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT
    )


def set_search_params(index, plan_type: str, params: dict) -> None:
    """efSearch for HNSW, nprobe for IVF: the recall / speed trade-off stored in index.json."""
    if plan_type == "hnsw":
        hnsw_graph(index).hnsw.efSearch = params.get("efSearch", HNSW_EF_SEARCH)
    elif plan_type == "ivfpq":
        index.nprobe = params.get("nprobe", 1)


def hnsw_graph(index):
    """The HNSW index itself: `index`, or the one inside a PCA pre-transform."""
    import faiss

    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index


def fill_index(vectors: np.ndarray, plan: IndexPlan, embedder: Embedder, chunk: int = 65_536):
    """Build the planned index over `vectors` (may be a memmap), training IVF-PQ or the PCA of a projected HNSW
    on an evenly spread sample."""
    index = new_faiss_index(plan, embedder)
    if not index.is_trained:
        if plan.type == "ivfpq" and len(vectors) < 39 * 2 ** plan.params["nbits"]:
            # tiny sets: train anyway, without faiss's warnings
            index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
        step = max(1, len(vectors) // plan.params["train_size"])
        index.train(np.ascontiguousarray(vectors[::step][: plan.params["train_size"]], dtype=np.float32))
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk]))
    set_search_params(index, plan.type, plan.params)
    return index


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, embedder: Embedder, k: int = 1, chunk: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (similarity, id) of queries over all vectors, in chunks (works on a memmap)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        sims = _similarity_matrix(queries, np.asarray(vectors[start : start + chunk]), embedder)
        all_s = np.concatenate([best_s, sims], axis=1)
        all_i = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, start + sims.shape[1]), sims.shape)], axis=1
        )
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


def search_index(
    index, queries: np.ndarray, k: int, embedder: Embedder, exact: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS top-k as (similarity, id), higher = more similar; with `exact` vectors (IVF-PQ), the compressed
    index only proposes 4k candidates and their similarity is computed from the exact vectors."""
    with _threads_for(len(queries) * index.ntotal * queries.shape[1]):
        distances, ids = index.search(queries, k if exact is None else max(4 * k, 16))
    if exact is None:
        sims = embedder.similarity_from_distance(distances)
    else:
        sims, ids = rescore(queries, ids, exact, k)
    sims = np.clip(sims, -1.0, 1.0).astype(np.float32)
    sims[ids < 0] = -np.inf
    return sims, ids.astype(np.int64)


def rescore(
    queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of candidate `ids` (per query; -1: none) by exact inner product with `vectors` (may be a memmap).
    Consecutive queries (the views of one image) share most candidates: each block of queries gathers its distinct
    candidates once and scores them in one product, when that is less work than a gather per candidate."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.asarray(vectors)  # a memmap as a plain view: no memmap wrapping per gather
    exact = np.empty(ids.shape, np.float32)
    with blas_threads():
        for start in range(0, len(ids), block):
            part, rows = np.maximum(ids[start : start + block], 0), queries[start : start + block]
            unique, where = np.unique(part, return_inverse=True)
            if len(unique) <= RESCORE_SHARED * part.shape[1]:
                sims = rows @ vectors[unique].T
                exact[start : start + block] = np.take_along_axis(sims, where.reshape(part.shape), 1)
            else:
                for j in range(part.shape[1]):
                    exact[start : start + block, j] = np.einsum("nd,nd->n", rows, vectors[part[:, j]])
    exact[ids < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)


# a block's distinct candidates, per candidate column, up to which one product scores them all
RESCORE_SHARED = 8


@contextmanager
def _threads_for(work: int):
    """One FAISS thread for small searches (e.g. screening a batch against a small index beside a busy model)."""
    if work >= SMALL_SEARCH:
        yield
        return
    with faiss_threads(1):
        yield


@contextmanager
def blas_distances():
    """FAISS's flat searches of at least BLAS_QUERIES queries scored as one matrix product (BLAS), not one vector pair
    at a time: this faiss does that only from 128,000 queries on (4.5x slower for a screen's view-by-view searches).
    The setting is the process's: overlapping users (threads) share it, the last one out restores it."""
    import faiss

    with _BLAS_DISTANCES["lock"]:
        if _BLAS_DISTANCES["users"] == 0:
            _BLAS_DISTANCES["before"] = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = min(_BLAS_DISTANCES["before"], BLAS_QUERIES)
        _BLAS_DISTANCES["users"] += 1
    try:
        yield
    finally:
        with _BLAS_DISTANCES["lock"]:
            _BLAS_DISTANCES["users"] -= 1
            if _BLAS_DISTANCES["users"] == 0:
                faiss.cvar.distance_compute_blas_threshold = _BLAS_DISTANCES["before"]


BLAS_QUERIES = 20  # faiss's own default before it raised it
_BLAS_DISTANCES = {"lock": threading.Lock(), "users": 0, "before": None}  # blas_distances's state


@contextmanager
def faiss_threads(count: int):
    """At most `count` OpenMP threads in FAISS calls made from this thread (restored after)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(min(count, threads))
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
    sims = np.array(
        [
            _similarity_matrix(q[None], np.asarray(vectors[i])[None], embedder)[0, 0] if i >= 0 else -np.inf
            for q, i in zip(queries, found)
        ]
    )
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
    return {
        "sample": int(len(sample)),
        "percentiles": {f"p{q}": round(float(np.percentile(nearest, q)), 4) for q in PERCENTILES},
        "at_or_above_threshold": round(float(np.mean(nearest >= threshold)), 4),
    }


def _exact_store(vectors: np.ndarray, path: Path, chunk: int = 65_536) -> np.ndarray:
    """Copy the vectors to their own .npy (memory-mapped), for re-scoring IVF-PQ candidates exactly."""
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=vectors.shape)
    for start in range(0, len(vectors), chunk):
        store[start : start + chunk] = vectors[start : start + chunk]
    store.flush()
    return store


def _write_index(index, model: Embedder, path: Path) -> None:
    import faiss

    (faiss.write_index_binary if model.binary else faiss.write_index)(index, str(path))


def _read_vectors(path: Path, meta: dict, embedder: Embedder) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise MedisynError(
            f"{path}: cannot read the exact vectors ({type(exc).__name__}); rebuild the index"
        ) from exc
    if vectors.shape != (meta["count"], embedder.dim):
        raise MedisynError(
            f"{path}: shape {vectors.shape}, expected ({meta['count']}, {embedder.dim}); rebuild the index"
        )
    return vectors


def _read_faiss(path: Path, embedder: Embedder):
    """A float index with its stored vectors memory-mapped where this faiss can (flat codes: the tiles of 962 images
    load in 0.1 ms instead of 70-200 ms, pages read on first use; files are replaced by rename, never rewritten)."""
    import faiss

    if not path.exists():
        raise MedisynError(f"{path}: missing; rebuild the index")
    try:
        if embedder.binary:
            return faiss.read_index_binary(str(path))
        try:
            return faiss.read_index(str(path), getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
        except RuntimeError:  # a platform without the mapping; a corrupt file fails again below
            return faiss.read_index(str(path))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MedisynError(f"{path}: cannot read the FAISS index ({first}); rebuild it") from exc


# query x vector x dimension products (about 100 ms on one core) below which one FAISS thread is faster beside a
# busy model (benchmarks/overhead.py: generate's 8-image batches against the general views and the tiles)
SMALL_SEARCH = 2_000_000_000


def region_index(regions: np.ndarray | None, count: int, model: Embedder):
    """A FAISS index of `count` training images' tile vectors (id = image id * len(TILES) + tile), or None: exact
    up to REGIONS_FLAT_MAX tiles, HNSW beyond (1.5x faster at 15k tiles, growing with the count)."""
    if regions is None:
        return None
    rows = count * len(TILES)
    plan = (
        IndexPlan("flat")
        if rows <= REGIONS_FLAT_MAX
        else IndexPlan(
            "hnsw", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
        )
    )
    return fill_index(regions[:rows], plan, model)


REGIONS_FLAT_MAX = 16_384  # tiles searched exactly up to this many (1,024 images), with HNSW beyond


# the PCA projection of the tiles and of a flat index's whole images (grouped.GroupedSearch): its dimensions and the
# vectors its basis is estimated on
TILE_PCA_DIMS, TILE_PCA_SAMPLE = 128, 8192


def stored_vectors(index) -> np.ndarray:
    """The vectors of a flat or HNSW-flat float FAISS index, as a numpy view of its storage (no copy)."""
    import faiss

    flat = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


def tile_projection(
    vectors: np.ndarray, dims: int = TILE_PCA_DIMS, sample: int = TILE_PCA_SAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """(basis float32 (dim, dims), projected float32 (N, dims)): the top principal directions (uncentred) of a
    seeded sample of the tile vectors, and every tile projected on them. Computed once at index build (stored in
    regions_pca.npz) or, for an index built before, when a screener first searches its tiles."""
    rows = np.random.default_rng(0).choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    part = vectors[np.sort(rows)].astype(np.float64)
    with blas_threads():
        _, basis = np.linalg.eigh(part.T @ part)
        basis = np.ascontiguousarray(basis[:, ::-1][:, : min(dims, vectors.shape[1])], dtype=np.float32)
        projected = np.ascontiguousarray(vectors @ basis)
    return basis, projected


INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
