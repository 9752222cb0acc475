"""The best stored vectors of each query image over all its views, in one pass over a store held in memory.

A query image is screened under many views (shifts, crops, flips...). Searching every view on its own makes the
store's top-k selection run once per view (162 whole-image views x 962 images, 102 region views x 15,392 tiles
for each image), which cost more than the products themselves. Here each image's views are scored together
through a PCA projection of the store, the best projected score over the views is kept per stored vector, and
the `pool` best stored vectors of the image are scored exactly under every view: one selection per image, and the
exact best (view, vector) pair whenever it is among the pool (for a copy of a stored image it is the first).

    search = GroupedSearch(vectors, *tile_projection(vectors))   # faiss_index: a PCA basis, the projected vectors
    sims, ids = search.search(queries, penalties)   # queries (images, views, dim) -> per image (views, pool), (pool,)
"""

from __future__ import annotations

import numpy as np

from medisyn_cli.screening.embed import blas_threads

GROUPED_POOL = 64  # stored vectors per query image scored exactly under every view
STORE_BLOCK = 16_384  # stored vectors scored at once (views x block floats: 10 MB for 162 views)


class GroupedSearch:
    """Per query image, the GROUPED_POOL stored vectors its views score best in the projection, scored exactly."""

    def __init__(
        self,
        vectors: np.ndarray,
        basis: np.ndarray,
        projected: np.ndarray,
        pool: int = GROUPED_POOL,
    ):
        """`vectors` (N, dim) the exact stored vectors (a view of the FAISS storage: no copy); `basis` (dim, dims) and
        `projected` (N, dims) their projection (faiss_index.tile_projection, or the one stored with the index)."""
        if len(projected) != len(vectors) or basis.shape != (vectors.shape[1], projected.shape[1]):
            raise ValueError(
                f"projection {basis.shape} / {projected.shape} does not fit {len(vectors)} vectors of "
                f"{vectors.shape[1]} dims"
            )
        self.vectors, self.basis, self.projected = vectors, basis, projected
        self.pool = int(pool)

    def search(
        self, queries: np.ndarray, penalties: np.ndarray, banned: list | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query image: exact similarities (views, pool) of its views with its pool's vectors, clipped at 1 and
        less each view's penalty, and the pool's ids (pool,), best first by their best view; `banned`: per image,
        ids it may not match."""
        banned = banned or [()] * len(queries)
        penalties = np.asarray(penalties, np.float32)[:, None]
        sims, ids = [], []
        with blas_threads():
            for views, excluded in zip(np.asarray(queries, np.float32), banned):
                pool = self._pool(views @ self.basis, penalties, excluded)
                exact = np.minimum(views @ self.vectors[pool].T, 1.0) - penalties
                order = np.argsort(-exact.max(axis=0), kind="stable")
                sims.append(exact[:, order])
                ids.append(pool[order])
        return sims, ids

    def _pool(self, projected: np.ndarray, penalties: np.ndarray, excluded) -> np.ndarray:
        """The ids of the pool: the stored vectors with the highest projected score over the views."""
        best = np.empty(len(self.projected), np.float32)
        for start in range(0, len(best), STORE_BLOCK):
            block = projected @ self.projected[start : start + STORE_BLOCK].T
            np.max(block - penalties, axis=0, out=best[start : start + len(block[0])])
        if len(excluded):
            best[np.asarray(list(excluded), np.int64)] = -np.inf
        size = min(self.pool, len(best))
        pool = np.argpartition(-best, size - 1)[:size] if size < len(best) else np.arange(len(best))
        return pool[np.isfinite(best[pool])].astype(np.int64)
