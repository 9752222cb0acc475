"""The bundled model: ships inside the package, loads offline, makes real images of each class."""

import json

import numpy as np
import pytest
import torch

from medisyn_cli.pipeline.load import BUNDLED_MODEL, load_pipeline

REPO_PROMPTS = BUNDLED_MODEL.parents[2] / "prompts"


def test_bundled_model_is_small_and_complete():
    files = [p for p in BUNDLED_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    for part in (
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
        "README.md",
        "medisyn.json",
    ):
        assert (BUNDLED_MODEL / part).exists(), part


def test_bundled_model_loads_offline_with_plain_diffusers(monkeypatch):
    from diffusers import DiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = DiffusionPipeline.from_pretrained(BUNDLED_MODEL)  # as the README says: no dtype argument needed
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    image = pipe(
        "dermoscopy image of melanoma",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_bundled_model_generates_distinct_non_black_images_of_the_right_size():
    from medisyn_cli.dataset.manifest import load_manifest
    from medisyn_cli.generate.plan import iter_jobs, quotas
    from medisyn_cli.generate.sampler import Renderer, Settings, generate_batch

    pipe = load_pipeline(None, torch.device("cpu"), torch.float32)
    recommended = json.loads((BUNDLED_MODEL / "medisyn.json").read_text())["recommended"]
    manifest = load_manifest(REPO_PROMPTS / "mini_chest_xray.csv")
    jobs = list(iter_jobs(manifest, quotas(manifest.weights(), 3), seed=0))
    settings = Settings(steps=10, guidance=recommended["guidance"], height=64, width=64, autocast_bf16=True)
    images = generate_batch(Renderer(pipe, settings), jobs)
    arrays = [np.asarray(g.image, dtype=np.float32) for g in images]
    assert all(a.shape == (64, 64) for a in arrays)
    assert all(a.std() > 10 and a.mean() > 10 for a in arrays)
    assert np.abs(arrays[0] - arrays[1]).mean() > 5


@pytest.mark.parametrize("manifest", sorted(REPO_PROMPTS.glob("mini_*.csv")), ids=lambda p: p.name)
def test_mini_manifests_use_words_the_bundled_tokenizer_knows(manifest):
    from transformers import CLIPTokenizer

    from medisyn_cli.dataset.manifest import load_manifest

    tokenizer = CLIPTokenizer.from_pretrained(BUNDLED_MODEL / "tokenizer")
    for row in load_manifest(manifest).rows:
        words = row.prompt.lower().replace("-", " - ").split()
        assert len(tokenizer.tokenize(row.prompt)) <= len(words) * 3, row.prompt
