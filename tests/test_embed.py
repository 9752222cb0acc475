"""Embedders: normalised, deterministic vectors; every image mode; model loading from tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import to_8bit, to_grey
from medisyn_cli.screening.embed import PixelEmbedder, View, apply_view, get_embedder

IMAGES = sorted((Path(__file__).parent / "fixtures" / "images" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def real_images() -> list:
    """The 12 real 64x64 fixture images (BCCD colour crops and Kermany chest x-rays)."""
    return [Image.open(p) for p in IMAGES]


def test_pixel_vectors_are_unit_float32_and_deterministic(real_images):
    embedder = get_embedder("pixel")
    first, again = embedder.embed(real_images), get_embedder("pixel").embed(real_images)
    assert first.shape == (12, embedder.dim) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, again)
    similarities = first @ first.T
    assert np.all(similarities[~np.eye(12, dtype=bool)] < embedder.default_threshold)  # distinct images


def test_pixel_similarity_is_brightness_and_contrast_invariant(real_images):
    embedder = get_embedder("pixel")
    grey = np.asarray(real_images[6].convert("L"), dtype=np.float32)
    brighter = Image.fromarray(np.clip(grey * 0.7 + 40, 0, 255).astype(np.uint8))
    assert float(embedder.embed([real_images[6]])[0] @ embedder.embed([brighter])[0]) > 0.995


def test_flat_image_embeds_to_zero_vector():
    vector = get_embedder("pixel").embed([Image.new("L", (64, 64), 37)])[0]
    assert not vector.any()


def test_phash_codes_are_packed_bits_and_deterministic(real_images):
    embedder = get_embedder("phash")
    codes = embedder.embed(real_images)
    assert embedder.binary and embedder.dim == 256
    assert codes.shape == (12, 32) and codes.dtype == np.uint8
    assert np.array_equal(codes, embedder.embed(real_images))
    assert len({c.tobytes() for c in codes}) == 12
    assert embedder.similarity_from_distance(np.array([0, 64, 256])).tolist() == [1.0, 0.75, 0.0]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_grey_is_scaled_not_clipped(real_images, mode):
    eight = real_images[6].convert("L")  # a chest x-ray
    values = (
        np.asarray(eight, dtype=np.float64) * 200 + 1000
    )  # 1000 .. 52000: clipping to 255 would flatten it
    if mode == "I;16B":
        deep = Image.frombytes("I;16B", eight.size, values.astype(">u2").tobytes())
    elif mode == "I;16":
        deep = Image.fromarray(values.astype(np.uint16))
    else:
        deep = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode=mode)
    assert deep.mode == mode
    assert np.allclose(to_grey(deep), values)
    assert np.array_equal(np.asarray(to_8bit(deep)), np.round((values - values.min()) * 255 / np.ptp(values)))
    for spec in ("pixel", "phash"):
        embedder = get_embedder(spec)
        a, b = embedder.embed([eight]), embedder.embed([deep])
        if spec == "pixel":
            assert float(a[0] @ b[0]) > 0.9999
        else:
            assert embedder.similarity_from_distance(np.unpackbits(a ^ b).sum())[()] > 0.95


def test_colour_modes_agree(real_images):
    rgb = real_images[0].convert("RGB")
    variants = [rgb.convert("RGBA"), rgb.convert("P"), rgb.convert("L"), rgb.convert("CMYK")]
    embedder = get_embedder("pixel")
    base = embedder.embed([rgb])[0]
    for image in variants:
        assert float(base @ embedder.embed([image])[0]) > 0.99, image.mode
    transparent = rgb.convert("RGBA")
    transparent.putalpha(0)
    assert not embedder.embed([transparent]).any()  # fully transparent = black, no pattern


def test_views_undo_flips_shifts_and_crops(real_images):
    embedder = PixelEmbedder()
    source = real_images[7]
    base = embedder.embed([source])[0]
    shifted = Image.fromarray(np.roll(np.asarray(source), 2, axis=1))
    cropped = source.crop((3, 2, 61, 60)).resize((64, 64), Image.Resampling.BICUBIC)
    for copy in (source.transpose(Image.Transpose.FLIP_LEFT_RIGHT), shifted, cropped):
        views = embedder.default_views()
        plain = float(embedder.embed([copy])[0] @ base)
        best = float((embedder.embed_views([copy], views)[0] @ base).max())
        assert best > 0.97 > plain


def test_generic_views_flip_and_reframe_the_query(real_images):
    image = real_images[0]
    assert np.array_equal(np.asarray(apply_view(image, View("h"))), np.asarray(image)[:, ::-1])
    shifted = apply_view(image, View("", (0.125, 0.0, 1.125, 1.0)))  # frame 8 px to the right, edge-filled
    assert shifted.size == image.size
    assert np.array_equal(np.asarray(shifted)[:, :56], np.asarray(image)[:, 8:])
    assert View("v").name == "vflip" and View().name == "identity"


def test_unknown_embedder_lists_valid_specs():
    with pytest.raises(MedisynError, match="valid: pixel, phash, clip:<model>, hf:<model>"):
        get_embedder("resnet")
    with pytest.raises(MedisynError, match="unknown embedder"):
        get_embedder("clip:")


def build_tiny_open_clip(folder: Path) -> Path:
    """A tiny random open_clip model saved the way open_clip's hub folders are (config json + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    )
    save_file(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_model.safetensors")
    return folder


def build_tiny_dinov2(folder: Path) -> Path:
    """A tiny random DINOv2 encoder with its image processor, saved like a hub download."""
    import torch
    from transformers import Dinov2Config, Dinov2Model, ViTImageProcessor

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    Dinov2Model(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_embedder_loads_a_local_open_clip_folder(tmp_path, real_images):
    folder = build_tiny_open_clip(tmp_path / "tiny-clip")
    embedder = get_embedder(f"clip:{folder}")
    vectors = embedder.embed(real_images[:4])
    assert embedder.name == f"clip:{folder}" and embedder.dim == 16 and not embedder.binary
    assert vectors.shape == (4, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, get_embedder(f"clip:{folder}").embed(real_images[:4]), atol=1e-6)
    assert embedder.settings()["preprocess"]["size"] == [32, 32]


def test_hf_embedder_loads_a_local_transformers_folder(tmp_path, real_images):
    folder = build_tiny_dinov2(tmp_path / "tiny-dinov2")
    embedder = get_embedder(f"hf:{folder}")
    deep = Image.fromarray(
        np.asarray(real_images[6], dtype=np.uint16) * 200
    )  # 16-bit grey, rescaled for the model
    vectors = embedder.embed(real_images[:3] + [deep])
    assert embedder.dim == 16 and embedder.settings()["architecture"] == "Dinov2Model"
    assert vectors.shape == (4, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(
        vectors, get_embedder(f"hf:{folder}").embed(real_images[:3] + [to_8bit(deep)]), atol=1e-5
    )
    mean = get_embedder(f"hf:{folder}#mean")
    assert mean.settings()["pool"] == "mean" and not np.allclose(mean.embed(real_images[:1]), vectors[:1])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("clip:hf-hub:medisyn-test/not-a-model", "huggingface-cli download medisyn-test/not-a-model"),
        ("clip:ViT-B-32", "give weights"),
        ("clip:NotAnArch/some-tag", "unknown open_clip architecture"),
        ("hf:medisyn-test/not-a-model", "huggingface-cli download medisyn-test/not-a-model"),
        ("hf:medisyn-test/not-a-model#max", "unknown pooling"),
    ],
)
def test_unreachable_or_bad_models_give_one_clear_error(spec, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MedisynError, match=message) as info:
        get_embedder(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("threshold", [0, -0.2, 1.01, float("nan"), "0.9", True, None])
def test_threshold_outside_the_similarity_range_is_rejected(threshold):
    with pytest.raises(MedisynError, match="threshold"):
        get_embedder("pixel").valid_threshold(threshold)


def test_pixel_vectors_do_not_depend_on_the_blas_thread_count(real_images):
    from threadpoolctl import threadpool_limits

    embedder = get_embedder("pixel")
    views = embedder.default_views()
    with threadpool_limits(4, user_api="blas"):  # multi-threaded OpenBLAS rounds differently from one thread
        many = embedder.embed_views(real_images[:4], views)
    with threadpool_limits(1, user_api="blas"):
        one = embedder.embed_views(real_images[:4], views)
    assert np.array_equal(many, one)


def test_views_sharing_resamplings_embed_as_each_view_alone(real_images):
    embedder = get_embedder("pixel")
    views = embedder.default_views() + embedder.region_views()  # grids: many views share rows or columns
    together = embedder.embed_views(real_images[:3], views)
    alone = np.stack([embedder.embed_views(real_images[:3], (view,))[:, 0] for view in views[::7]], axis=1)
    np.testing.assert_allclose(together[:, ::7], alone, atol=2e-6)


def test_blas_limit_shared_by_threads_is_restored_by_the_last_and_spares_faiss():
    import threading

    import faiss

    from medisyn_cli.screening.embed import _threadpools, blas_threads

    def blas() -> list[int]:  # numpy's BLAS (process-wide); faiss's OpenMP-threaded one is left alone
        return [lib["num_threads"] for lib in _threadpools().info()]

    before, threads, seen = blas(), faiss.omp_get_max_threads(), []
    entered, release = threading.Event(), threading.Event()

    def worker():
        with blas_threads():
            entered.set()
            release.wait(10)
        seen.append(blas())  # left before the main thread: the limit holds

    with blas_threads():  # the main thread enters first and leaves last, as Screener.check does
        thread = threading.Thread(target=worker)
        thread.start()
        entered.wait(10)
        seen.append(blas())
        assert faiss.omp_get_max_threads() == threads  # faiss's searches in this thread keep their threads
        release.set()
        thread.join()
    assert seen == [[1] * len(before)] * 2 and blas() == before


def _noisy(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    array = np.asarray(image, np.float64)
    noise = np.random.default_rng(seed).normal(0.0, sigma, array.shape)
    return Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("sigma", [6.0, 12.0])
def test_noise_factor_gives_a_noisy_copy_back_most_of_the_similarity_its_noise_took(real_images, sigma):
    embedder = get_embedder("pixel")
    noisy = [_noisy(image, sigma) for image in real_images]
    similarity = (embedder.embed(noisy) * embedder.embed(real_images)).sum(axis=1)
    factors = embedder.noise_factors(noisy)
    assert np.all(factors > 1.0) and np.all(factors <= 1 / np.sqrt(0.9) + 1e-6)
    lost, left = 1.0 - similarity, np.abs(1.0 - similarity * factors)
    assert np.all(left < 0.5 * lost)  # measured: 75-90% of the loss given back
    assert np.all(similarity * factors < 1.002)


def test_noise_factor_is_one_on_clean_images_and_capped_on_pattern_free_noise(real_images):
    embedder = get_embedder("pixel")
    assert np.all(np.abs(embedder.noise_factors(real_images) - 1.0) < 1e-3)
    flat_noise = _noisy(Image.new("L", (64, 64), 120), 10.0)
    assert embedder.noise_factors([flat_noise])[0] == pytest.approx(1 / np.sqrt(0.9), abs=1e-5)
    assert embedder.noise_factors([Image.new("L", (64, 64), 37)])[0] == 1.0  # no pattern: nothing to scale


@pytest.mark.parametrize("shape", [(64, 64), (80, 52)])
def test_noise_energy_is_what_white_noise_puts_in_the_band(shape):
    embedder = get_embedder("pixel")
    rng = np.random.default_rng(0)
    operator = embedder._operator(shape, (View(),))
    energies = [
        float(np.sum(embedder._raw_band(rng.normal(size=shape).astype(np.float32), operator) ** 2))
        for _ in range(300)
    ]
    assert embedder._noise_energy(shape) == pytest.approx(np.mean(energies), rel=0.03)


def test_other_embedders_do_not_scale_similarities(real_images):
    assert np.array_equal(get_embedder("phash").noise_factors(real_images[:3]), np.ones(3, np.float32))


@pytest.mark.parametrize("spec", ["pixel", "phash"])
def test_embed_queries_is_embed_views_and_noise_factors_in_one_pass(real_images, spec):
    embedder = get_embedder(spec)
    queries = real_images[:4] + [_noisy(image, 12.0) for image in real_images[:4]]
    views = embedder.default_views("general")
    vectors, factors = embedder.embed_queries(queries, views)
    assert np.array_equal(vectors, embedder.embed_views(queries, views))
    assert np.array_equal(factors, embedder.noise_factors(queries))
