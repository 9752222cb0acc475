"""Write an index folder from embedded vectors: the FAISS index, region tiles, the threshold's calibration and
index.json, each under a temporary name, then renamed (index.json last)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medisyn_cli.core.datasets import Source, open_key
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import atomic_write_text
from medisyn_cli.core.version import __version__
from medisyn_cli.screening.calibrate import CALIBRATION_MIN, CALIBRATION_SAMPLE, calibrate
from medisyn_cli.screening.embed import TILES, Embedder
from medisyn_cli.screening.embedding import Embedded, source_fingerprint
from medisyn_cli.screening.faiss_index import (
    RECALL_QUERIES,
    IndexPlan,
    _exact_store,
    _write_index,
    fill_index,
    neighbour_stats,
    plan_index,
    recall_at_1,
    region_index,
    search_index,
    stored_vectors,
    tile_projection,
)
from medisyn_cli.screening.index import (
    FORMAT,
    INDEX_FILE,
    KEYS_FILE,
    META_FILE,
    REGIONS_FILE,
    REGIONS_PCA_FILE,
    TARGET_FPR,
    VECTORS_FILE,
    TrainingIndex,
    _read_keys,
)
from medisyn_cli.screening.verify import LOCAL_FILE, SETTINGS, LocalFeatures


def finish_index(
    out: Path,
    embedded: Embedded,
    model: Embedder,
    found: list[Source],
    index_type: str,
    budget: int | None,
    started: float,
    sources: list,
    target_fpr: float | None = TARGET_FPR,
) -> dict:
    """From embedded vectors (and keys.parquet.tmp) to the index folder: FAISS index, recall, index.json."""
    if embedded.count == 0:
        raise MedisynError(
            f"{', '.join(map(str, sources))}: none of the {embedded.count + len(embedded.skipped)} "
            f"images could be read (first error: "
            f"{embedded.skipped[0]['reason'] if embedded.skipped else '-'})"
        )
    vectors = embedded.vectors[: embedded.count]
    # 3. the FAISS index, its recall when approximate, and the training set's own neighbour similarities
    plan = plan_index(index_type, embedded.count, model, budget)
    index = fill_index(vectors, plan, model)
    exact = _exact_store(vectors, out / (VECTORS_FILE + ".tmp")) if plan.keeps_vectors else None
    search = lambda queries, k: search_index(index, queries, k, model, exact)  # noqa: E731
    recall = None if plan.type == "flat" else round(recall_at_1(search, vectors, model), 4)
    tiles = region_index(embedded.regions, embedded.count, model)
    local = _local_features(out, embedded.count) if tiles is not None else None
    projection = None if tiles is None else tile_projection(stored_vectors(tiles))
    calibration = _calibrate(
        out, model, plan, index, exact, embedded.count, target_fpr, tiles, local, projection
    )
    threshold = calibration.get("threshold", model.default_threshold)
    meta = _metadata(
        model,
        plan,
        embedded,
        found,
        recall,
        neighbour_stats(search, vectors, threshold),
        time.time() - started,
    )
    meta.update(
        threshold=threshold,
        screening={"views": "general", "calibration": calibration},
        regions=None
        if tiles is None
        else {
            "file": REGIONS_FILE,
            "tiles": [list(t.box) for t in TILES],
            "count": int(tiles.ntotal),
            "projection": {"file": REGIONS_PCA_FILE, "dims": int(projection[0].shape[1])},
        },
        local=None
        if local is None
        else {"file": LOCAL_FILE, "keypoints": int(len(local.descriptors)), "settings": SETTINGS},
        **model.index_record(),
    )
    # 4. write under temporary names, then rename; index.json last
    _write_index(index, model, out / (INDEX_FILE + ".tmp"))
    if tiles is not None:
        _write_index(tiles, model, out / (REGIONS_FILE + ".tmp"))
        _write_projection(projection, out / (REGIONS_PCA_FILE + ".tmp"))
    if local is not None:
        local.save(out / (LOCAL_FILE + ".tmp"))
    _write_json(meta, out / (META_FILE + ".tmp"))
    del vectors, embedded
    exact = None  # frees the exact store before the index is saved
    for name in (
        (INDEX_FILE, KEYS_FILE)
        + ((VECTORS_FILE,) if plan.keeps_vectors else ())
        + ((REGIONS_FILE, REGIONS_PCA_FILE) if tiles is not None else ())
        + ((LOCAL_FILE,) if local is not None else ())
        + (META_FILE,)
    ):
        os.replace(out / (name + ".tmp"), out / name)
    return meta


def _calibrate(
    out: Path,
    model: Embedder,
    plan: IndexPlan,
    index,
    exact,
    count: int,
    target_fpr: float | None,
    tiles=None,
    local: LocalFeatures | None = None,
    projection: tuple | None = None,
) -> dict:
    """Screen a sample of the index's own images against it (screen.calibrate); {} without a target or images."""
    if target_fpr is None:
        return {"skipped": "no target false-positive rate: the embedder's default threshold"}
    if count < CALIBRATION_MIN:
        return {"skipped": f"{count} images, fewer than {CALIBRATION_MIN}: the embedder's default threshold"}
    keys, labels = _read_keys(out / (KEYS_FILE + ".tmp"))
    meta = {
        "count": count,
        "threshold": model.default_threshold,
        "index": {"type": plan.type},
        "screening": {"views": "general"},
    }
    training = TrainingIndex(out, meta, model, index, keys, labels, exact, tiles, local, projection)
    sample = np.sort(
        np.random.default_rng(2).choice(count, size=min(CALIBRATION_SAMPLE, count), replace=False)
    )
    images = []
    for i in sample:
        try:
            images.append((int(i), open_key(keys[i])))
        except Exception:  # a file that went away since it was embedded: calibrate on the others
            continue
    return calibrate(training, images, target_fpr)


def _local_features(out: Path, count: int) -> LocalFeatures:
    """Keypoints of every indexed image (verify.py), read again by key; an image that went away has none."""
    keys, _ = _read_keys(out / (KEYS_FILE + ".tmp"))

    def read(key: str):
        try:
            return open_key(key)
        except Exception:  # gone since it was embedded: no keypoints, never verified
            return None

    return LocalFeatures.from_images([read(key) for key in keys[:count]], threads=os.cpu_count() or 1)


def _metadata(
    model: Embedder,
    plan: IndexPlan,
    embedded: Embedded,
    found: list[Source],
    recall: float | None,
    neighbours: dict,
    seconds: float,
) -> dict:

    return {
        "format": FORMAT,
        "embedder": {
            "spec": model.name,
            "settings": model.settings(),
            "dim": model.dim,
            "binary": model.binary,
        },
        "metric": "hamming" if model.binary else "inner_product",
        "similarity": "1 - hamming / bits" if model.binary else "cosine",
        "count": embedded.count,
        "threshold": model.default_threshold,
        "index": {
            "type": plan.type,
            "params": plan.params,
            "recall_at_1": recall,
            "recall_queries": None if recall is None else RECALL_QUERIES,
            "vectors": VECTORS_FILE if plan.keeps_vectors else None,
        },
        "sources": [str(s.path) for s in found],
        "fingerprint": source_fingerprint(found),
        "skipped": {"count": len(embedded.skipped), "files": embedded.skipped},
        "nearest_neighbour_similarity": neighbours,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "medisyn_version": __version__,
    }


def _write_projection(projection: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    """regions_pca.npz (uncompressed: it loads in milliseconds, where computing it takes seconds)."""
    with open(path, "wb") as handle:
        np.savez(handle, basis=projection[0], projected=projection[1])


def _write_json(meta: dict, path: Path) -> None:
    """index.json's format (indent 1, NaN kept as written before), written atomically."""
    atomic_write_text(path, json.dumps(meta, indent=1, default=str) + "\n")
