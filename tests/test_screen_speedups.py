"""Screening speed-ups that must not change a decision: the tiles' projection stored at build, thread limits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.screening.build import build_index
from medisyn_cli.screening.faiss_index import stored_vectors, tile_projection
from medisyn_cli.screening.index import REGIONS_PCA_FILE, load_index
from medisyn_cli.screening.screener import Screener, grouped_search

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Pixel index (with tiles and keypoints) of the 12 real fixture images."""
    out = tmp_path_factory.mktemp("speed") / "pixel"
    build_index([FIXTURES / "images"], out, show_progress=False)
    return out


def queries() -> list[Image.Image]:
    """Copies (crops, flips, a pasted region) of the fixture images and the distinct images of the same classes."""
    originals = [Image.open(p).convert("RGB") for p in sorted((FIXTURES / "images").rglob("*.png"))]
    crops = [im.crop((10, 6, 58, 54)).resize((64, 64), Image.Resampling.BICUBIC) for im in originals[:6]]
    pasted = []
    for a, b in zip(originals[:4], originals[6:10]):
        base = b.copy()
        base.paste(a.crop((16, 16, 48, 48)), (4, 20))
        pasted.append(base)
    distinct = [
        Image.open(p).convert("RGB") for p in sorted((FIXTURES / "screen" / "distinct").glob("*.png"))
    ]
    return crops + [ImageOps.mirror(im) for im in originals[:4]] + pasted + distinct


def decisions(results) -> list[tuple]:
    return [(r.nn_id, r.near_copy, r.view, r.region, r.inliers, round(r.nn_similarity, 5)) for r in results]


def as_before_the_projection_file(built: Path, folder: Path) -> Path:
    """A copy of the index as medisyn wrote it before regions_pca.npz (no file, no entry in index.json)."""
    shutil.copytree(built, folder)
    (folder / REGIONS_PCA_FILE).unlink()
    meta = json.loads((folder / "index.json").read_text())
    del meta["regions"]["projection"]
    (folder / "index.json").write_text(json.dumps(meta, indent=1))
    return folder


def test_index_build_stores_the_tiles_projection_a_screener_would_compute(built):
    meta = json.loads((built / "index.json").read_text())
    assert meta["regions"]["projection"] == {"file": REGIONS_PCA_FILE, "dims": 128}
    index = load_index(built)
    basis, projected = index.region_projection
    computed = tile_projection(stored_vectors(index.regions))
    assert basis.shape == (1024, 128) and projected.shape == (12 * 16, 128)
    assert np.array_equal(basis, computed[0]) and np.array_equal(projected, computed[1])
    search = Screener(index)
    search.check(queries()[:1])
    assert search.region_search.basis is basis  # the stored one, not computed again


def test_index_built_before_the_projection_file_screens_identically(built, tmp_path):
    old = load_index(as_before_the_projection_file(built, tmp_path / "old"))
    assert old.region_projection is None
    images = queries()
    stored, computed = Screener(load_index(built)).check(images), Screener(old).check(images)
    assert decisions(stored) == decisions(computed)
    assert sum(r.near_copy for r in stored) >= 10 and not any(r.near_copy for r in stored[-6:])


def test_projection_file_that_does_not_fit_the_tiles_is_refused(built, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(built, folder)
    with open(folder / REGIONS_PCA_FILE, "wb") as handle:
        np.savez(handle, basis=np.zeros((1024, 128), np.float32), projected=np.zeros((5, 128), np.float32))
    with pytest.raises(MedisynError, match=r"regions_pca\.npz.*rebuild the index"):
        load_index(folder)
    (folder / REGIONS_PCA_FILE).write_bytes(b"not an npz")
    with pytest.raises(MedisynError, match=r"regions_pca\.npz: cannot read"):
        load_index(folder)


def test_grouped_search_from_the_stored_projection_equals_one_computed(built):
    index = load_index(built)
    rng = np.random.default_rng(1)
    tiles = stored_vectors(index.regions)
    found = tiles[rng.choice(len(tiles), 30, replace=False)] + rng.normal(0, 0.02, (30, tiles.shape[1]))
    found = (found / np.linalg.norm(found, axis=1, keepdims=True)).astype(np.float32)
    found, penalties = found.reshape(3, 10, -1), np.zeros(10, np.float32)
    stored = grouped_search(index.regions, index.region_projection).search(found, penalties)
    computed = grouped_search(index.regions).search(found, penalties)
    assert all(np.array_equal(a, b) for a, b in zip(stored[1], computed[1]))
    assert all(np.array_equal(a, b) for a, b in zip(stored[0], computed[0]))


def test_screening_leaves_faiss_and_blas_threads_as_they_were(built):
    import faiss
    from threadpoolctl import threadpool_info

    blas = lambda: [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]  # noqa: E731
    before, threads = blas(), faiss.omp_get_max_threads()
    screener = Screener(load_index(built))
    screener.check(queries()[:3])  # one chunk
    screener.check(queries(), chunk=4)  # chunks embedded by a thread
    assert blas() == before and faiss.omp_get_max_threads() == threads


def test_view_by_view_search_scored_by_blas_finds_what_faiss_finds_pair_by_pair(built):
    import faiss

    from medisyn_cli.screening.faiss_index import blas_distances

    index = load_index(built)
    views = Screener(index).views
    found = index.embedder.embed_views(queries(), views).reshape(-1, index.embedder.dim)
    before = faiss.cvar.distance_compute_blas_threshold
    pairwise = index.faiss_index.search(found, 5)
    with blas_distances():
        assert faiss.cvar.distance_compute_blas_threshold == 20 < before
        blas = index.faiss_index.search(found, 5)
    assert faiss.cvar.distance_compute_blas_threshold == before
    assert len(found) == 20 * len(views) and np.array_equal(pairwise[1], blas[1])
    np.testing.assert_allclose(pairwise[0], blas[0], atol=1e-6)


class ViewByView(Screener):
    """The whole images' views searched one by one (as HNSW and IVF-PQ indexes are)."""

    def _groupable(self) -> bool:
        return False


@pytest.mark.parametrize("pool", [64, 3])
def test_whole_image_views_searched_together_decide_as_view_by_view(built, pool):
    index = load_index(built)
    grouped, alone = Screener(index), ViewByView(index)
    grouped._prepare()
    grouped.whole_search.pool = pool  # 3 of 12 images: the projection chooses; 64: every image
    assert alone._prepare() is None and alone.whole_search is None
    images = queries()
    assert decisions(grouped.check(images)) == decisions(alone.check(images))
    grouped_matches = grouped._grouped(
        [()] * 4, grouped.views, embedded(grouped, images[:4]), grouped.whole_search
    )
    assert all(len(m[3]) == min(pool, grouped.candidates) for m in grouped_matches)


def embedded(screener: Screener, images: list) -> np.ndarray:
    return screener.embedder.embed_views(images, screener.views)


def test_screening_by_two_threads_equals_one_thread(built):
    index = load_index(built)
    images = queries()
    one = Screener(index, workers=1).check(images)
    two = Screener(index, workers=2)
    assert two.workers == 2 and decisions(two.check(images)) == decisions(one)
    assert decisions(two.check(images, chunk=3)) == decisions(one)  # 7 parts, two at a time
    assert [decisions(two.check([im])) for im in images[:3]] == [[d] for d in decisions(one)[:3]]


def test_overlapping_blas_distances_restore_faiss_setting_when_the_last_leaves():
    import threading

    import faiss

    from medisyn_cli.screening.faiss_index import blas_distances

    before, inside, release = faiss.cvar.distance_compute_blas_threshold, threading.Event(), threading.Event()

    def hold() -> None:
        with blas_distances():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(10)
    with blas_distances():
        assert faiss.cvar.distance_compute_blas_threshold == 20
    assert faiss.cvar.distance_compute_blas_threshold == 20  # the thread is still inside
    release.set()
    thread.join()
    assert faiss.cvar.distance_compute_blas_threshold == before


def test_embedders_that_run_their_own_threads_screen_with_one_worker_and_the_same_results():
    import os

    from medisyn_cli.screening.embed import TILES, PixelEmbedder
    from medisyn_cli.screening.index import TrainingIndex

    class Serial(PixelEmbedder):  # as a torch embedder: its own thread pool, one caller at a time
        concurrent = False

    originals = [Image.open(p).convert("RGB") for p in sorted((FIXTURES / "images").rglob("*.png"))]
    model = Serial()
    tiles = model.embed_views(originals, TILES).reshape(-1, model.dim)
    index = TrainingIndex.from_vectors(
        model.embed(originals), [str(i) for i in range(12)], model, regions=tiles
    )
    serial, parallel = Screener(index), Screener(index, workers=2)
    assert serial.workers == 1 and Screener(index, workers=3).workers == 3
    assert Screener(load_index_of(PixelEmbedder())).workers == min(2, len(os.sched_getaffinity(0)))
    images = queries()
    assert decisions(serial.check(images, chunk=4)) == decisions(parallel.check(images, chunk=4))


def load_index_of(model):
    """A one-image in-memory index (no tiles) of `model`."""
    from medisyn_cli.screening.index import TrainingIndex

    image = Image.open(sorted((FIXTURES / "images").rglob("*.png"))[0]).convert("RGB")
    return TrainingIndex.from_vectors(model.embed([image]), ["0"], model)


def test_a_warmed_up_screener_decides_as_a_cold_one_and_has_built_its_tile_search(built):
    index = load_index(built)
    cold = decisions(Screener(index, workers=1).check(queries()))
    warm = Screener(load_index(built), workers=1)
    assert warm.region_search is None and warm.whole_search is None
    warm.warm_up()  # a training thumbnail screened: every stage runs once
    assert warm.region_search is not None and warm.whole_search is not None and warm.embedder._operators
    assert decisions(warm.check(queries())) == cold


def test_warm_up_of_a_screener_that_cannot_screen_raises_nothing(built):
    screener = Screener(load_index(built))
    screener.index.faiss_index = None  # its first check would fail: the run reports it there
    screener.warm_up()
    with pytest.raises(AttributeError):
        screener.check(queries()[:1])


def test_generate_warms_the_screener_in_another_thread_while_the_block_runs():
    import threading

    from medisyn_cli.generate.run import warmed

    seen, started, release = {}, threading.Event(), threading.Event()

    class Slow:
        def warm_up(self) -> None:
            seen["thread"] = threading.current_thread()
            started.set()
            release.wait(10)
            seen["done"] = True

    with warmed(Slow()):
        assert started.wait(10) and "done" not in seen  # the block runs while the warm-up runs
        release.set()
    assert seen["done"] and seen["thread"] is not threading.current_thread()  # joined at the block's end
    with warmed(None):  # no --index: nothing to warm
        pass


def test_grouped_search_scores_the_store_in_blocks_as_in_one(built, monkeypatch):
    from medisyn_cli.screening import grouped

    index = load_index(built)
    views = Screener(index).region_views
    found = index.embedder.embed_views(queries()[:6], views)
    penalties = np.array([view.penalty for view in views], np.float32)
    search = grouped_search(index.regions, index.region_projection)
    search.pool = 10
    whole = search.search(found, penalties)
    monkeypatch.setattr(grouped, "STORE_BLOCK", 7)  # 192 tiles in 28 blocks, the last one short
    blocked = search.search(found, penalties)
    assert all(np.array_equal(a, b) for a, b in zip(whole[1], blocked[1]))
    assert all(np.allclose(a, b) for a, b in zip(whole[0], blocked[0]))
