"""How do the training-image indexes scale: exact vs approximate search over 1,000,000 realistic vectors.

Measures OUR index code and parameters (medisyn_cli.screening.index: plan_index -> fill_index -> search_index, with
IVF-PQ's exact re-scoring from the memory-mapped vectors) for each index type: build seconds, index bytes
(faiss.write_index, the same bytes as serialize_index), the process's peak RSS growth, queries/s for k=1 and
k=5, recall@1 against exact search, and near-copy detection at the pixel threshold. The baseline is `flat`
(IndexFlatIP, exact); the candidates are `hnsw` and `ivfpq`, each with its ratio to the baseline. Then
screening end to end: `Screener(index).check(images)` with views (the path `generate` uses) on real 64x64
images, against the flat and the HNSW index, next to embedding alone, to show where the time goes.

Vectors ("random but realistic"): i.i.d. Gaussian vectors have no clusters and almost no close neighbours,
which makes approximate search unrealistically easy (or, at high dimension, meaninglessly hard). So the
6,754 real images of ../shared/data are embedded with the default `pixel` embedder (1,024 dims), and those
real vectors are the first rows of the index; every other row is synthesised from them:

    v = a + beta * (u1 b1 + u2 b2) + gamma * (r1 + r2) / 2 + sigma * g,   then mean removed, L2-normalised

    a        a real vector (uniform), the "source" the synthetic image resembles
    b1, b2   two of a's 10 nearest real neighbours, mixed with Dirichlet(1, 1) weights u;  beta ~ U(0, 0.3)
    r1, r2   two random real vectors of a's data set (image-like texture, not white noise); gamma ~ U(0, 2.5)
    g        N(0, 1/dim) per component, sigma = 0.05
    10% of rows are near-duplicates of their source: beta and gamma scaled by 0.1

The parameters were chosen so that a 6,754-row sample of the generator has the real set's distribution of
nearest-other-neighbour similarity (real p5/p25/p50/p75/p95 0.49/0.71/0.84/0.91/0.98, 8.2% >= 0.97;
synthetic 0.60/0.75/0.84/0.91/0.97, 5.5% >= 0.97); the run prints that check, and the same distribution for
the whole indexed set, which is denser (about 150 synthetic rows per real source, as a large training set
of one modality is).

Queries (default 10,000): half near-copies of indexed rows, q = c v + sqrt(1 - c^2) d with c ~ U(0.972, 0.99)
the cosine to the source and d a unit direction orthogonal to v, half from a Gaussian and half from a fresh
generator row (a realistic image difference); the other half fresh generator rows that are not in the index.
recall@1 = share of queries whose top-1 similarity equals the exact top-1's within 1e-5 (ties count);
copy detection = share of near-copies whose top-1 similarity is >= 0.97 (exact search: 100% by
construction); source found = the top-1 is the source or as similar to the query as the source.

    python benchmarks/screen_scale.py                       # 1,000,000 vectors, 10,000 queries, flat,hnsw,ivfpq
    OMP_NUM_THREADS=1 python benchmarks/screen_scale.py --n 20000 --queries 1000     # a quick check

Writes the printed report to benchmarks/results/screen_scale.txt and the numbers to --out (JSON). At 1M rows
the vectors are 4.1 GB (a memory-mapped .npy in --work, deleted at the end) and each index up to 4.4 GB;
one index is held at a time, so the process stays under ~10 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO.parent / "shared" / "data"
TYPES = ("flat", "hnsw", "ivfpq", "hnsw-full")  # hnsw-full: an HNSW graph over the full vectors (before #16)
NEIGHBOURS, BETA_MAX, GAMMA_MAX, SIGMA, NEAR_DUPLICATES = 10, 0.3, 2.5, 0.05, 0.1
COPY_COSINE = (0.972, 0.99)
PERCENTILES = (5, 25, 50, 75, 95)


# --- realistic vectors ----------------------------------------------------------------------------------


class Generator:
    """Synthetic pixel-embedder vectors made from the real ones (see the module docstring for the recipe)."""

    def __init__(self, real: np.ndarray, sets: np.ndarray):
        self.real = np.ascontiguousarray(real, dtype=np.float32)
        sims = self.real @ self.real.T
        np.fill_diagonal(sims, -np.inf)
        self.neighbours = np.argsort(-sims, axis=1)[:, :NEIGHBOURS]
        _, self.set_of = np.unique(sets, return_inverse=True)
        self.by_set = np.argsort(self.set_of, kind="stable")  # row ids grouped by data set
        counts = np.bincount(self.set_of)
        self.set_start, self.set_count = np.concatenate([[0], np.cumsum(counts)[:-1]]), counts

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, dim) float32 L2-normalised synthetic vectors."""
        anchor = rng.integers(0, len(self.real), n)
        partners = self.neighbours[anchor[:, None], rng.integers(0, NEIGHBOURS, (n, 2))]
        sets = self.set_of[anchor]
        randoms = self.by_set[
            self.set_start[sets][:, None]
            + (rng.random((n, 2)) * self.set_count[sets][:, None]).astype(np.int64)
        ]
        close = rng.random(n) < NEAR_DUPLICATES
        beta = (BETA_MAX * rng.random(n) * np.where(close, 0.1, 1.0)).astype(np.float32)[:, None]
        gamma = (GAMMA_MAX * rng.random(n) * np.where(close, 0.1, 1.0)).astype(np.float32)[:, None]
        u = rng.dirichlet((1.0, 1.0), n).astype(np.float32)
        v = self.real[anchor] + beta * (
            u[:, :1] * self.real[partners[:, 0]] + u[:, 1:] * self.real[partners[:, 1]]
        )
        v += gamma * (self.real[randoms[:, 0]] + self.real[randoms[:, 1]]) / 2
        v += rng.standard_normal(v.shape, dtype=np.float32) * np.float32(SIGMA / math.sqrt(v.shape[1]))
        return _normalise(v)


def _normalise(v: np.ndarray) -> np.ndarray:
    v -= v.mean(axis=1, keepdims=True)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


def synthesise(generator: Generator, n: int, path: Path, seed: int, chunk: int = 20_000) -> np.ndarray:
    """A memory-mapped (n, dim) float32 .npy: the real vectors first, then synthetic rows."""
    rng = np.random.default_rng(seed)
    real = generator.real[:n]
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, real.shape[1]))
    vectors[: len(real)] = real
    for start in range(len(real), n, chunk):
        stop = min(n, start + chunk)
        vectors[start:stop] = generator.sample(stop - start, rng)
    vectors.flush()
    return vectors


def make_queries(
    generator: Generator, vectors: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(queries, source id per query): first half near-copies of indexed rows, second half fresh rows (source -1)."""
    rng = np.random.default_rng(seed + 1)
    copies = n // 2
    source = np.sort(rng.choice(len(vectors), size=copies, replace=False))
    base = np.asarray(vectors[source], dtype=np.float32)
    gauss = _normalise(rng.standard_normal(base.shape, dtype=np.float32))
    direction = gauss + generator.sample(copies, rng)
    direction -= direction.mean(axis=1, keepdims=True)
    direction -= np.sum(direction * base, axis=1, keepdims=True) * base  # orthogonal to the source
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    cosine = rng.uniform(*COPY_COSINE, size=(copies, 1)).astype(np.float32)
    near = _normalise(cosine * base + np.sqrt(1 - cosine**2) * direction)
    fresh = generator.sample(n - copies, rng)
    return (
        np.ascontiguousarray(np.concatenate([near, fresh]), dtype=np.float32),
        np.concatenate([source, np.full(n - copies, -1)]).astype(np.int64),
    )


def nearest_other(vectors: np.ndarray, sample: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Similarity of each sampled row to its nearest other row of `vectors` (exact, blockwise over a memmap)."""
    queries = np.asarray(vectors[sample], dtype=np.float32)
    best = np.full(len(sample), -np.inf, dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        sims = queries @ np.asarray(vectors[start : start + chunk]).T
        own = (sample >= start) & (sample < start + sims.shape[1])
        sims[np.where(own)[0], sample[own] - start] = -np.inf
        best = np.maximum(best, sims.max(axis=1))
    return best


def profile(similarities: np.ndarray) -> dict:
    """Percentiles of nearest-other similarity and the share at or above the pixel threshold."""
    return {
        **{f"p{q}": round(float(np.percentile(similarities, q)), 3) for q in PERCENTILES},
        "share_ge_0.97": round(float(np.mean(similarities >= 0.97)), 4),
        "sample": int(len(similarities)),
    }


# --- memory ---------------------------------------------------------------------------------------------


def _status() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in bytes (Linux); {} elsewhere."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {
        k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile") if k in fields
    }


class PeakRSS:
    """Peak resident-set growth over a block: resets the kernel's high-water mark (clear_refs 5) on entry."""

    def __enter__(self) -> PeakRSS:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = _status()
        return self

    def __exit__(self, *exc) -> None:
        after = _status()
        self.peak = after.get("VmHWM", 0) - self.before.get("VmRSS", 0) if self.reset else None
        self.anon = after.get("RssAnon", 0) - self.before.get("RssAnon", 0)


# --- one index type -------------------------------------------------------------------------------------


@dataclass
class Exact:
    """Exact top-k of the queries (from the flat baseline) and each near-copy's similarity to its source."""

    sims: np.ndarray
    ids: np.ndarray
    source_sims: np.ndarray


def timed_search(index, queries: np.ndarray, k: int, embedder, exact) -> tuple[np.ndarray, np.ndarray, float]:
    """search_index over all queries at once, after a warm-up on 200 of them; (sims, ids, queries per second)."""
    from medisyn_cli.screening.faiss_index import search_index

    search_index(index, queries[:200], k, embedder, exact)
    started = time.perf_counter()
    sims, ids = search_index(index, queries, k, embedder, exact)
    return sims, ids, len(queries) / (time.perf_counter() - started)


def quality(sims: np.ndarray, ids: np.ndarray, truth: Exact, source: np.ndarray, threshold: float) -> dict:
    """recall@1 vs exact (all, near-copies, fresh), copy detection at the threshold, source found."""
    hit = sims[:, 0] >= truth.sims[:, 0] - 1e-5
    copy = source >= 0
    found = (ids[copy, 0] == source[copy]) | (sims[copy, 0] >= truth.source_sims - 1e-5)
    return {
        "recall_at_1": float(np.mean(hit)),
        "recall_at_1_copies": float(np.mean(hit[copy])),
        "recall_at_1_fresh": float(np.mean(hit[~copy])),
        "copy_detection": float(np.mean(sims[copy, 0] >= threshold)),
        "source_found": float(np.mean(found)),
    }


def index_plan(index_type: str, count: int, embedder):
    """medisyn's plan for the type; hnsw-full: HNSW over the full vectors, as medisyn built it before issue #16."""
    from medisyn_cli.screening.faiss_index import HNSW_EF_SEARCH, IndexPlan, plan_index

    if index_type != "hnsw-full":
        return plan_index(index_type, count, embedder, None)
    params = {
        k: v
        for k, v in plan_index("hnsw", count, embedder, None).params.items()
        if k in ("M", "efConstruction")
    }
    return IndexPlan("hnsw", {**params, "efSearch": HNSW_EF_SEARCH})


def measure(
    index_type: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    source: np.ndarray,
    embedder,
    work: Path,
    truth: Exact | None,
) -> tuple[dict, object, np.ndarray | None, Exact]:
    """Build, size and search one index type; returns (results, faiss index, exact vectors or None, exact top-k)."""
    import faiss

    from medisyn_cli.screening.faiss_index import fill_index

    with PeakRSS() as build_memory:
        started, cpu = time.perf_counter(), time.process_time()
        plan = index_plan(index_type, len(vectors), embedder)
        index = fill_index(vectors, plan, embedder)
        build, build_cpu = time.perf_counter() - started, time.process_time() - cpu
    exact = vectors if plan.keeps_vectors else None  # vectors.npy, memory-mapped, as build_index keeps it
    with PeakRSS() as search_memory:
        sims1, ids1, qps1 = timed_search(index, queries, 1, embedder, exact)
        sims5, ids5, qps5 = timed_search(index, queries, 5, embedder, exact)
    path = work / f"{index_type}.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    if truth is None:  # the flat baseline is the exact answer
        copy = source >= 0
        truth = Exact(sims5, ids5, np.einsum("nd,nd->n", queries[copy], np.asarray(vectors[source[copy]])))
    result = {
        "type": plan.type,
        "params": plan.params,
        "build_s": build,
        "build_cpu_s": build_cpu,
        "index_bytes": size,
        "exact_vectors_bytes": int(vectors.nbytes) if exact is not None else 0,
        "build_peak_rss_delta_bytes": build_memory.peak,
        "build_anon_rss_delta_bytes": build_memory.anon,
        "search_peak_rss_delta_bytes": search_memory.peak,
        "qps_k1": qps1,
        "qps_k5": qps5,
        "k1": quality(sims1, ids1, truth, source, embedder.default_threshold),
        "k5": quality(sims5, ids5, truth, source, embedder.default_threshold),
    }
    return result, index, exact, truth


# --- screening end to end -------------------------------------------------------------------------------


def screening_images(images: list, count: int, seed: int) -> tuple[list, np.ndarray, list[str]]:
    """`count` real images, each altered by one of screen_quality's copy transforms; (images, source row, transform)."""
    from screen_quality import transforms

    rng = np.random.default_rng(seed + 2)
    makers = transforms()
    names = list(makers)
    rows = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))  # = their index rows
    chosen = [names[i] for i in rng.integers(0, len(names), len(rows))]
    return [makers[name](images[row], rng) for row, name in zip(rows, chosen)], rows, chosen


def screen(index, plan_type: str, exact, embedder, images: list, rows: np.ndarray) -> tuple[dict, np.ndarray]:
    """images/s of embedding (identity, all views), of the view search, and of Screener.check end to end,
    after a warm-up on 16 of the images; also each image's screened similarity."""
    from medisyn_cli.screening.index import FORMAT, TrainingIndex
    from medisyn_cli.screening.screener import Screener

    count = index.ntotal
    meta = {
        "format": FORMAT,
        "count": count,
        "threshold": embedder.default_threshold,
        "embedder": {
            "spec": embedder.name,
            "settings": embedder.settings(),
            "dim": embedder.dim,
            "binary": embedder.binary,
        },
        "index": {
            "type": "hnsw" if plan_type == "hnsw-full" else plan_type,
            "params": index_plan(plan_type, count, embedder).params,
        },
        "screening": {"views": "general"},
    }  # the default view set of indexes built since issue #16
    training = TrainingIndex(
        Path("<memory>"), meta, embedder, index, [str(i) for i in range(count)], [None] * count, exact
    )
    screener = Screener(training)
    n, views = len(images), screener.views
    screener.check(images[:16])  # warm-up: operators built, index and vector pages touched
    clock = time.perf_counter()
    embedder.embed(images)
    identity = time.perf_counter() - clock
    clock = time.perf_counter()
    vectors = embedder.embed_views(images, views)
    embed_views = time.perf_counter() - clock
    clock = time.perf_counter()
    training.search(vectors.reshape(n * len(views), -1), k=screener.candidates)
    search = time.perf_counter() - clock
    clock = time.perf_counter()
    results = screener.check(images)
    check = time.perf_counter() - clock
    return (
        {
            "images": n,
            "views": len(views),
            "embed_identity_ips": n / identity,
            "embed_views_ips": n / embed_views,
            "view_search_ips": n / search,
            "check_ips": n / check,
            "check_s": check,
            "near_copy": float(np.mean([r.near_copy for r in results])),
            "source_match": float(np.mean([r.nn_id == row for r, row in zip(results, rows)])),
        },
        np.array([r.nn_similarity for r in results], dtype=np.float32),
    )


# --- report ---------------------------------------------------------------------------------------------


class Report:
    """Lines printed as they come and kept for the results .txt."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.0f}"


def print_tables(say: Report, results: dict, n: int, queries: int) -> None:
    base = results["flat"]
    say(
        f"\n== indexes over {n:,} vectors, {queries:,} queries (half near-copies, half fresh); baseline: flat (exact)"
    )
    say(
        f"{'type':<9} {'build s':>8} {'(CPU s)':>8} {'index MB':>9} {'+vectors MB':>11} {'build RSS+ MB':>13} "
        f"{'search RSS+ MB':>14} {'q/s k=1':>9} {'q/s k=5':>9} {'q/s ratio k=1/k=5':>17} {'mem ratio':>9}  params"
    )
    for name, r in results.items():
        say(
            f"{name:<9} {r['build_s']:>8.1f} {r['build_cpu_s']:>8.1f} {mb(r['index_bytes']):>9} "
            f"{mb(r['exact_vectors_bytes'] or None):>11} {mb(r['build_peak_rss_delta_bytes']):>13} "
            f"{mb(r['search_peak_rss_delta_bytes']):>14} {r['qps_k1']:>9,.0f} {r['qps_k5']:>9,.0f} "
            f"{r['qps_k1'] / base['qps_k1']:>8.2f}/{r['qps_k5'] / base['qps_k5']:<8.2f} "
            f"{r['index_bytes'] / base['index_bytes']:>9.3f}  {r['params'] or ''}"
        )
    say(
        "  index MB: faiss.write_index size; +vectors: the exact vectors of IVF-PQ and of the projected HNSW "
        "(vectors.npy, memory-mapped) used to re-score their candidates; hnsw-full: HNSW over the full vectors; RSS+: peak resident growth of the process (the memory-mapped vectors are in the "
        "baseline); mem ratio: index MB / flat's"
    )
    say(
        f"\n{'type':<9} {'k':>2} {'recall@1':>9} {'copies':>8} {'fresh':>8} {'copy det @0.97':>15} {'source found':>13}"
    )
    for name, r in results.items():
        for k in ("k1", "k5"):
            q = r[k]
            say(
                f"{name:<9} {k[1:]:>2} {100 * q['recall_at_1']:>8.2f}% {100 * q['recall_at_1_copies']:>7.2f}% "
                f"{100 * q['recall_at_1_fresh']:>7.2f}% {100 * q['copy_detection']:>14.2f}% "
                f"{100 * q['source_found']:>12.2f}%"
            )


def print_screening(say: Report, screening: dict) -> None:
    say(
        "\n== screening end to end: Screener(index).check(images), views on, real 64x64 images altered by "
        "screen_quality's copy transforms (all are copies of indexed images)"
    )
    say(
        f"{'index':<9} {'images':>6} {'views':>5} {'embed img/s':>11} {'embed views img/s':>17} "
        f"{'view search img/s':>17} {'check img/s':>11} {'near-copy':>9} {'source':>7} {'= flat':>7}"
    )
    for name, s in screening.items():
        say(
            f"{name:<9} {s['images']:>6} {s['views']:>5} {s['embed_identity_ips']:>11,.0f} {s['embed_views_ips']:>17,.1f} "
            f"{s['view_search_ips']:>17,.1f} {s['check_ips']:>11,.1f} {100 * s['near_copy']:>8.1f}% "
            f"{100 * s['source_match']:>6.1f}% {100 * s['agrees_with_flat']:>6.1f}%"
        )
    if "flat" in screening and len(screening) > 1:
        say(
            "  source: the match is the image's own row (a synthetic near-duplicate of it may score higher); "
            "= flat: share of the images screened against flat too whose similarity equals flat's (within 1e-5)"
        )
        base = screening["flat"]["check_ips"]
        say(
            "  check img/s ratio vs flat: "
            + ", ".join(f"{k} {v['check_ips'] / base:.2f}" for k, v in screening.items() if k != "flat")
        )


# --- main -----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n", type=int, default=1_000_000, help="Indexed vectors (the first 6,754 are real)."
    )
    parser.add_argument("--queries", type=int, default=10_000, help="Queries: half near-copies, half fresh.")
    parser.add_argument(
        "--types", default=",".join(TYPES), help="Index types; flat (the baseline) always runs."
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "screen_scale.json")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--screen-images", type=int, default=512, help="Real images screened end to end.")
    parser.add_argument(
        "--screen-flat-images",
        type=int,
        default=128,
        help="Of those, how many against the flat index (exact search of 61 views each is slow).",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="Folder for the memory-mapped vectors (default: a temp dir)."
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in TYPES]
    if unknown or args.n < 2 or args.queries < 2:
        parser.error(
            f"--types from {', '.join(TYPES)} (got {', '.join(unknown)}); --n and --queries >= 2"
            if unknown
            else "--n and --queries must be >= 2"
        )
    args.types = ["flat"] + [t for t in types if t != "flat"]
    return args


def command(args: argparse.Namespace) -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    return (
        ("" if threads is None else f"OMP_NUM_THREADS={threads} ") + "python benchmarks/screen_scale.py"
        f" --n {args.n} --queries {args.queries} --types {','.join(args.types)} --seed {args.seed}"
        f" --screen-images {args.screen_images} --screen-flat-images {args.screen_flat_images}"
    )


def main() -> None:
    import faiss
    from screen_quality import embed_all, load

    from medisyn_cli.screening.embed import get_embedder

    args = parse_args()
    say, started = Report(), time.time()
    say(f"# {command(args)}")
    say(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__} "
        f"with {faiss.omp_get_max_threads()} threads, numpy {np.__version__}, nice {os.nice(0)}"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="screen_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # 1. the real vectors, the generator and its realism check
        embedder = get_embedder("pixel")
        images, sets, _, _ = load(args.data)
        real = embed_all(embedder, images)
        generator = Generator(real, sets)
        realism = {
            "real": profile(nearest_other(real, np.arange(len(real)))),
            "generator_sample": profile(
                nearest_other(generator.sample(len(real), np.random.default_rng(99)), np.arange(len(real)))
            ),
        }
        # 2. the indexed vectors (memory-mapped; its pages stay mapped, so they are in every RSS baseline) and queries
        clock = time.time()
        vectors = synthesise(generator, args.n, work / "vectors.npy", args.seed)
        synth_s = time.time() - clock
        queries, source = make_queries(generator, vectors, args.queries, args.seed)
        sample = np.sort(np.random.default_rng(3).choice(args.n, size=min(1000, args.n), replace=False))
        realism["indexed"] = profile(nearest_other(vectors, sample))
        say(
            f"{len(real):,} real images embedded ({embedder.name}, dim {embedder.dim}); {args.n:,} vectors "
            f"({min(args.n, len(real)):,} real + {max(0, args.n - len(real)):,} synthetic, {vectors.nbytes / 1e9:.2f} GB, "
            f"made in {synth_s:.0f} s); {args.queries:,} queries"
        )
        say("nearest-other-vector similarity " + "/".join(f"p{q}" for q in PERCENTILES) + ", share >= 0.97:")
        for name, p in realism.items():
            say(
                f"  {name:<17} "
                + "/".join(f"{p[f'p{q}']:.3f}" for q in PERCENTILES)
                + f"  {100 * p['share_ge_0.97']:.1f}%  (sample {p['sample']:,})"
            )
        # 3. each index type: build, size, search, then screen real images through it; one index alive at a time
        picked, rows, transforms_used = screening_images(images[: args.n], args.screen_images, args.seed)
        results, screening, truth, flat_screened = {}, {}, None, None
        for index_type in args.types:
            clock = time.time()
            results[index_type], index, exact, truth = measure(
                index_type, vectors, queries, source, embedder, work, truth
            )
            count = min(len(picked), args.screen_flat_images) if index_type == "flat" else len(picked)
            screening[index_type], screened = screen(
                index, index_type, exact, embedder, picked[:count], rows[:count]
            )
            flat_screened = screened if index_type == "flat" or flat_screened is None else flat_screened
            same = min(len(flat_screened), len(screened))  # the images also screened against flat
            screening[index_type]["agrees_with_flat"] = float(
                np.mean(screened[:same] >= flat_screened[:same] - 1e-5)
            )
            screening[index_type]["agreement_images"] = same
            del index, exact
            say(
                f"  {index_type}: built in {results[index_type]['build_s']:.0f} s, measured and screened in "
                f"{time.time() - clock:.0f} s"
            )
        print_tables(say, results, args.n, args.queries)
        print_screening(say, screening)
        say(f"\ntotal {time.time() - started:.0f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    # 4. results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": command(args),
                "n": args.n,
                "queries": args.queries,
                "seed": args.seed,
                "embedder": {
                    "spec": embedder.name,
                    "dim": embedder.dim,
                    "threshold": embedder.default_threshold,
                },
                "generator": {
                    "neighbours": NEIGHBOURS,
                    "beta_max": BETA_MAX,
                    "gamma_max": GAMMA_MAX,
                    "sigma": SIGMA,
                    "near_duplicates": NEAR_DUPLICATES,
                    "copy_cosine": COPY_COSINE,
                },
                "realism": realism,
                "indexes": results,
                "screening": screening,
                "screening_transforms": transforms_used,
                "cpus": os.cpu_count(),
                "faiss_threads": faiss.omp_get_max_threads(),
                "faiss": faiss.__version__,
                "total_s": time.time() - started,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    args.out.with_suffix(".txt").write_text("\n".join(say.lines) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}\nreproduce: {command(args)}")


if __name__ == "__main__":
    main()
