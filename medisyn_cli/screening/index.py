"""Build and load a FAISS index of training-image embeddings, with the metadata that makes it checkable.

An index folder holds:

    index.faiss     the FAISS index (float: inner product = cosine; binary: Hamming)
    keys.parquet    vector id -> key (file path, or parquet file:row id), label where known, source
    vectors.npy     IVF-PQ and HNSW over a PCA projection: the exact vectors, memory-mapped, to re-score the
                    candidates of the compressed or projected index
    local.npz       SIFT keypoints of every training image (screening.verify): candidates are verified by an affine
                    model between their keypoints and the query's (default up to REGIONS_MAX images)
    regions.faiss   16 overlapping tiles of every training image (embed.TILES), so crops and partial copies
                    match the region they copy (default up to REGIONS_MAX images; float embedders)
    regions_pca.npz the tiles' PCA basis and projected tiles, which the tile search proposes candidates with
                    (indexes built before it compute them when a screener first searches the tiles)
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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.screening.embed import TILES, VIEW_SETS, Embedder, get_embedder
from medisyn_cli.screening.faiss_index import (
    _read_faiss,
    _read_vectors,
    fill_index,
    plan_index,
    region_index,
    search_index,
    set_search_params,
)
from medisyn_cli.screening.learned import load_embedder
from medisyn_cli.screening.verify import VERIFY_DEFAULT, LocalFeatures

TARGET_FPR = 0.005  # the default false-positive rate an index calibrates its threshold for (screen.calibrate)

INDEX_FILE, KEYS_FILE, META_FILE, VECTORS_FILE = "index.faiss", "keys.parquet", "index.json", "vectors.npy"
REGIONS_FILE = "regions.faiss"  # vectors of each training image's overlapping tiles (partial copies, crops)
REGIONS_PCA_FILE = "regions_pca.npz"  # the tiles' PCA basis and projected tiles (grouped.GroupedSearch)
REGIONS_MAX = 20_000  # images up to which `index build` adds the tiles by default (16 vectors each)
FORMAT = 1


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
    exact: np.ndarray | None = None  # IVF-PQ, projected HNSW: the exact vectors (memory-mapped vectors.npy)
    regions: object | None = None  # FAISS index of the training images' tiles (embed.TILES), or None
    local: LocalFeatures | None = None  # the training images' keypoints (verify.py), or None
    # the tiles' (PCA basis, projected tiles) from regions_pca.npz; None: computed when first searched
    region_projection: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.meta["count"])

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray,
        keys: list[str],
        embedder: Embedder,
        index_type: str = "flat",
        labels: list[str | None] | None = None,
        regions: np.ndarray | None = None,
        local: LocalFeatures | None = None,
    ) -> TrainingIndex:
        """An in-memory index over given vectors (no files): for tests, benchmarks and small ad-hoc checks;
        `regions`: (len(vectors) * len(TILES), dim) tile vectors, for region matching; `local`: the images'
        keypoints, for verification."""
        if len(vectors) != len(keys):
            raise MedisynError(f"{len(vectors)} vectors but {len(keys)} keys")
        plan = plan_index(index_type, len(vectors), embedder, None)
        meta = {
            "format": FORMAT,
            "count": len(vectors),
            "threshold": embedder.default_threshold,
            "embedder": {
                "spec": embedder.name,
                "settings": _jsonable(embedder.settings()),
                "dim": embedder.dim,
                "binary": embedder.binary,
            },
            "index": {"type": plan.type, "params": plan.params},
            "screening": {"views": "general"},
        }
        vectors = np.ascontiguousarray(vectors)
        index = fill_index(vectors, plan, embedder)
        tiles = None
        if regions is not None:
            tiles = region_index(np.ascontiguousarray(regions), len(vectors), embedder)
        return cls(
            Path("<memory>"),
            meta,
            embedder,
            index,
            list(keys),
            list(labels or [None] * len(keys)),
            vectors if plan.keeps_vectors else None,
            tiles,
            local,
        )

    @property
    def threshold(self) -> float:
        """The default near-copy threshold stored at build time."""
        return float(self.meta["threshold"])

    @property
    def partial_threshold(self) -> float | None:
        """The partial-similarity threshold calibrated at build time; None for indexes built without one."""
        value = self.meta.get("screening", {}).get("calibration", {}).get("partial_threshold")
        return None if value is None else float(value)

    @property
    def verify_threshold(self) -> int | None:
        """The inliers that make a verified candidate a near-copy, calibrated at build time (VERIFY_DEFAULT for an
        index too small to calibrate); None: no keypoints, no verification."""
        value = self.meta.get("screening", {}).get("calibration", {}).get("verify_threshold")
        if value is None:
            return None if self.local is None else VERIFY_DEFAULT
        return int(value)

    @property
    def view_set(self) -> str:
        """The query views its threshold was set for: 'general', or 'tuned' for indexes built before issue #16."""
        return self.meta.get("screening", {}).get("views", "tuned")

    def search(self, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 (N, k), ids int64 (N, k)); higher is more similar; missing hits: -inf, -1."""
        dtype = np.uint8 if self.embedder.binary else np.float32
        vectors = np.ascontiguousarray(vectors, dtype=dtype)
        if vectors.ndim != 2 or vectors.shape[1] != self.embedder.code_size:
            raise MedisynError(
                f"{self.path}: queries must be (N, {self.embedder.code_size}) vectors from "
                f"{self.embedder.name}, got shape {vectors.shape}"
            )
        if len(vectors) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return search_index(self.faiss_index, vectors, k, self.embedder, self.exact)

    @property
    def can_reconstruct(self) -> bool:
        """Whether exact vectors are kept (flat, hnsw, and IVF-PQ's vectors.npy) for `reconstruct`."""
        return not self.embedder.binary and (
            self.meta["index"]["type"] in ("flat", "hnsw") or self.exact is not None
        )

    def reconstruct(self, ids) -> np.ndarray:
        """The exact stored vectors of `ids` (float indexes)."""
        if not self.can_reconstruct:
            raise MedisynError(
                f"{self.path}: a {self.meta['index']['type']} index does not keep exact vectors"
            )
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self.exact is not None:
            return np.asarray(self.exact[ids], dtype=np.float32)
        return (
            np.stack([self.faiss_index.reconstruct(int(i)) for i in ids])
            if len(ids)
            else np.zeros((0, self.embedder.dim), np.float32)
        )

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
    spec = meta["embedder"]["spec"]
    embedder = (
        load_embedder(path) if spec == "learned" else get_embedder(spec)
    )  # learned: weights in the folder
    if _jsonable(embedder.settings()) != meta["embedder"].get("settings"):
        raise MedisynError(
            f"{path}: built with {embedder.name} settings {meta['embedder'].get('settings')}, but "
            f"this medisyn computes {_jsonable(embedder.settings())}; rebuild the index"
        )
    faiss_index = _read_faiss(path / INDEX_FILE, embedder)
    keys, labels = _read_keys(path / KEYS_FILE)
    if faiss_index.ntotal != meta["count"] or len(keys) != meta["count"]:
        raise MedisynError(
            f"{path}: index.json says {meta['count']} vectors, index.faiss has {faiss_index.ntotal} "
            f"and keys.parquet {len(keys)}; rebuild the index"
        )
    set_search_params(faiss_index, meta["index"]["type"], meta["index"].get("params", {}))
    exact = (
        _read_vectors(path / meta["index"]["vectors"], meta, embedder)
        if meta["index"].get("vectors")
        else None
    )
    regions = _read_faiss(path / meta["regions"]["file"], embedder) if meta.get("regions") else None
    if regions is not None and regions.ntotal != meta["count"] * len(TILES):
        raise MedisynError(
            f"{path}: {REGIONS_FILE} holds {regions.ntotal} tiles, expected {meta['count']} x "
            f"{len(TILES)}; rebuild the index"
        )
    local = LocalFeatures.load(path / meta["local"]["file"], meta["count"]) if meta.get("local") else None
    projection = (
        read_tile_projection(path / meta["regions"]["projection"]["file"], regions.ntotal, embedder.dim)
        if regions is not None and meta["regions"].get("projection")
        else None
    )
    return TrainingIndex(path, meta, embedder, faiss_index, keys, labels, exact, regions, local, projection)


def read_tile_projection(path: Path, tiles: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(basis, projected tiles) of regions_pca.npz; MedisynError when it is missing or does not fit the tiles."""
    try:
        with np.load(path) as data:
            basis, projected = data["basis"], data["projected"]
    except (OSError, KeyError, ValueError) as exc:
        raise MedisynError(f"{path}: cannot read the tiles' projection ({exc}); rebuild the index") from exc
    if basis.ndim != 2 or basis.shape[0] != dim or projected.shape != (tiles, basis.shape[1]):
        raise MedisynError(
            f"{path}: a projection of shape {projected.shape} onto {basis.shape}, expected {tiles} tiles of "
            f"{dim} dimensions; rebuild the index"
        )
    return np.ascontiguousarray(basis, np.float32), np.ascontiguousarray(projected, np.float32)


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
        raise MedisynError(
            f"{meta_path}: index format {meta.get('format')} is not {FORMAT}; rebuild the index"
        )
    threshold = meta["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise MedisynError(
            f"{meta_path}: threshold {threshold!r} is not a similarity in (0, 1]; fix index.json or "
            f"rebuild the index (medisyn index build ... --overwrite)"
        )
    views = meta.get("screening", {}).get("views", "tuned")
    if views not in VIEW_SETS:
        raise MedisynError(
            f"{meta_path}: unknown view set {views!r} (this medisyn knows {', '.join(VIEW_SETS)}); "
            f"rebuild the index with this medisyn"
        )
    return meta


def _read_keys(path: Path) -> tuple[list[str], list[str | None]]:
    import pyarrow.parquet as pq

    # neither read_table nor to_numpy: they import pandas (0.35 s of a short `generate --index` run)
    try:
        table = pq.ParquetFile(path).read(columns=["id", "key", "label"])
    except Exception as exc:  # missing file or not parquet
        raise MedisynError(f"{path}: cannot read the keys ({type(exc).__name__}); rebuild the index") from exc
    ids = np.asarray(table.column("id").to_pylist())
    if not np.array_equal(ids, np.arange(len(ids))):
        raise MedisynError(f"{path}: ids are not 0..{len(ids) - 1} in order; rebuild the index")
    return table.column("key").to_pylist(), table.column("label").to_pylist()


def _jsonable(value):
    """Settings as they read back from index.json (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
