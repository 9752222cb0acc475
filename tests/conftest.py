"""Fixtures: a tiny diffusers pipeline saved to disk, small manifests, real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def build_tiny_pipeline(folder: Path, captions: list[str]) -> Path:
    """A Stable-Diffusion-layout pipeline small enough to run in a test, saved like a user's model."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from medisyn_cli.pipeline.tokenizer import build_corpus_tokenizer

    torch.manual_seed(0)
    tokenizer = build_corpus_tokenizer(captions + [""], folder.parent / f"{folder.name}-tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Folder of a tiny random pipeline (16x16 images), built once per session."""
    captions = [
        "dermoscopy image of melanoma",
        "dermoscopy image of benign melanocytic nevus",
        "frontal chest x-ray",
    ]
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny", captions)


@pytest.fixture
def manifest(tmp_path) -> Path:
    """A three-class manifest with variants, a placeholder column and a grey class."""
    path = tmp_path / "derm.csv"
    path.write_text(
        "label,finding,prompt,negative_prompt,weight,mode\n"
        "melanoma,atypical network,dermoscopy image of {label} with {finding},blurry,1,RGB\n"
        "melanoma,blue-white veil,dermoscopy of {label_text} showing {finding},,1,RGB\n"
        "nevus,regular network,dermoscopy image of benign melanocytic nevus,,1,RGB\n"
        "x ray/normal,,frontal chest x-ray,,1,L\n",
        encoding="utf-8",
    )
    return path
