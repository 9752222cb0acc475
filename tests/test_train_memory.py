"""Training streams its data: pixels in a file read a batch at a time, latents encoded as batches need them and
cached on disk (keyed by the VAE and the pixels), so memory does not grow with the number of images."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medisyn_cli.pipeline.lora import data_fingerprint
from medisyn_cli.train.config import TrainConfig
from medisyn_cli.train.data import load_training_images
from medisyn_cli.train.latents import LatentCache, encode_batch, encode_latents
from medisyn_cli.train.loop import train

DATA = Path(__file__).parent / "fixtures" / "images"


def many_images(folder: Path, n: int) -> Path:
    """An ImageFolder of n images: the fixture images, each shifted and flipped so that all differ."""
    with open(DATA / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    (folder / "images").mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "caption"])
        for i in range(n):
            row = rows[i % len(rows)]
            image = np.asarray(Image.open(DATA / row["file_name"]).convert("RGB"))
            image = np.roll(image, i // len(rows), axis=1)
            Image.fromarray(image).save(folder / "images" / f"{i:04d}.png")
            writer.writerow([f"images/{i:04d}.png", row["label"], row["caption"]])
    return folder


def config(tmp_path: Path, data: Path, **options) -> TrainConfig:
    return TrainConfig(data=(str(data),), out=str(tmp_path / "out"), resolution=16, **options)


def random_images(folder: Path, n: int, size: int = 16) -> np.ndarray:
    """An ImageFolder of n random RGB images of size px (two captions); returns them as (n, 3, size, size)."""
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    (folder / "images").mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "caption"])
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / "images" / f"{i:03d}.png")
            writer.writerow([f"images/{i:03d}.png", f"c{i % 2}", f"caption {i % 2}"])
    return images.transpose(0, 3, 1, 2)


def test_images_stream_through_a_pixel_file_with_the_fingerprint_of_the_whole_tensor(tmp_path):
    whole = torch.from_numpy(random_images(tmp_path / "d", 10).copy())
    data = load_training_images(config(tmp_path, tmp_path / "d"), tmp_path / "work")
    assert len(data) == 10 and data.pixels.path.stat().st_size == 10 * 3 * 16 * 16
    assert torch.equal(data.pixels[[5, 0, 5]], whole[[5, 0, 5]])
    assert torch.equal(data.pixels[:3], whole[:3])
    assert data.fingerprint == data_fingerprint(whole, data.captions)  # the adapter card's value is unchanged
    with pytest.raises(IndexError):
        data.pixels[[10]]


def test_encode_batch_shrinks_with_the_resolution():
    assert [encode_batch(r) for r in (16, 64, 128, 256, 512, 1024)] == [64, 64, 16, 4, 1, 1]


@pytest.fixture
def vae(tiny_model):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_model, subfolder="vae").eval()


def test_latents_are_encoded_when_first_needed_in_fixed_chunks_and_read_back_on_resume(tmp_path, vae):
    data = load_training_images(config(tmp_path, many_images(tmp_path / "d", 150)), tmp_path / "work")
    cpu = torch.device("cpu")
    cache = LatentCache(vae, data.pixels, tmp_path / "work", cpu, data.pixel_sha256)
    first = cache[[140, 3]]
    assert cache.encoded == 64 + 22  # chunks 0 (images 0-63) and 2 (128-149), not chunk 1
    assert len(list(cache.folder.glob("chunk-*.npy"))) == 2
    direct = encode_latents(vae, data.pixels[[140, 3]], cpu)
    assert torch.allclose(first.float(), direct.float(), atol=1e-3)  # the same latents as encoded directly
    again = LatentCache(vae, data.pixels, tmp_path / "work", cpu, data.pixel_sha256)  # a resumed run
    assert torch.equal(again[[140, 3]], first) and again.encoded == 0
    other = tmp_path / "other"
    reverse = LatentCache(vae, data.pixels, other, cpu, data.pixel_sha256)
    assert torch.equal(reverse[[3]], first[1:]) and torch.equal(reverse[[140]], first[:1])  # order-free


def test_another_vae_gets_its_own_latents_and_the_old_ones_go(tmp_path, vae):
    work = tmp_path / "medisyn-run" / "_work"  # medisyn's scratch folder: what it may delete
    data = load_training_images(config(tmp_path, DATA), work / "data")
    cpu = torch.device("cpu")
    cache = LatentCache(vae, data.pixels, work, cpu, data.pixel_sha256)
    before = cache[[0]]
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(2)
    changed = LatentCache(vae, data.pixels, work, cpu, data.pixel_sha256)
    assert changed.folder != cache.folder and not cache.folder.exists()
    assert not torch.equal(changed[[0]], before) and changed.encoded == len(data)


def test_a_short_lora_run_on_many_images_encodes_only_what_its_batches_drew(tmp_path, tiny_model):
    data = many_images(tmp_path / "d", 300)
    out = tmp_path / "adapter"
    options = dict(
        base=str(tiny_model), lora=4, steps=2, batch_size=1, validate_every=0, mixed_precision="no"
    )
    result = train(
        TrainConfig(data=(str(data),), out=str(out), resolution=128, **options), show_progress=False
    )
    assert result.images == 300 and result.steps == 2
    chunks = list((out / "_work" / "latents").glob("*/chunk-*.npy"))
    assert 1 <= len(chunks) <= 2  # 16 images a chunk at 128 px: at most one chunk per drawn image
    assert not (out / "_work" / "data").exists()  # the pixel file is scratch, gone after the run
    assert json.loads((out / "adapter.json").read_text())["train_images"] == 300
