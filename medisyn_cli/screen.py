"""Near-copy screening: the nearest training image of each generated image, and whether it is too close.

    index = load_index("train-index")
    screener = Screener(index)                      # the index's calibrated default threshold, with views
    for result in screener.check(images):
        if result.near_copy:
            print(f"near-copy of {result.nn_key} (similarity {result.nn_similarity:.3f})")

Each query is embedded under the embedder's views (identity, flips and, for `pixel`, a grid of shifts and
crops); the best match over the views is the query's nearest neighbour. Two stages keep this cheap: the views
are searched in the whole index, then the `candidates` best training images found are compared with the
query under views half a grid step around its best view (`Embedder.refine_views`), which recovers the exact
alignment of a shifted or cropped copy. Shift and crop views carry a small penalty subtracted from their
similarity (trying many alignments raises the chance similarity of distinct images too), so
`nn_similarity` is the view-adjusted similarity. A result is a near-copy when it is at or above the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embed import blas_threads
from .errors import MedisynError
from .index import TrainingIndex


@dataclass(frozen=True)
class ScreenResult:
    """The nearest training image of one query and the keep / reject decision."""

    nn_id: int                  # vector id in the index (-1: empty index)
    nn_key: str                 # the training image: file path, or parquet file:row id
    nn_similarity: float        # view-adjusted similarity, 1.0 = identical (cosine, or 1 - hamming/bits)
    near_copy: bool             # nn_similarity >= the screener's threshold
    nn_label: str | None = None  # the training image's label, where its source had one
    view: str = "identity"      # the query view that matched best (identity, hflip, vflip, box(...))


def require_embedder(index: TrainingIndex, spec: str) -> None:
    """MedisynError unless `index` was built with the embedder `spec` (e.g. 'pixel', 'clip:...')."""
    built = index.meta["embedder"]["spec"]
    if built != spec.strip():
        raise MedisynError(f"{index.path}: index was built with embedder '{built}', not '{spec}'; "
                           f"use --embedder {built} or rebuild the index with {spec}")


class Screener:
    """Screens images against a training index at a similarity threshold (default: the index's calibrated one)."""

    def __init__(self, index: TrainingIndex, threshold: float | None = None, views: bool = True,
                 candidates: int = 5):
        self.index, self.embedder = index, index.embedder
        self.threshold = self.embedder.valid_threshold(index.threshold if threshold is None else threshold)
        self.views = self.embedder.default_views() if views else self.embedder.default_views()[:1]
        self.refine = views and index.can_reconstruct
        self.candidates = max(1, int(candidates))

    def check(self, images: list, chunk: int = 64) -> list[ScreenResult]:
        """One ScreenResult per image, in order (screened `chunk` images at a time)."""
        return [result for start in range(0, len(images), chunk) for result in self._check(images[start:start + chunk])]

    def _check(self, images: list) -> list[ScreenResult]:
        if not images:
            return []
        matches = self._coarse(images)
        if self.refine:
            matches = [self._refine(image, *match) for image, match in zip(images, matches)]
        ids = np.array([m[1] for m in matches], dtype=np.int64)
        keys, labels = self.index.key(ids), self.index.label(ids)
        return [ScreenResult(int(i), key, float(sim), bool(sim >= self.threshold), label, view.name)
                for (sim, i, view, _), key, label in zip(matches, keys, labels)]

    def _coarse(self, images: list) -> list[tuple]:
        """Per image: (similarity, id, view, candidate ids) of the best match over the views in the whole index."""
        n, v, k = len(images), len(self.views), self.candidates
        vectors = self.embedder.embed_views(images, self.views)
        sims, ids = self.index.search(vectors.reshape(n * v, -1), k=k)
        penalty = np.repeat([view.penalty for view in self.views], k).astype(np.float32)
        sims, ids = sims.reshape(n, v * k) - penalty, ids.reshape(n, v * k)
        top = np.argmax(sims, axis=1)
        return [(float(sims[j, t]), int(ids[j, t]), self.views[t // k], _unique_top(sims[j], ids[j], k))
                for j, t in enumerate(top)]

    def _refine(self, image, sim: float, nn: int, view, candidates: np.ndarray) -> tuple:
        """Compare the image under views around its best one with its candidate training images; keep any better."""
        fine = self.embedder.refine_views(view)
        if not fine or len(candidates) == 0:
            return sim, nn, view, candidates
        vectors = self.embedder.embed_views([image], fine)[0]
        penalties = np.array([f.penalty for f in fine], dtype=np.float32)[:, None]
        with blas_threads():
            sims = np.minimum(vectors @ self.index.reconstruct(candidates).T, 1.0) - penalties
        row, col = np.unravel_index(np.argmax(sims), sims.shape)
        if sims[row, col] > sim:
            return float(sims[row, col]), int(candidates[col]), fine[row], candidates
        return sim, nn, view, candidates


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


class RejectedLog:
    """rejected.parquet: one row per near-copy kept out of a dataset (no image: it resembles a patient's)."""

    SCHEMA = {"id": "string", "label": "string", "prompt": "string", "seed": "int64", "attempt": "int32",
              "nn_id": "int64", "nn_key": "string", "nn_label": "string", "nn_similarity": "float32",
              "view": "string"}

    def __init__(self, path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.schema = pa.schema([pa.field(k, getattr(pa, v)()) for k, v in self.SCHEMA.items()])
        self.handle = pq.ParquetWriter(self.tmp, self.schema)
        self.rows = 0

    def write(self, items: list) -> None:
        """Log rejected `Generated` items (each with its ScreenResult in `.screen`)."""
        import pyarrow as pa

        if not items:
            return
        rows = [{"id": i.job.id, "label": i.job.label, "prompt": i.job.prompt, "seed": i.seed, "attempt": i.attempt,
                 "nn_id": i.screen.nn_id, "nn_key": i.screen.nn_key, "nn_label": i.screen.nn_label,
                 "nn_similarity": i.screen.nn_similarity, "view": i.screen.view} for i in items]
        self.handle.write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self.rows += len(rows)

    def close(self) -> dict:
        self.handle.close()
        self.tmp.replace(self.path)
        return {"file": self.path.name, "rows": self.rows}

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)
