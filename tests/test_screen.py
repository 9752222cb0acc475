"""Screening: planted copies of real images are caught, distinct real images of the same classes are not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.screening.build import build_index
from medisyn_cli.screening.index import load_index
from medisyn_cli.screening.screener import Screener, ScreenResult, require_embedder

FIXTURES = Path(__file__).parent / "fixtures"
SOURCES = [
    "platelet_00004_12.png",
    "white_blood_cell_00001_00.png",
    "te_im_0015_0001.png",
    "te_person15_virus_46.png",
]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """Pixel index of the 12 real fixture images (BCCD blood smear crops, Kermany chest x-rays)."""
    out = tmp_path_factory.mktemp("screen") / "pixel"
    build_index([FIXTURES / "images"], out, show_progress=False)
    return load_index(out)


def jpeg(image: Image.Image, quality: int = 70) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def noisy(image: Image.Image, sigma: float = 8.0) -> Image.Image:
    array = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, sigma, array.shape)
    return Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))


def shifted(image: Image.Image, dx: int = 3, dy: int = -2) -> Image.Image:
    array = np.asarray(image)
    pad = ((3, 3), (3, 3)) + ((0, 0),) * (array.ndim - 2)
    return Image.fromarray(np.pad(array, pad, mode="edge")[3 - dy : 3 - dy + 64, 3 - dx : 3 - dx + 64])


COPIES = {
    "resize_down": lambda im: im.resize((40, 40), Image.Resampling.LANCZOS),
    "resize_up": lambda im: im.resize((256, 256), Image.Resampling.BICUBIC),
    "jpeg": jpeg,
    "noise": noisy,
    "brightness_contrast": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.2)).enhance(
        0.8
    ),
    "crop": lambda im: im.crop((4, 2, 62, 60)).resize((64, 64), Image.Resampling.BICUBIC),
    "shift": shifted,
    "hflip": ImageOps.mirror,
    "vflip": ImageOps.flip,
}


@pytest.mark.parametrize("transform", COPIES)
def test_planted_copies_are_found(index, transform):
    sources = [FIXTURES / "images" / "images" / name for name in SOURCES]
    results = Screener(index).check([COPIES[transform](Image.open(p)) for p in sources])
    for path, result in zip(sources, results):
        assert isinstance(result, ScreenResult)
        assert result.near_copy, (transform, path.name, result)
        assert Path(result.nn_key).name == path.name and result.nn_similarity >= index.threshold
        assert (
            index.key([result.nn_id]) == [result.nn_key] and result.nn_label == index.label([result.nn_id])[0]
        )


def test_independently_resized_copy_from_the_dataset_is_found(index):
    result = Screener(index).check(
        [Image.open(FIXTURES / "screen" / "resized" / "te_person11_virus_38.png")]
    )[0]
    assert result.near_copy and Path(result.nn_key).name == "te_person11_virus_38.png"


def test_distinct_real_images_of_the_same_classes_are_not_near_copies(index):
    paths = sorted((FIXTURES / "screen" / "distinct").glob("*.png"))
    results = Screener(index).check([Image.open(p) for p in paths])
    assert len(results) == 6
    assert not any(r.near_copy for r in results), [(r.nn_key, r.nn_similarity) for r in results]
    # region tiles and the general views give distinct images more chances, so a smaller margin than the tuned views'
    assert max(r.nn_similarity for r in results) < index.threshold - 0.05
    tuned = Screener(index, view_set="tuned").check([Image.open(p) for p in paths])
    assert max(r.nn_similarity for r in tuned) < index.threshold - 0.1
    assert all(r.nn_similarity < 0.97 for r in Screener(index).check([Image.new("L", (64, 64), 90)]))


def test_a_noisy_copys_noise_is_taken_out_of_its_similarity(index, monkeypatch):
    """Noise of sigma 14 takes the platelet's copy below the threshold; the query's noise factor gives most of it back
    (0.960 -> 0.992) and lifts distinct noisy images by their share only (at most 0.02 here)."""
    from medisyn_cli.screening import embed

    sources = [Image.open(FIXTURES / "images" / "images" / name) for name in SOURCES]
    distinct = [Image.open(p) for p in sorted((FIXTURES / "screen" / "distinct").glob("*.png"))]
    queries = [noisy(image, 14.0) for image in sources + distinct]
    found = Screener(index).check(queries)
    monkeypatch.setattr(embed, "NOISE_SHARE", 0.0)
    plain = Screener(index).check(queries)
    assert all(r.near_copy for r in found[:4]) and not plain[0].near_copy
    assert [Path(r.nn_key).name for r in found[:4]] == SOURCES
    assert all(f.nn_similarity >= p.nn_similarity for f, p in zip(found, plain))
    assert not any(r.near_copy for r in found[4:])
    assert max(f.nn_similarity - p.nn_similarity for f, p in zip(found[4:], plain[4:])) < 0.02


def salt_and_pepper(image: Image.Image, share: float = 0.03) -> Image.Image:
    array = np.asarray(image).copy()
    draw = np.random.default_rng(0).random(array.shape[:2])
    array[draw < share / 2], array[(draw >= share / 2) & (draw < share)] = 0, 255
    return Image.fromarray(array)


def test_a_salt_and_pepper_copy_is_compared_median_filtered(index, monkeypatch):
    """3% salt and pepper takes the blood smears' copies to 0.80 / 0.93 (no keypoints verify them); embedded
    median-filtered, every copy is back at 0.998 or more."""
    from medisyn_cli.screening import screener

    queries = [salt_and_pepper(Image.open(FIXTURES / "images" / "images" / name)) for name in SOURCES]
    found = Screener(index).check(queries)
    assert all(r.near_copy and r.nn_similarity > 0.995 for r in found)
    assert [Path(r.nn_key).name for r in found] == SOURCES
    monkeypatch.setattr(screener, "without_impulses", lambda image: image)
    plain = Screener(index).check(queries)
    assert not plain[0].near_copy and not plain[1].near_copy


def test_views_are_what_catch_flipped_and_cropped_copies(index):
    source = Image.open(FIXTURES / "images" / "images" / "white_blood_cell_00001_00.png")
    copies = [ImageOps.mirror(source), COPIES["crop"](source)]
    with_views, without = Screener(index).check(copies), Screener(index, views=False).check(copies)
    assert all(r.near_copy for r in with_views) and not any(r.near_copy for r in without)
    assert with_views[0].view == "hflip" and with_views[1].view.startswith("box(")


def test_threshold_defaults_to_the_index_and_can_be_set(index):
    assert Screener(index).threshold == index.meta["threshold"] == 0.97
    distinct = Image.open(FIXTURES / "screen" / "distinct" / "tr_person547_virus_1086.png")
    assert Screener(index, threshold=0.05).check([distinct])[0].near_copy
    assert Screener(index).check([]) == []


@pytest.mark.parametrize("threshold", [0, -0.5, 1.2, float("nan"), "0.9", True])
def test_threshold_outside_its_range_is_one_clear_error(index, threshold):
    with pytest.raises(MedisynError, match="threshold"):
        Screener(index, threshold=threshold)


def test_index_from_another_embedder_is_refused(index, tmp_path):
    require_embedder(index, "pixel")
    with pytest.raises(MedisynError, match="built with embedder 'pixel', not 'phash'"):
        require_embedder(index, "phash")


def test_phash_index_screens_exact_copies_and_flips(tmp_path):
    build_index([FIXTURES / "images"], tmp_path / "phash", embedder="phash", show_progress=False)
    phash = load_index(tmp_path / "phash")
    source = Image.open(FIXTURES / "images" / "images" / "te_im_0003_0001.png")
    distinct = Image.open(FIXTURES / "screen" / "distinct" / "tr_normal2_im_0775_0001.png")
    copy, flipped, other = Screener(phash).check([jpeg(source), ImageOps.flip(source), distinct])
    assert copy.near_copy and flipped.near_copy and flipped.nn_similarity == 1.0 and flipped.view == "vflip"
    assert not other.near_copy and 0.0 <= other.nn_similarity < 0.88


UNSEEN = {
    "rot90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rot180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "transpose": lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    "invert": lambda im: ImageOps.invert(im.convert("RGB")).convert(im.mode),
    "rot7": lambda im: im.rotate(7, Image.Resampling.BICUBIC),
    "border10": lambda im: ImageOps.expand(im, 6, fill=0).resize((64, 64), Image.Resampling.LANCZOS),
}


@pytest.mark.parametrize("transform", UNSEEN)
def test_general_views_catch_turned_inverted_rotated_and_bordered_copies(index, transform):
    sources = [FIXTURES / "images" / "images" / name for name in SOURCES]
    copies = [UNSEEN[transform](Image.open(p)) for p in sources]
    general, tuned = Screener(index).check(copies), Screener(index, view_set="tuned").check(copies)
    for path, result in zip(sources, general):
        assert result.near_copy and Path(result.nn_key).name == path.name, (transform, path.name, result)
    assert not all(r.near_copy for r in tuned)  # the views of old indexes miss them
    if transform == "invert":
        assert all("invert" in r.view for r in general)


def test_excluded_ids_are_never_the_match(index):
    source = Image.open(FIXTURES / "images" / "images" / SOURCES[0])
    first = Screener(index).check([source])[0]
    again = Screener(index).check([source, source], exclude=[{first.nn_id}, set()])
    assert again[0].nn_id not in (first.nn_id, -1) and again[0].nn_similarity < first.nn_similarity
    assert again[1] == first


def test_unknown_view_set_is_refused(index):
    with pytest.raises(MedisynError, match="view set 'fancy'"):
        Screener(index, view_set="fancy")


def test_crops_and_partial_copies_match_a_region_of_their_source(index):
    source = Image.open(FIXTURES / "images" / "images" / "te_im_0015_0001.png")
    background = Image.open(FIXTURES / "screen" / "distinct" / "tr_normal2_im_0775_0001.png").convert(
        source.mode
    )
    crop70 = source.crop((12, 6, 57, 51)).resize((64, 64), Image.Resampling.BICUBIC)
    pasted = background.copy()
    pasted.paste(source.crop((0, 0, 46, 46)), (0, 0))  # the source's top-left 72% on another patient's image
    crop, partial, plain = Screener(index).check([crop70, pasted, source])
    for result in (crop, partial):
        assert result.near_copy and Path(result.nn_key).name == "te_im_0015_0001.png", result
        assert result.region.startswith("region(")
    assert plain.region == "" and plain.nn_similarity > 0.999  # a whole-image match stays one
    assert not Screener(index, view_set="tuned").check([crop70])[0].near_copy


def test_index_without_region_tiles_screens_whole_images_only(index):
    from dataclasses import replace as copy_of

    whole = copy_of(index, regions=None)
    source = Image.open(FIXTURES / "images" / "images" / "te_im_0015_0001.png")
    crop70 = source.crop((12, 6, 57, 51)).resize((64, 64), Image.Resampling.BICUBIC)
    result = Screener(whole).check([crop70])[0]
    assert result.region == "" and Screener(whole).region_views == ()


def test_screen_report_shows_the_matched_region(index, tmp_path):
    import pyarrow.parquet as pq

    from medisyn_cli.screening.audit import screen_dataset

    source = Image.open(FIXTURES / "images" / "images" / "te_im_0015_0001.png")
    folder = tmp_path / "synthetic"
    folder.mkdir()
    source.crop((12, 6, 57, 51)).resize((64, 64), Image.Resampling.BICUBIC).save(folder / "crop.png")
    Image.open(FIXTURES / "screen" / "distinct" / "tr_normal2_im_0775_0001.png").save(folder / "other.png")
    summary = screen_dataset(folder, index.path, report_dir=tmp_path / "report", show_progress=False)
    rows = {
        Path(r["image"]).name: r for r in pq.read_table(tmp_path / "report" / "screen.parquet").to_pylist()
    }
    assert (
        summary.near_copies == 1
        and rows["crop.png"]["near_copy"]
        and rows["crop.png"]["region"].startswith("region(")
    )
    assert not rows["other.png"]["near_copy"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"matched region of the training image: {rows['crop.png']['region'][6:]}" in page


def test_grouped_tile_search_finds_the_best_view_and_tile_an_exhaustive_search_finds(index):
    from medisyn_cli.screening.screener import Screener, grouped_search

    screener = Screener(index)
    views = screener.region_views
    penalties = np.array([view.penalty for view in views], np.float32)
    images = [Image.open(p).convert("RGB") for p in sorted((FIXTURES / "images").rglob("*.png"))]
    images = [COPIES[name](im) for name in ("crop", "hflip", "jpeg") for im in images[:4]]
    queries = index.embedder.embed_views(images, views)
    search = grouped_search(index.regions, index.region_projection)
    search.pool = 8  # of 192 tiles: the projection has to choose
    sims, ids = search.search(queries, penalties)
    tiles = search.vectors
    exact = np.minimum(np.einsum("nvd,td->nvt", queries, tiles), 1.0) - penalties[None, :, None]
    for j in range(len(images)):
        best = np.unravel_index(np.argmax(exact[j]), exact[j].shape)
        assert ids[j][0] == best[1] and np.argmax(sims[j][:, 0]) == best[0]
        np.testing.assert_allclose(sims[j], exact[j][:, ids[j]], atol=1e-5)
        assert len(ids[j]) == 8 and np.all(np.diff(sims[j].max(axis=0)) <= 1e-7)
    banned = [{int(i[0])} for i in ids]
    _, without = search.search(queries, penalties, banned)
    assert all(i[0] not in b and len(i) == 8 for i, b in zip(without, banned))


def test_screening_in_chunks_embedded_by_a_thread_equals_one_chunk(index):
    from threadpoolctl import threadpool_info

    blas_before = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    originals = [Image.open(p).convert("RGB") for p in sorted((FIXTURES / "images").rglob("*.png"))]
    images = originals + [COPIES[name](im) for name in ("crop", "jpeg", "hflip") for im in originals[:4]]
    screener = Screener(index)
    whole = screener.check(images, chunk=len(images))
    pipelined = screener.check(
        images, chunk=5
    )  # 4 chunks: each embedded in a thread while the one before is searched
    same = lambda r: (r.nn_id, r.nn_key, r.near_copy, r.view, r.region)  # noqa: E731
    assert [same(r) for r in pipelined] == [same(r) for r in whole] and all(r.near_copy for r in whole)
    np.testing.assert_allclose(
        [r.nn_similarity for r in pipelined], [r.nn_similarity for r in whole], atol=1e-6
    )
    assert [
        (i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"
    ] == blas_before


def overlaid(image: Image.Image) -> Image.Image:
    """The benchmark's marker overlay: text, a cross and a box drawn in white."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    draw.text((6, 40), "L R 12", fill=(255, 255, 255))
    draw.line((40, 20, 52, 20), fill=(255, 255, 255))
    draw.line((46, 14, 46, 26), fill=(255, 255, 255))
    draw.rectangle((50, 2, 61, 9), outline=(255, 255, 255))
    return out


def test_partial_similarity_sees_the_copy_under_a_marker_overlay(index):
    source = Image.open(index.key([3])[0])
    screener = Screener(index, measure_partial=True)
    copy, other = screener.check([overlaid(source), Image.open(index.key([8])[0]).rotate(30)])
    assert copy.nn_id == 3 and copy.partial_similarity > max(copy.nn_similarity, 0.97)
    assert other.partial_similarity < 0.9
    assert Screener(index).check([overlaid(source)])[0].partial_similarity is None  # not measured by default


def test_partial_rule_flags_at_its_own_threshold_and_reports_the_partial_match(index):
    copy = overlaid(Image.open(index.key([3])[0]))
    measured = Screener(index, measure_partial=True).check([copy])[0]
    alone = {
        "threshold": 0.999,
        "verify_threshold": 10_000,
    }  # no copy has that many inliers: the partial rule alone
    below = Screener(index, partial_threshold=measured.partial_similarity + 0.001, **alone).check([copy])
    above = Screener(index, partial_threshold=measured.partial_similarity - 0.001, **alone).check([copy])
    assert not below[0].near_copy and above[0].near_copy and above[0].nn_id == 3 and above[0].region == ""


def test_screen_flags_a_partial_copy_at_the_index_partial_threshold_and_reports_it(index, tmp_path):
    import csv
    import json
    import shutil

    from medisyn_cli.screening.audit import screen_dataset

    calibrated = (
        tmp_path / "calibrated"
    )  # the fixture index is too small to calibrate: give it a partial threshold
    shutil.copytree(index.path, calibrated)
    meta = json.loads((calibrated / "index.json").read_text())
    meta["threshold"], meta["screening"]["calibration"]["partial_threshold"] = 0.99, 0.97
    (calibrated / "index.json").write_text(json.dumps(meta))
    folder = tmp_path / "synthetic"
    folder.mkdir()
    overlaid(Image.open(index.key([3])[0])).save(folder / "marked.png")
    Image.open(FIXTURES / "screen" / "distinct" / "tr_normal2_im_0775_0001.png").save(folder / "other.png")
    summary = screen_dataset(folder, calibrated, report_dir=tmp_path / "report", show_progress=False)
    with open(tmp_path / "report" / "screen.csv", newline="") as handle:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(handle)}
    marked = rows["marked.png"]
    assert summary.near_copies == 1 and marked["near_copy"] == "True" and int(marked["nn_id"]) == 3
    assert float(marked["nn_similarity"]) < 0.99 and float(marked["partial_similarity"]) >= 0.97
    assert rows["other.png"]["near_copy"] == "False" and float(rows["other.png"]["partial_similarity"]) < 0.97
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"half of the image matches: partial similarity {float(marked['partial_similarity']):.3f}" in page
