"""Stable-Diffusion-sized pipelines with random weights, built offline: the real shapes, no download.

    python benchmarks/real_size_models.py sd15 sd2 sdxl     # build (or find) them, print folder, size, seconds

Three pipelines with the layer sizes of the public checkpoints, configs written here:
- sd15: SD 1.5 (860M-parameter UNet, CLIP ViT-L/14 text encoder, 512 px, epsilon prediction);
- sd2: SD 2.x 768-v (865M UNet with linear projections, OpenCLIP-ViT-H-sized text encoder of 23 layers,
  v-prediction, 768 px);
- sdxl: SDXL base (2.6B UNet, CLIP ViT-L/14 + OpenCLIP-ViT-bigG text encoders, 1024 px).
Tokenizers carry CLIP's full BPE vocabulary (49,408 tokens) from the open_clip wheel. Weights are random
(seeded), saved once as fp16 safetensors (half the disk of fp32; diffusers casts them to the run's dtype on load)
under $MEDISYN_REAL_SIZE_CACHE, else <tmp>/medisyn-real-size. A folder is complete when its `built.json` exists
(written last). Random weights prove shapes, dtypes, memory and code paths, not image quality; the VAE decoder's
last layer is scaled so that decoded images are grey with visible noise, never black or NaN.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

from medisyn_cli.pipeline.tokenizer import clip_bpe_merges, write_tokenizer  # noqa: E402

VERSION = 1  # bump when a config below changes: cached folders of another version are rebuilt
SIZES = {"sd15": 512, "sd2": 768, "sdxl": 1024}
SCALED_LINEAR = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def cache_root() -> Path:
    """Where built pipelines are kept: $MEDISYN_REAL_SIZE_CACHE, else a folder in the temp directory."""
    return Path(
        os.environ.get("MEDISYN_REAL_SIZE_CACHE") or Path(tempfile.gettempdir()) / "medisyn-real-size"
    )


def real_size_model(name: str, root: Path | None = None) -> Path:
    """The folder of pipeline `name` (sd15, sd2, sdxl), built on first use."""
    if name not in SIZES:
        raise ValueError(f"unknown real-size model '{name}' (choose from {', '.join(SIZES)})")
    folder = (root or cache_root()) / f"{name}-v{VERSION}"
    if _built(folder):
        return folder
    staging = folder.with_name(folder.name + f".building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    BUILDERS[name](staging)
    (staging / "built.json").write_text(
        json.dumps(
            {"model": name, "version": VERSION, "size": SIZES[name], "seconds": time.perf_counter() - start}
        )
    )
    try:
        staging.rename(folder)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _built(folder: Path) -> bool:
    return (folder / "built.json").is_file()


def clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    """CLIP's tokenizer with the full vocabulary (SD 1.x pads with <|endoftext|>, OpenCLIP models with '!')."""
    from transformers import CLIPTokenizer

    full = folder.with_name(folder.name + "-full")
    write_tokenizer(full, clip_bpe_merges())
    tokenizer = CLIPTokenizer.from_pretrained(full, pad_token=pad_token)
    shutil.rmtree(full)
    return tokenizer


def text_encoder(hidden: int, layers: int, heads: int, act: str, projection: int, with_projection=False):
    """A CLIP text transformer of the given width and depth (77 positions, CLIP's vocabulary)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def vae(size: int, scaling_factor: float = 0.18215, force_upcast: bool = True):
    """The SD autoencoder (83M parameters, 8x down-sampling, 4 latent channels)."""
    import torch
    from diffusers import AutoencoderKL

    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=size,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )
    with (
        torch.no_grad()
    ):  # default init gives outputs of std ~0.35 in [-1, 1]; keep a visible but bounded noise
        model.decoder.conv_out.weight.mul_(0.5)
    return model


def sd15_unet():
    """SD 1.5's UNet: 860M parameters, cross-attention on 768-d CLIP ViT-L/14 states."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)


def sd2_unet():
    """SD 2.x's UNet: 865M parameters, linear projections, heads of 64 channels, 1024-d text states."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=96,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        upcast_attention=True,
    )


def sdxl_unet():
    """SDXL base's UNet: 2.6B parameters, three levels with 1/2/10 transformer layers, micro-conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def build_sd15(folder: Path) -> None:
    """SD 1.5: PNDM scheduler config as published, epsilon prediction."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    _seed()
    pipe = StableDiffusionPipeline(
        vae=half(vae(512)),
        text_encoder=half(text_encoder(768, 12, 12, "quick_gelu", 768)),
        tokenizer=clip_tokenizer(folder / "tok"),
        unet=half(sd15_unet()),
        scheduler=PNDMScheduler(**SCALED_LINEAR, skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save(pipe, folder)


def build_sd2(folder: Path) -> None:
    """SD 2.x 768-v: DDIM with v-prediction."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    _seed()
    pipe = StableDiffusionPipeline(
        vae=half(vae(768)),
        text_encoder=half(text_encoder(1024, 23, 16, "gelu", 512)),
        tokenizer=clip_tokenizer(folder / "tok", pad_token="!"),
        unet=half(sd2_unet()),
        scheduler=DDIMScheduler(
            **SCALED_LINEAR, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save(pipe, folder)


def build_sdxl(folder: Path) -> None:
    """SDXL base: Euler, two text encoders (the second with a projection for the pooled embedding)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    _seed()
    pipe = StableDiffusionXLPipeline(
        vae=half(vae(1024, scaling_factor=0.13025)),
        text_encoder=half(text_encoder(768, 12, 12, "quick_gelu", 768)),
        text_encoder_2=half(text_encoder(1280, 32, 20, "gelu", 1280, with_projection=True)),
        tokenizer=clip_tokenizer(folder / "tok"),
        tokenizer_2=clip_tokenizer(folder / "tok2", pad_token="!"),
        unet=half(sdxl_unet()),
        scheduler=EulerDiscreteScheduler(**SCALED_LINEAR, steps_offset=1, timestep_spacing="leading"),
    )
    _save(pipe, folder)


BUILDERS = {"sd15": build_sd15, "sd2": build_sd2, "sdxl": build_sdxl}


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def _save(pipe, folder: Path) -> None:
    pipe.save_pretrained(folder, safe_serialization=True)


def half(module):
    """The module in fp16 right after it is built, so that the fp32 copies of several never coexist."""
    import torch

    return module.to(torch.float16)


def training_images(
    folder: Path, size: int, per_class: int = 4, dataset: str = "isic2017_dermoscopy", offset: int = 0
) -> Path:
    """Label folders of real images from ../shared/data/<dataset>/128, upsampled to `size` px (LANCZOS)."""
    import csv

    from PIL import Image

    source = DATA / dataset / "128"
    taken: dict[str, int] = {}
    for row in csv.DictReader(open(source / "metadata.csv")):
        label = row["label"]
        taken[label] = taken.get(label, 0) + 1
        if not offset < taken[label] <= offset + per_class:
            continue
        image = Image.open(source / row["file_name"]).convert("RGB")
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.resize((size, size), Image.Resampling.LANCZOS).save(
            folder / label / Path(row["file_name"]).name
        )
    return folder


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under a folder."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def parameters(folder: Path) -> dict[str, int]:
    """Parameter count of each weight file's component, read from the safetensors headers."""
    from safetensors import safe_open

    counts = {}
    for weights in sorted(folder.glob("*/*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            total = 0
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                size = 1
                for dim in shape:
                    size *= dim
                total += size
        counts[weights.parent.name] = total
    return counts


def main() -> None:
    for name in sys.argv[1:] or list(SIZES):
        start = time.perf_counter()
        folder = real_size_model(name)
        print(
            json.dumps(
                {
                    "model": name,
                    "folder": str(folder),
                    "gigabytes": round(folder_bytes(folder) / 1e9, 2),
                    "parameters_millions": {k: round(v / 1e6, 1) for k, v in parameters(folder).items()},
                    "seconds": round(time.perf_counter() - start, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
