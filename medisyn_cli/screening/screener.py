"""Near-copy screening: the nearest training image of each generated image, and whether it is too close.

    index = load_index("train-index")
    screener = Screener(index)                      # the index's calibrated default threshold, with views
    for result in screener.check(images):
        if result.near_copy:
            print(f"near-copy of {result.nn_key} (similarity {result.nn_similarity:.3f})")

Each query is embedded under the embedder's views (identity, flips and, for `pixel`, a grid of shifts and
crops); the best match over the views is the query's nearest neighbour. Two stages keep this cheap: the views
are searched in the whole index (an exact float index: all of an image's views at once, through a PCA
projection whose best training images are scored exactly, `GroupedSearch`; HNSW and IVF-PQ indexes: view by
view), then the `candidates` best training images found are compared with the query under views half a grid
step around its best view (`Embedder.refine_views`), which recovers the exact
alignment of a shifted or cropped copy. Shift and crop views carry a small penalty subtracted from their
similarity (trying many alignments raises the chance similarity of distinct images too), so
`nn_similarity` is the view-adjusted similarity. A query's white noise is taken out of its similarities
(`Embedder.noise_factors`: the pixel embedder scales them by what its estimated noise took away, at most 1.054x),
so a noisy copy scores about as its clean version would. A result is a near-copy when it is at or above the
threshold.

Indexes built since issue #16 also hold 16 overlapping tiles of every training image (`regions.faiss`): the
query, under the region views (shifts, crops, 90% zooms and its own tiles), is matched with them too (a
GroupedSearch through the projection stored in regions_pca.npz), so a crop of a
training image or a copied region is caught; `region` names the training image's tile that matched. Their
threshold is calibrated at build time on the index's own images (`calibrate`); older indexes are screened
with the views they were calibrated for ("tuned") and without tiles.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import without_impulses
from medisyn_cli.screening.embed import TILES, blas_threads
from medisyn_cli.screening.faiss_index import (
    blas_distances,
    faiss_threads,
    stored_vectors,
    tile_projection,
)
from medisyn_cli.screening.grouped import GroupedSearch
from medisyn_cli.screening.index import TrainingIndex
from medisyn_cli.screening.verify import Verifier, colour_features, query_features

# threads a check screens its parts with (each embeds and searches its own images; one FAISS and BLAS thread each):
# generate's batch screened on both cores of a CPU the model has left, no OpenMP spin beside a busy core
SCREEN_WORKERS = 2

REGION_PENALTY = (
    0.0  # subtracted from a tile match (16 tiles x the region views: more chances than whole images)
)


@dataclass(frozen=True)
class ScreenResult:
    """The nearest training image of one query and the keep / reject decision."""

    nn_id: int  # vector id in the index (-1: empty index)
    nn_key: str  # the training image: file path, or parquet file:row id
    nn_similarity: float  # view-adjusted and noise-corrected, 1.0 = identical (cosine, or 1 - hamming/bits)
    near_copy: bool  # nn_similarity >= the screener's threshold
    nn_label: str | None = None  # the training image's label, where its source had one
    view: str = "identity"  # the query view that matched best (identity, hflip, vflip, box(...))
    region: str = ""  # the training image's tile that matched ("region(l,t,r,b)"), "" for the whole image
    # the query's best half against its closest candidate; None: not measured
    partial_similarity: float | None = None
    # inliers of the affine model between the query's keypoints and its best-verified candidate's; None: not measured
    inliers: int | None = None


# the ScreenResult fields other records carry (rejected.parquet: screening.checks.NearCopyCheck)
MATCH_FIELDS = (
    "nn_id",
    "nn_key",
    "nn_label",
    "nn_similarity",
    "view",
    "region",
    "partial_similarity",
    "inliers",
)


def require_embedder(index: TrainingIndex, spec: str) -> None:
    """MedisynError unless `index` was built with the embedder `spec` (e.g. 'pixel', 'clip:...')."""
    built = index.meta["embedder"]["spec"]
    if built != spec.strip():
        raise MedisynError(
            f"{index.path}: index was built with embedder '{built}', not '{spec}'; "
            f"use --embedder {built} or rebuild the index with {spec}"
        )


class Screener:
    """Screens images against a training index at a similarity threshold (default: the index's calibrated one)."""

    def __init__(
        self,
        index: TrainingIndex,
        threshold: float | None = None,
        views: bool = True,
        candidates: int = 5,
        view_set: str | None = None,
        partial_threshold: float | None = None,
        measure_partial: bool = False,
        verify_threshold: int | None = None,
        measure_verify: bool = False,
        workers: int | None = None,
    ):
        """`workers`: threads that screen parts of a check at once (default: SCREEN_WORKERS, at most the CPUs, for
        embedders that run in threads at once (`Embedder.concurrent`); 1 for the others, whose next part is embedded
        by a thread while this one is searched)."""
        self.index, self.embedder = index, index.embedder
        default = min(SCREEN_WORKERS, _usable_cpus()) if self.embedder.concurrent else 1
        self.workers = max(1, workers or default)
        self.threshold = self.embedder.valid_threshold(index.threshold if threshold is None else threshold)
        partial = index.partial_threshold if partial_threshold is None else partial_threshold
        self.partial_threshold = None if partial is None else self.embedder.valid_threshold(partial)
        self.partial = (
            (measure_partial or self.partial_threshold is not None)
            and views
            and index.can_reconstruct
            and self.embedder.has_parts
        )
        self.view_set = view_set or index.view_set
        all_views = self.embedder.default_views(self.view_set)
        self.views = all_views if views else all_views[:1]
        self.refine = views and index.can_reconstruct
        self.candidates = max(1, int(candidates))
        regional = views and self.view_set == "general" and index.regions is not None
        self.region_views = self.embedder.region_views() if regional else ()
        self._union = tuple(dict.fromkeys(self.views + self.region_views))
        self.region_search = None  # built on first use: the tiles' grouped search
        # built on first use for a flat float index: the whole images' grouped search
        self.whole_search = None
        # measure_verify: inliers measured, not decided on (calibration)
        verify = index.verify_threshold if verify_threshold is None else verify_threshold
        verify = None if measure_verify else verify
        self.verify_threshold = None if verify is None else int(verify)
        verifying = measure_verify or self.verify_threshold is not None
        verifying = verifying and views and self.view_set == "general" and index.local is not None
        self.verifier = Verifier(index.local) if verifying else None  # "tuned": screens as before #16 and #29

    def check(self, images: list, chunk: int = 32, exclude: list | None = None) -> list[ScreenResult]:
        """One ScreenResult per image, in order: screened `chunk` images at a time (fewer where that gives each of
        the screener's `workers` threads a part), each part embedded and searched by one thread; `exclude`: per
        image, the training ids it may not match (e.g. itself, when an index screens its own images to calibrate)."""
        exclude = exclude or [()] * len(images)
        size = max(1, min(chunk, -(-len(images) // self.workers)))
        parts = [(images[s : s + size], exclude[s : s + size]) for s in range(0, len(images), size)]
        with blas_threads():  # one BLAS thread for every small product, set once for every thread
            self._prepare()
            if len(parts) <= 1:
                return [r for part in parts for r in self._screen(part)]
            if self.workers == 1:
                return self._pipelined(parts)
            with ThreadPoolExecutor(
                min(self.workers, len(parts)), thread_name_prefix="medisyn-screen"
            ) as pool:
                return [r for found in pool.map(self._screen_alone, parts) for r in found]

    def warm_up(self) -> None:
        """Screen one image and forget the result: the first check's one-time costs (OpenCV's and BLAS's set-up, the
        tiles' search, resampling operators, the blend scan's thumbnails) paid beforehand; `generate` runs it in a
        thread while the model loads. The image is a training thumbnail (a copy: every stage of the screen runs),
        else grey noise."""
        from PIL import Image

        thumbs = getattr(self.index.local, "thumbs", None)
        pixels = (
            thumbs[0]
            if thumbs is not None and len(thumbs)
            else np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
        )
        try:
            self.check([Image.fromarray(pixels).convert("RGB")])
            if self.verifier is not None:
                self.verifier.prepare()
        except Exception:  # noqa: BLE001 -- a screen that fails fails again in the run's first check, with its context
            pass

    def _pipelined(self, parts: list[tuple[list, list]]) -> list[ScreenResult]:
        """One worker: a thread embeds the next part while this one is searched."""
        results = []
        with ThreadPoolExecutor(1, thread_name_prefix="medisyn-embed") as pool:
            embedded = pool.submit(self._embed, parts[0][0])
            for j, (part, banned) in enumerate(parts):
                vectors = embedded.result()
                if j + 1 < len(parts):
                    embedded = pool.submit(self._embed, parts[j + 1][0])
                results += self._check(part, banned, vectors)
        return results

    def _screen(self, part: tuple[list, list]) -> list[ScreenResult]:
        images, exclude = part
        return self._check(images, exclude, self._embed(images))

    def _screen_alone(self, part: tuple[list, list]) -> list[ScreenResult]:
        """One part in a worker thread: the threads are the parallelism, so FAISS starts no OpenMP team in them."""
        with faiss_threads(1):
            return self._screen(part)

    def _prepare(self) -> None:
        """What the worker threads share, built before they start: the grouped searches, the descriptor search."""
        if self.region_views and self.region_search is None:
            self.region_search = grouped_search(self.index.regions, self.index.region_projection)
        if self.whole_search is None and self._groupable():
            self.whole_search = grouped_search(self.index.faiss_index)
        if self.verifier is not None:
            self.verifier.local.descriptor_search()

    def _embed(self, images: list) -> tuple:
        """The images under the union of the whole-image and region views (views both use embedded once), their
        keypoints where candidates are verified, their noise factors (`Embedder.noise_factors`), and the forms they
        were embedded in: median-filtered where salt-and-pepper noise marks them (`without_impulses`; the keypoints
        are the image's own)."""
        queries = [without_impulses(image) for image in images]
        vectors, factors = self.embedder.embed_queries(queries, self._union)
        vectors = vectors * factors[:, None, None]
        if self.verifier is None:
            return vectors, None, factors, queries
        keypoints = [(*query_features(image), colour_features(image)) for image in images]
        return vectors, keypoints, factors, queries

    def _groupable(self) -> bool:
        """Whether the whole images' views are searched together (GroupedSearch): an exact float index (flat) screened
        under several views; HNSW and IVF-PQ indexes, made for many images, search view by view."""
        return (
            len(self.views) > 1
            and self.index.meta["index"]["type"] == "flat"
            and not self.embedder.binary
            and len(self.index) > 0
        )

    def _query(self, images: list, views: tuple, factors: np.ndarray) -> np.ndarray:
        """(n, views, dim) query vectors, each image's scaled by its noise factor: their products with training
        vectors are the similarities of the noise-free images (at most 1 once clipped)."""
        return self.embedder.embed_views(images, views) * np.asarray(factors, np.float32)[:, None, None]

    def _check(self, images: list, exclude: list, embedded: tuple) -> list[ScreenResult]:
        if not images:
            return []
        vectors, keypoints, factors, queries = embedded  # queries: the forms embedded
        index, refine = self.index, self.refine
        column = {view: i for i, view in enumerate(self._union)}
        pick = lambda views: vectors[:, [column[v] for v in views]]  # noqa: E731
        with blas_distances():  # the whole-image views of a check: hundreds of queries, one matrix product
            matches = self._best(
                queries,
                exclude,
                self.views,
                pick(self.views),
                index.search if self.whole_search is None else self.whole_search,
                index.reconstruct if refine else None,
                factors,
            )
        whole, regions = list(matches), [None] * len(images)
        candidates = [[m[1]] + ([] if m[3] is None else list(m[3])) for m in matches]
        if self.region_views:
            tiles = len(TILES)
            banned = [{t * tiles + r for t in b for r in range(tiles)} for b in exclude]
            found = self._best(
                queries,
                banned,
                self.region_views,
                pick(self.region_views),
                self.region_search,
                self._reconstruct_regions if refine else None,
                factors,
            )
            for j, (sim, tile, view, near) in enumerate(found):
                if near is not None:
                    candidates[j] += [int(t) // tiles for t in near]
                if tile >= 0 and sim - REGION_PENALTY > matches[j][0]:
                    matches[j] = (sim - REGION_PENALTY, tile // tiles, view, None)
                    regions[j] = TILES[tile % tiles].box
        partial = [
            self._partial(image, match, factor) if self.partial else None
            for image, match, factor in zip(queries, whole, factors)
        ]
        partly = [found is not None and self._partly(found[0]) for found in partial]
        for j, found in enumerate(partial):
            if partly[j] and not matches[j][0] >= self.threshold:  # the partial match is the one reported
                matches[j], regions[j] = (found[2], found[1], whole[j][2], None), None
        verified = (
            self._verify(keypoints, candidates, exclude) if keypoints is not None else [None] * len(images)
        )
        for j, found in enumerate(verified):
            if self._verified(found) and not (matches[j][0] >= self.threshold or partly[j]):
                matches[j], regions[j] = (
                    (self._similarity(vectors[j, 0], found[1]), found[1], whole[j][2], None),
                    None,
                )
                partly[j] = True
        ids = np.array([m[1] for m in matches], dtype=np.int64)
        keys, labels = self.index.key(ids), self.index.label(ids)
        return [
            ScreenResult(
                int(i),
                key,
                float(sim),
                bool(sim >= self.threshold or flagged),
                label,
                view.name,
                "" if region is None else "region(" + ",".join(f"{v:.2f}" for v in region) + ")",
                None if found is None else found[0],
                None if checked is None else checked[0],
            )
            for (sim, i, view, _), key, label, region, found, flagged, checked in zip(
                matches, keys, labels, regions, partial, partly, verified
            )
        ]

    def _verified(self, found: tuple | None) -> bool:
        return found is not None and self.verify_threshold is not None and found[0] >= self.verify_threshold

    def _verify(self, keypoints: list, candidates: list, exclude: list) -> list[tuple[int, int]]:
        """Per image: (inliers, id) of its best-verified candidate (search candidates and descriptor votes); the
        descriptor search on one FAISS thread (a few hundred descriptors: OpenMP's start-up costs more), its coarse
        quantizer scored by BLAS (2.5x faster; the same nearest descriptors on 142,064 queries)."""
        with faiss_threads(1), blas_distances():
            return self.verifier.score(keypoints, candidates, exclude)

    def _similarity(self, vector: np.ndarray, i: int) -> float:
        """The query's (identity view) similarity with training image i, where the index keeps exact vectors."""
        if not self.index.can_reconstruct:
            return float("nan")
        return float(min(float(vector @ self.index.reconstruct([i])[0]), 1.0))

    def _partly(self, similarity: float) -> bool:
        return self.partial_threshold is not None and similarity >= self.partial_threshold

    def _partial(self, image, match: tuple, factor: float) -> tuple[float, int, float] | None:
        """(partial similarity, id, whole similarity) of the whole-image match's candidate (nn among them) whose
        best half agrees best with the query's, under the matched view (Embedder.partial_similarity)."""
        _, nn, view, candidates = match
        ids = np.unique(np.append(np.asarray(candidates if candidates is not None else [], np.int64), nn))
        ids = ids[ids >= 0]
        if not len(ids):
            return None
        query = self._query([image], (view,), np.array([factor]))[0, 0]
        vectors = self.index.reconstruct(ids)
        with blas_threads():
            scores = self.embedder.partial_similarity(query, vectors)
            best = int(np.argmax(scores))
            whole = float(min(query @ vectors[best], 1.0))
        return float(scores[best]) - view.penalty, int(ids[best]), whole - view.penalty

    def _reconstruct_regions(self, ids) -> np.ndarray:
        return self.region_search.vectors[np.asarray(ids, np.int64)]

    def _best(
        self,
        images: list,
        exclude: list,
        views: tuple,
        vectors: np.ndarray,
        search,
        reconstruct,
        factors: np.ndarray,
    ) -> list[tuple]:
        """Per image: (similarity, id, view, candidates) of its best match in one store (whole images or tiles):
        every view (`vectors`: the images under them) searched in the whole store (`search`: a GroupedSearch, or a
        top-k search of view vectors), then views around the best one against its candidates (`factors`: the
        images' noise factors)."""
        if isinstance(search, GroupedSearch):
            matches = self._grouped(exclude, views, vectors, search)
        else:
            matches = self._coarse(exclude, views, vectors, search)
        if reconstruct is None:
            return matches
        return [
            self._refine(image, factor, *match, reconstruct)
            for image, factor, match in zip(images, factors, matches)
        ]

    def _grouped(
        self, exclude: list, views: tuple, vectors: np.ndarray, search: GroupedSearch
    ) -> list[tuple]:
        """`_coarse` through a GroupedSearch: each image's views scored together, its pool best first."""
        sims, ids = search.search(vectors, [view.penalty for view in views], exclude)
        found = []
        for sim, pool in zip(sims, ids):
            if not len(pool):
                found.append((-np.inf, -1, views[0], pool))
                continue
            row = int(np.argmax(sim[:, 0]))
            found.append((float(sim[row, 0]), int(pool[0]), views[row], pool[: self.candidates]))
        return found

    def _coarse(self, exclude: list, views: tuple, vectors: np.ndarray, search) -> list[tuple]:
        """Per image: (similarity, id, view, candidate ids) of the best match over the views in the whole store."""
        n, v = len(vectors), len(views)
        k = self.candidates + max(map(len, exclude), default=0)
        sims, ids = search(vectors.reshape(n * v, -1), min(k, max(1, len(self.index))))
        k = sims.shape[1]
        sims = np.minimum(sims, 1.0)
        penalty = np.repeat([view.penalty for view in views], k).astype(np.float32)
        sims, ids = sims.reshape(n, v * k) - penalty, ids.reshape(n, v * k)
        for j, banned in enumerate(exclude):
            if len(banned):
                gone = np.isin(ids[j], list(banned))
                sims[j, gone], ids[j, gone] = -np.inf, -1
        top = np.argmax(sims, axis=1)
        return [
            (float(sims[j, t]), int(ids[j, t]), views[t // k], _unique_top(sims[j], ids[j], self.candidates))
            for j, t in enumerate(top)
        ]

    def _refine(
        self, image, factor: float, sim: float, nn: int, view, candidates: np.ndarray, reconstruct
    ) -> tuple:
        """Compare the image under views around its best one with its candidates; keep any better."""
        fine = self.embedder.refine_views(view)
        if not fine or len(candidates) == 0:
            return sim, nn, view, candidates
        vectors = self._query([image], fine, np.array([factor]))[0]
        penalties = np.array([f.penalty for f in fine], dtype=np.float32)[:, None]
        with blas_threads():
            sims = np.minimum(vectors @ reconstruct(candidates).T, 1.0) - penalties
        row, col = np.unravel_index(np.argmax(sims), sims.shape)
        if sims[row, col] > sim:
            return float(sims[row, col]), int(candidates[col]), fine[row], candidates
        return sim, nn, view, candidates


def grouped_search(index, stored: tuple[np.ndarray, np.ndarray] | None = None) -> GroupedSearch:
    """The GroupedSearch of a flat or HNSW-flat float FAISS index, through `stored` (basis, projected vectors: the tiles'
    regions_pca.npz) or a projection computed here (faiss_index.tile_projection)."""
    vectors = stored_vectors(index)
    return GroupedSearch(vectors, *(stored or tile_projection(vectors)))


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a job given 1 of 64 cores screens on one thread)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _unique_top(sims: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The k distinct ids with the highest similarity (missing hits, id -1, dropped)."""
    order = np.argsort(-sims, kind="stable")
    seen: list[int] = []
    for i in ids[order]:
        if i >= 0 and i not in seen:
            seen.append(int(i))
            if len(seen) == k:
                break
    return np.array(seen, dtype=np.int64)


# --- self-calibrated threshold ---------------------------------------------------------------------------
