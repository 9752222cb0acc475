"""The learned copy descriptor (`--embedder learned`, issue #16): SSCD-style training on the index's own images,
saved in the index folder, loaded for screening; clear errors when its weights are missing or corrupt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.screening.learned import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Augmenter,
    LearnedConfig,
    LearnedEmbedder,
    load_embedder,
    sscd_loss,
    train,
    train_embedder,
)

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = LearnedConfig(batch=16, widths=(8, 16, 32, 32), dim=32, min_steps=1)


def fixture_images() -> list:
    """The 18 real 64 px fixture images (12 indexed in other tests, 6 distinct ones)."""
    paths = sorted((FIXTURES / "images" / "images").glob("*.png")) + sorted(
        (FIXTURES / "screen" / "distinct").glob("*.png")
    )
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy())
    return images


@pytest.fixture(scope="module")
def trained():
    """A tiny descriptor trained for 40 steps on the fixture images, and its training stats."""
    images = fixture_images()
    network, stats = train(images, SMALL, steps=40)
    return LearnedEmbedder(network, SMALL, stats), images


def test_training_reduces_the_loss_and_is_deterministic(trained):
    embedder, images = trained
    assert embedder.training["steps"] == 40 and embedder.training["images"] == len(images)
    assert embedder.training["loss_last"] < embedder.training["loss_first"] - 0.3, embedder.training
    again, _ = train(images, SMALL, steps=3)
    once_more, _ = train(images, SMALL, steps=3)
    for (name, a), (_, b) in zip(again.state_dict().items(), once_more.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name


def test_an_augmented_copy_scores_higher_than_a_different_image(trained):
    embedder, images = trained
    base = embedder.embed(images)
    assert base.shape == (len(images), SMALL.dim) and np.allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    for i in (0, 5, 13):
        w, h = images[i].size
        copy = ImageOps.mirror(
            images[i].crop((3, 2, w - 2, h - 4)).resize((w, h)).filter(ImageFilter.GaussianBlur(1))
        )
        views = embedder.embed_views([copy], embedder.default_views())[0]  # (16, dim)
        sims = embedder.similarity_from_distance((views @ base.T).max(axis=0))
        assert int(np.argmax(sims)) == i
        assert sims[i] > np.delete(sims, i).max() + 0.01


def test_views_are_exact_turns_flips_and_inversions(trained):
    embedder, images = trained
    turned = images[2].transpose(Image.Transpose.ROTATE_90)
    inverted = ImageOps.invert(images[2].convert("RGB"))
    views = embedder.default_views()
    assert len(views) == 16 and embedder.region_views() == ()
    base = embedder.embed([images[2]])[0]
    for query in (turned, inverted):
        sims = embedder.embed_views([query], views)[0] @ base
        assert sims.max() > 0.999


def test_the_loss_pulls_views_together_and_koleo_spreads_them():
    import torch

    z = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    paired = torch.cat([z, z])
    shuffled = torch.cat([z, z.roll(1, dims=0)])
    assert sscd_loss(paired, 0.1, 0.0)[0] < sscd_loss(shuffled, 0.1, 0.0)[0]
    collapsed = torch.nn.functional.normalize(torch.ones(16, 16) + 0.01 * torch.randn(16, 16), dim=1)
    assert sscd_loss(collapsed, 0.1, 1.0)[2] > sscd_loss(paired, 0.1, 1.0)[2]


def test_augmentations_are_seeded_and_finite():
    import torch

    batch = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    first = Augmenter(SMALL, torch.Generator().manual_seed(3))(batch)
    second = Augmenter(SMALL, torch.Generator().manual_seed(3))(batch)
    assert first.shape == (6, 1, SMALL.size, SMALL.size) and torch.isfinite(first).all()
    assert torch.equal(first, second)


def test_saved_embedder_round_trips_and_bad_files_are_one_line_errors(tmp_path):
    images = fixture_images()
    saved = train_embedder(images, tmp_path, SMALL, steps=2)
    assert (tmp_path / WEIGHTS_FILE).is_file() and json.loads((tmp_path / CONFIG_FILE).read_text())[
        "training"
    ]
    loaded = load_embedder(tmp_path)
    assert loaded.settings() == saved.settings()
    assert np.allclose(loaded.embed(images[:3]), saved.embed(images[:3]), atol=1e-6)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path, broken, ignore=shutil.ignore_patterns("broken"))
    (broken / WEIGHTS_FILE).write_bytes((broken / WEIGHTS_FILE).read_bytes()[:100])
    with pytest.raises(MedisynError, match="cannot load the learned embedder") as error:
        load_embedder(broken)
    assert "\n" not in str(error.value)
    (broken / WEIGHTS_FILE).unlink()
    with pytest.raises(MedisynError, match="learned.safetensors: missing"):
        load_embedder(broken)


@pytest.fixture
def learned_index(tmp_path, monkeypatch):
    """`medisyn index build --embedder learned` of the 12 fixture images (the tiny config, ~20 steps)."""
    from typer.testing import CliRunner

    from medisyn_cli.cli.main import app
    from medisyn_cli.screening import learned

    monkeypatch.setattr(learned, "TRAINING", SMALL)
    out = tmp_path / "idx"
    result = CliRunner().invoke(
        app,
        [
            "index",
            "build",
            str(FIXTURES / "images"),
            "--out",
            str(out),
            "--embedder",
            "learned",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_index_build_trains_saves_and_screen_loads_the_descriptor(learned_index, tmp_path):
    from typer.testing import CliRunner

    from medisyn_cli.cli.main import app
    from medisyn_cli.screening.index import load_index

    meta = json.loads((learned_index / "index.json").read_text())
    assert meta["embedder"]["spec"] == "learned" and meta["regions"] is None
    assert meta["learned"]["weights"] == WEIGHTS_FILE and meta["learned"]["training"]["steps"] >= 1
    assert meta["embedder"]["settings"]["weights_sha256"] == meta["learned"]["weights_sha256"]
    index = load_index(learned_index)
    assert index.embedder.name == "learned" and index.embedder.network is not None
    queries = tmp_path / "queries"
    queries.mkdir()
    source = sorted((FIXTURES / "images" / "images").glob("*.png"))[4]
    with Image.open(source) as image:
        ImageOps.mirror(image.convert("RGB")).save(queries / "copy.png")
    for path in sorted((FIXTURES / "screen" / "distinct").glob("*.png"))[:2]:
        shutil.copy(path, queries / path.name)
    result = CliRunner().invoke(
        app,
        [
            "screen",
            str(queries),
            "--index",
            str(learned_index),
            "--no-progress",
            "--out",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 0, result.output
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "report" / "screen.parquet").set_index("image")
    copy = rows.loc[[k for k in rows.index if k.endswith("copy.png")][0]]
    assert bool(copy["near_copy"]) and str(copy["nn_key"]).endswith(source.name)
    assert copy["nn_similarity"] > rows["nn_similarity"].drop(copy.name).max()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_index_with_missing_or_corrupt_weights_is_a_one_line_error(learned_index, tmp_path, damage):
    from typer.testing import CliRunner

    from medisyn_cli.cli.main import app

    weights = learned_index / WEIGHTS_FILE
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:64])
    result = CliRunner().invoke(
        app,
        [
            "screen",
            str(FIXTURES / "screen" / "distinct"),
            "--index",
            str(learned_index),
            "--no-progress",
            "--out",
            str(tmp_path / "report"),
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "learned" in result.output and "rebuild the index" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output


def test_learned_needs_an_index(tmp_path):
    from medisyn_cli.screening.embed import get_embedder

    with pytest.raises(MedisynError, match="index build --embedder learned"):
        get_embedder("learned")
    with pytest.raises(MedisynError, match="learned.json: missing"):
        get_embedder(f"learned:{tmp_path}")


def test_training_holds_out_the_images_the_threshold_is_calibrated_on():
    from medisyn_cli.screening.calibrate import CALIBRATION_MIN, CALIBRATION_SAMPLE
    from medisyn_cli.screening.learned import held_out

    rule = np.sort(
        np.random.default_rng(2).choice(1000, size=CALIBRATION_SAMPLE, replace=False)
    )  # index_write's
    assert np.array_equal(held_out(1000, CALIBRATION_SAMPLE, CALIBRATION_MIN), rule)
    assert np.array_equal(held_out(1000), rule) and held_out(CALIBRATION_MIN - 1).size == 0
