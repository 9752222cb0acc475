"""Screening: planted copies of real images are caught, distinct real images of the same classes are not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from medisyn_cli.errors import MedisynError
from medisyn_cli.index import build_index, load_index
from medisyn_cli.screen import ScreenResult, Screener, require_embedder

FIXTURES = Path(__file__).parent / "fixtures"
SOURCES = ["platelet_00004_12.png", "white_blood_cell_00001_00.png", "te_im_0015_0001.png", "te_person15_virus_46.png"]


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
    return Image.fromarray(np.pad(array, pad, mode="edge")[3 - dy:3 - dy + 64, 3 - dx:3 - dx + 64])


COPIES = {
    "resize_down": lambda im: im.resize((40, 40), Image.Resampling.LANCZOS),
    "resize_up": lambda im: im.resize((256, 256), Image.Resampling.BICUBIC),
    "jpeg": jpeg,
    "noise": noisy,
    "brightness_contrast": lambda im: ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.2)).enhance(0.8),
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
        assert index.key([result.nn_id]) == [result.nn_key] and result.nn_label == index.label([result.nn_id])[0]


def test_independently_resized_copy_from_the_dataset_is_found(index):
    result = Screener(index).check([Image.open(FIXTURES / "screen" / "resized" / "te_person11_virus_38.png")])[0]
    assert result.near_copy and Path(result.nn_key).name == "te_person11_virus_38.png"


def test_distinct_real_images_of_the_same_classes_are_not_near_copies(index):
    paths = sorted((FIXTURES / "screen" / "distinct").glob("*.png"))
    results = Screener(index).check([Image.open(p) for p in paths])
    assert len(results) == 6
    assert not any(r.near_copy for r in results), [(r.nn_key, r.nn_similarity) for r in results]
    assert max(r.nn_similarity for r in results) < index.threshold - 0.1
    assert all(r.nn_similarity < 0.97 for r in Screener(index).check([Image.new("L", (64, 64), 90)]))


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
