"""Index build / load: sources, skipped files, metadata, index types, recall, and clear errors."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medisyn_cli.core.datasets import find_sources, iter_source_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.screening.build import build_index
from medisyn_cli.screening.embed import Embedder, get_embedder
from medisyn_cli.screening.faiss_index import (
    HNSW_PCA_DIMS,
    exact_search,
    fill_index,
    parse_memory,
    plan_index,
    recall_at_1,
    search_index,
)
from medisyn_cli.screening.index import TrainingIndex, load_index
from medisyn_cli.screening.screener import Screener

FIXTURE = Path(__file__).parent / "fixtures" / "images"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A plain folder (with a sub-folder) of the 12 real images, one corrupt and one truncated file."""
    folder = tmp_path / "train"
    (folder / "cxr").mkdir(parents=True)
    for path in sorted((FIXTURE / "images").glob("*.png")):
        shutil.copy(path, folder / ("cxr" if path.name.startswith("te_") else "") / path.name)
    (folder / "corrupt.png").write_bytes(b"not a png at all")
    (folder / "truncated.jpg").write_bytes((FIXTURE / "images" / "te_im_0003_0001.png").read_bytes()[:200])
    return folder


@pytest.fixture(scope="module")
def fixture_index(tmp_path_factory) -> Path:
    """The pixel index of the ImageFolder fixture (metadata.csv gives labels), built once."""
    out = tmp_path_factory.mktemp("index") / "idx"
    build_index([FIXTURE], out, show_progress=False)
    return out


def test_build_writes_index_keys_and_metadata(fixture_index):
    meta = json.loads((fixture_index / "index.json").read_text())
    assert sorted(p.name for p in fixture_index.iterdir() if not p.name.startswith(".medisyn")) == [
        "index.faiss",
        "index.json",
        "keys.parquet",
        "local.npz",
        "regions.faiss",
        "regions_pca.npz",
    ]
    assert meta["local"]["file"] == "local.npz" and meta["local"]["keypoints"] > 12 * 20
    assert meta["count"] == 12 and meta["embedder"]["spec"] == "pixel" and meta["embedder"]["dim"] == 1024
    assert meta["metric"] == "inner_product" and meta["index"]["type"] == "flat"
    assert meta["threshold"] == get_embedder("pixel").default_threshold
    assert meta["fingerprint"].startswith("sha256:") and meta["skipped"]["count"] == 0
    assert meta["medisyn_version"] and meta["created"]
    nn = meta["nearest_neighbour_similarity"]
    assert nn["sample"] == 12 and nn["percentiles"]["p100"] < 1.0  # self-matches excluded
    assert nn["percentiles"]["p0"] <= nn["percentiles"]["p50"] <= nn["percentiles"]["p100"]


def test_keys_map_ids_back_to_paths_and_labels(fixture_index):
    keys = pq.read_table(fixture_index / "keys.parquet").to_pydict()
    assert keys["id"] == list(range(12))
    assert Path(keys["key"][0]).name == "platelet_00004_12.png" and keys["label"][0] == "platelet"
    index = load_index(fixture_index)
    vectors = index.embedder.embed([Image.open(keys["key"][7])])
    sims, ids = index.search(vectors, k=2)
    assert ids[0, 0] == 7 and sims[0, 0] == pytest.approx(1.0, abs=1e-5) and sims[0, 1] < 0.97
    assert index.key(ids[0]) == [keys["key"][7], keys["key"][ids[0, 1]]]
    assert index.label([7]) == [keys["label"][7]]


def test_corrupt_files_are_skipped_listed_and_counted(image_folder, tmp_path):
    meta = build_index([image_folder], tmp_path / "idx", show_progress=False)
    assert meta["count"] == 12 and meta["skipped"]["count"] == 2
    skipped = {Path(s["key"]).name: s["reason"] for s in meta["skipped"]["files"]}
    assert set(skipped) == {"corrupt.png", "truncated.jpg"} and all(skipped.values())
    labels = pq.read_table(tmp_path / "idx" / "keys.parquet").column("label").to_pylist()
    assert labels.count("cxr") == 6 and labels.count(None) == 6  # label = sub-folder name
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["skipped"] == meta["skipped"]


def test_parquet_source_is_streamed_by_row_group(tmp_path):
    rows = []
    for i, path in enumerate(sorted((FIXTURE / "images").glob("*.png"))):
        image = {"bytes": path.read_bytes(), "path": path.name}
        rows.append({"image": image, "id": f"img-{i}", "label": path.name[:4]})
    rows.append({"image": {"bytes": b"broken", "path": "x.png"}, "id": "img-broken", "label": "none"})
    folder = tmp_path / "parquet"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000.parquet", row_group_size=4)
    source = find_sources([folder])[0]
    assert source.kind == "parquet"
    assert pq.ParquetFile(folder / "part-00000.parquet").num_row_groups == 4
    assert next(iter_source_records(source)).key.endswith(
        "part-00000.parquet:img-0"
    )  # lazy: one row at a time
    meta = build_index([folder], tmp_path / "idx", show_progress=False, batch_size=5)
    assert meta["count"] == 12 and meta["skipped"]["files"][0]["key"].endswith(":img-broken")
    index = load_index(tmp_path / "idx")
    assert index.key([3])[0].endswith("part-00000.parquet:img-3") and index.label([3]) == ["red_"]


def test_hashes_use_a_binary_index_on_the_same_similarity_scale(tmp_path):
    meta = build_index([FIXTURE], tmp_path / "idx", embedder="phash", show_progress=False)
    assert meta["metric"] == "hamming" and meta["index"]["type"] == "flat" and meta["threshold"] == 0.88
    index = load_index(tmp_path / "idx")
    image = Image.open(index.key([2])[0])
    sims, ids = index.search(index.embedder.embed([image]), k=3)
    assert ids[0, 0] == 2 and sims.dtype == np.float32 and sims[0, 0] == 1.0 and 0 < sims[0, 2] < 1.0
    assert (
        build_index([FIXTURE], tmp_path / "hnsw", embedder="phash", index_type="hnsw", show_progress=False)[
            "index"
        ]["recall_at_1"]
        is not None
    )


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_approximate_indexes_report_recall_and_find_copies(index_type, tmp_path):
    meta = build_index([FIXTURE], tmp_path / "idx", index_type=index_type, show_progress=False)
    assert meta["index"]["type"] == index_type and 0.0 <= meta["index"]["recall_at_1"] <= 1.0
    index = load_index(tmp_path / "idx")
    sims, ids = index.search(index.embedder.embed([Image.open(index.key([5])[0])]), k=1)
    assert ids[0, 0] == 5 and sims[0, 0] == pytest.approx(
        1.0, abs=1e-5
    )  # IVF-PQ candidates re-scored exactly
    assert (index.exact is not None) == (index_type == "ivfpq") and index.can_reconstruct
    assert (tmp_path / "idx" / "vectors.npy").exists() == (index_type == "ivfpq")


def test_projected_hnsw_index_keeps_exact_vectors_and_finds_copies(tmp_path, monkeypatch):
    import medisyn_cli.screening.faiss_index as faiss_index

    monkeypatch.setattr(faiss_index, "HNSW_PCA_MIN_COUNT", 1)  # the fixture's 12 images, projected to 8 dims
    monkeypatch.setattr(faiss_index, "HNSW_PCA_DIMS", 8)
    meta = build_index([FIXTURE], tmp_path / "idx", index_type="hnsw", show_progress=False)
    assert meta["index"]["params"]["pca"] == 8 and meta["index"]["vectors"] == "vectors.npy"
    index = load_index(tmp_path / "idx")
    assert faiss_index.hnsw_graph(index.faiss_index).hnsw.efSearch == meta["index"]["params"]["efSearch"]
    assert index.exact.shape == (12, 1024) and index.can_reconstruct
    image = Image.open(index.key([5])[0])
    sims, ids = index.search(index.embedder.embed([image]), k=2)
    assert ids[0, 0] == 5 and sims[0, 0] == pytest.approx(1.0, abs=1e-5) and sims[0, 1] < sims[0, 0]
    result = Screener(index).check([image.transpose(Image.Transpose.ROTATE_90)])[0]
    assert result.nn_id == 5 and result.near_copy and result.view == "rot270"


class VectorEmbedder(Embedder):
    """Stand-in embedder for index tests on random vectors."""

    def __init__(self, dim: int):
        self.name, self.dim, self.default_threshold = "vectors", dim, 0.9


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 50 random centres: what image embeddings look like, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    points = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("index_type, min_recall", [("flat", 1.0), ("hnsw", 0.95), ("ivfpq", 0.6)])
def test_index_types_find_nearest_neighbours(index_type, min_recall):
    embedder, vectors = VectorEmbedder(32), clustered(4000, 32, seed=0)
    plan = plan_index(index_type, len(vectors), embedder, None)
    index = fill_index(vectors, plan, embedder)
    queries = vectors[:200] + 0.02 * np.random.default_rng(1).normal(size=(200, 32)).astype(np.float32)
    _, exact = exact_search(vectors, queries, embedder)
    _, found = index.search(queries, 1)
    assert np.mean(found[:, 0] == exact[:, 0]) >= min_recall
    assert recall_at_1(index.search, vectors, embedder) >= min_recall
    if index_type == "ivfpq":
        assert plan.params["nlist"] >= 100 and 32 % plan.params["m"] == 0


def test_projected_hnsw_proposes_candidates_that_exact_vectors_rescore():
    embedder, vectors = VectorEmbedder(512), clustered(12_000, 512, seed=0)
    plan = plan_index("hnsw", len(vectors), embedder, None)
    assert plan.params["pca"] == HNSW_PCA_DIMS and plan.keeps_vectors
    index = fill_index(vectors, plan, embedder)
    queries = vectors[:300] + 0.02 * np.random.default_rng(1).normal(size=(300, 512)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact_s, exact_i = exact_search(vectors, queries, embedder, k=3)
    sims, ids = search_index(index, queries, 3, embedder, vectors)
    assert np.mean(ids[:, 0] == exact_i[:, 0]) >= 0.95
    found = ids[:, 0] == exact_i[:, 0]
    np.testing.assert_allclose(
        sims[found, 0], exact_s[found, 0], atol=1e-5
    )  # exact similarities, not PCA ones
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_auto_index_type_follows_count_and_memory_budget():
    embedder = VectorEmbedder(512)
    assert plan_index("auto", 10_000, embedder, None).type == "flat"
    assert plan_index("auto", 1_000_000, embedder, None).type == "hnsw"
    assert plan_index("auto", 10_000_000, embedder, None).type == "ivfpq"
    # a projected HNSW keeps only its low-dimensional graph in memory (the exact vectors are memory-mapped, as for IVF-PQ)
    projected = plan_index("auto", 1_000_000, embedder, None).params
    assert projected["pca"] == HNSW_PCA_DIMS and "pca" not in plan_index("hnsw", 5_000, embedder, None).params
    assert "pca" not in plan_index("hnsw", 1_000_000, VectorEmbedder(128), None).params
    assert plan_index("auto", 200_000, embedder, parse_memory("200MB")).type == "hnsw"
    assert plan_index("auto", 200_000, embedder, parse_memory("64MB")).type == "ivfpq"
    small = plan_index("ivfpq", 10_000_000, embedder, parse_memory("200MB"))
    assert 10_000_000 * (small.params["m"] + 8) * 1.2 <= 200e6
    with pytest.raises(MedisynError, match="too small"):
        plan_index("auto", 10_000_000, embedder, parse_memory("10MB"))
    assert plan_index("auto", 10, get_embedder("phash"), None).type == "flat"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4GB", 4_000_000_000),
        ("512MB", 512_000_000),
        ("1.5GiB", 1.5 * 2**30),
        (" 200 mb ", 200_000_000),
        (None, None),
        (1024, 1024),
    ],
)
def test_memory_budgets_are_parsed_once(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "4XB", "-1GB", "0", "GB", "", 0, -5])
def test_bad_memory_budget_is_one_clear_error(text, tmp_path):
    with pytest.raises(MedisynError, match="max_memory"):
        parse_memory(text)
    with pytest.raises(MedisynError, match="max_memory"):
        build_index([FIXTURE], tmp_path / "idx", max_memory=text, show_progress=False)
    assert not (tmp_path / "idx").exists()


def test_bad_sources_and_options_are_refused_before_any_work(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    cases = [
        ([empty], {}, "no images found"),
        ([tmp_path / "missing"], {}, "no such file"),
        ([], {}, "no source"),
        ([FIXTURE], {"index_type": "ivf"}, "index type"),
        ([FIXTURE], {"embedder": "sift"}, "unknown embedder"),
        ([FIXTURE], {"embedder": "phash", "index_type": "ivfpq"}, "binary|float"),
        ([FIXTURE], {"batch_size": 0}, "batch_size"),
    ]
    for sources, options, message in cases:
        with pytest.raises(MedisynError, match=message):
            build_index(sources, tmp_path / "idx", show_progress=False, **options)
        assert not (tmp_path / "idx").exists()


def test_all_unreadable_images_is_an_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    with pytest.raises(MedisynError, match="none of the 1 images could be read"):
        build_index([folder], tmp_path / "idx", show_progress=False)
    assert not any((tmp_path / "idx").glob("*"))


def test_non_empty_out_is_refused_unless_overwrite(tmp_path, fixture_index):
    out = tmp_path / "idx"
    shutil.copytree(fixture_index, out)
    with pytest.raises(MedisynError, match="holds an index; use --overwrite"):
        build_index([FIXTURE], out, show_progress=False)
    meta = build_index([FIXTURE], out, embedder="phash", overwrite=True, show_progress=False)
    assert load_index(out).meta["embedder"]["spec"] == meta["embedder"]["spec"] == "phash"
    other = tmp_path / "results"
    other.mkdir()
    (other / "important.csv").write_text("keep me")
    with pytest.raises(MedisynError, match="was not made by medisyn index build"):
        build_index([FIXTURE], other, overwrite=True, show_progress=False)
    assert (other / "important.csv").exists()


def test_missing_or_corrupt_index_folders_give_one_clear_error(tmp_path, fixture_index):
    with pytest.raises(MedisynError, match="no such index folder"):
        load_index(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(MedisynError, match="no index.json"):
        load_index(tmp_path / "half")
    cases = {"index.json": b"{not json", "index.faiss": b"garbage", "keys.parquet": b"garbage"}
    for name, content in cases.items():
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(fixture_index, broken)
        (broken / name).write_bytes(content)
        with pytest.raises(MedisynError, match="rebuild|corrupt"):
            load_index(broken)
    changed = tmp_path / "changed"
    shutil.copytree(fixture_index, changed)
    meta = json.loads((changed / "index.json").read_text())
    meta["embedder"]["settings"]["size"] = 16
    (changed / "index.json").write_text(json.dumps(meta))
    with pytest.raises(MedisynError, match="rebuild the index"):
        load_index(changed)


def test_in_memory_index_and_query_shape_check():
    embedder = VectorEmbedder(8)
    vectors = clustered(20, 8, seed=3)
    index = TrainingIndex.from_vectors(vectors, [f"k{i}" for i in range(20)], embedder)
    sims, ids = index.search(vectors[4:5], k=1)
    assert ids[0, 0] == 4 and index.key(ids[0]) == ["k4"] and index.can_reconstruct
    assert np.allclose(index.reconstruct([4]), vectors[4:5])
    with pytest.raises(MedisynError, match="queries must be"):
        index.search(np.zeros((1, 9), np.float32))


def test_image_bytes_round_trip_through_parquet_keys(tmp_path):
    buffer = io.BytesIO()
    Image.open(FIXTURE / "images" / "te_im_0003_0001.png").save(buffer, "PNG")
    pq.write_table(pa.table({"image": [buffer.getvalue()]}), tmp_path / "one.parquet")
    meta = build_index([tmp_path / "one.parquet"], tmp_path / "idx", show_progress=False)
    assert meta["count"] == 1 and load_index(tmp_path / "idx").key([0])[0].endswith("one.parquet:0")


def test_build_calibrates_the_threshold_on_its_own_images(tmp_path, monkeypatch):
    from medisyn_cli.screening import index_write

    monkeypatch.setattr(index_write, "CALIBRATION_MIN", 10)
    meta = build_index([FIXTURE], tmp_path / "idx", show_progress=False, target_fpr=0.05)
    calibration = meta["screening"]["calibration"]
    assert meta["screening"]["views"] == "general" and meta["threshold"] == calibration["threshold"]
    assert (
        calibration["sample"] == 12 and calibration["negatives"] == 24 and calibration["target_fpr"] == 0.05
    )
    assert calibration["fpr_at_threshold"] <= 0.05
    assert calibration["threshold"] <= calibration["partial_threshold"] <= 1.0
    assert calibration["fpr_at_threshold"] <= calibration["partial_fpr_at_threshold"] <= 0.05
    assert load_index(tmp_path / "idx").partial_threshold == calibration["partial_threshold"]
    curve = {row["threshold"]: row for row in calibration["curve"]}
    assert all(0 <= row["fpr"] <= 1 and 0 <= row["tpr"] <= 1 for row in curve.values())
    fprs = [row["fpr"] for row in calibration["curve"]]
    assert fprs == sorted(fprs, reverse=True)  # fewer false positives as the threshold rises
    assert (
        json.loads((tmp_path / "idx" / "index.json").read_text())["screening"]["calibration"] == calibration
    )


def test_small_index_keeps_the_default_threshold_and_says_why(fixture_index):
    meta = json.loads((fixture_index / "index.json").read_text())
    assert "fewer than" in meta["screening"]["calibration"]["skipped"]
    assert meta["threshold"] == get_embedder("pixel").default_threshold


@pytest.mark.parametrize("target", [0, -0.1, 0.5, "0.01", True])
def test_bad_target_fpr_is_refused_before_any_work(tmp_path, target):
    with pytest.raises(MedisynError, match="target false-positive rate"):
        build_index([FIXTURE], tmp_path / "idx", show_progress=False, target_fpr=target)
    assert not (tmp_path / "idx").exists()


def test_index_built_before_calibration_is_used_with_its_own_views_and_threshold(fixture_index, tmp_path):
    from medisyn_cli.screening.screener import Screener

    old = tmp_path / "old"
    shutil.copytree(fixture_index, old)
    meta = json.loads((old / "index.json").read_text())
    del meta["screening"]
    (old / "index.json").write_text(json.dumps(meta))
    screener = Screener(load_index(old))
    assert screener.view_set == "tuned" and len(screener.views) == 61 and screener.threshold == 0.97
    assert Screener(load_index(fixture_index)).view_set == "general"


@pytest.mark.parametrize("threshold", ["high", None, float("nan"), 1.5, True])
def test_non_numeric_threshold_in_index_json_is_a_one_line_error(fixture_index, tmp_path, threshold):
    from typer.testing import CliRunner

    from medisyn_cli.cli.main import app

    broken = tmp_path / "broken"
    shutil.copytree(fixture_index, broken)
    meta = json.loads((broken / "index.json").read_text())
    meta["threshold"] = threshold
    (broken / "index.json").write_text(json.dumps(meta))
    with pytest.raises(MedisynError, match="threshold .* is not a similarity"):
        load_index(broken)
    result = CliRunner().invoke(app, ["screen", str(FIXTURE), "--index", str(broken)])
    assert result.exit_code == 2 and "index.json: threshold" in result.output
    assert "Traceback" not in result.output


def test_index_build_prints_the_calibration_curve(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medisyn_cli.cli.main import app
    from medisyn_cli.screening import index_write

    monkeypatch.setattr(index_write, "CALIBRATION_MIN", 10)
    result = CliRunner().invoke(
        app,
        [
            "index",
            "build",
            str(FIXTURE),
            "--out",
            str(tmp_path / "idx"),
            "--target-fpr",
            "0.05",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert "calibrated for 5.00% false positives" in result.output and "copies caught" in result.output
    assert f"partial threshold {meta['screening']['calibration']['partial_threshold']:g}" in result.output
    assert f"{meta['threshold']:g}" in result.output
    plain = CliRunner().invoke(
        app,
        [
            "index",
            "build",
            str(FIXTURE),
            "--out",
            str(tmp_path / "plain"),
            "--target-fpr",
            "0",
            "--no-regions",
            "--no-progress",
        ],
    )
    assert plain.exit_code == 0 and "threshold not calibrated" in plain.output
    assert (
        not (tmp_path / "plain" / "regions.faiss").exists() and (tmp_path / "idx" / "regions.faiss").exists()
    )
    assert json.loads((tmp_path / "plain" / "index.json").read_text())["threshold"] == 0.97


def test_region_tiles_can_be_left_out_and_large_tile_sets_use_hnsw(tmp_path, monkeypatch):
    from medisyn_cli.screening import faiss_index as index_module

    meta = build_index([FIXTURE], tmp_path / "plain", show_progress=False, regions=False)
    assert meta["regions"] is None and not (tmp_path / "plain" / "regions.faiss").exists()
    assert load_index(tmp_path / "plain").regions is None
    monkeypatch.setattr(index_module, "REGIONS_FLAT_MAX", 100)
    meta = build_index([FIXTURE], tmp_path / "hnsw", show_progress=False)
    tiles = load_index(tmp_path / "hnsw").regions
    assert meta["regions"]["count"] == tiles.ntotal == 12 * 16 and "HNSW" in type(tiles).__name__
