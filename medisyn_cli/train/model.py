"""The model's parts: a base pipeline's or fresh ones, what trains, seeding, and the pipeline they make."""

from __future__ import annotations

import os
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.pipeline.load import load_pipeline, make_scheduler
from medisyn_cli.pipeline.lora import add_lora
from medisyn_cli.pipeline.tokenizer import build_corpus_tokenizer
from medisyn_cli.train.config import CONFIGS, TrainConfig


def build_components(config: TrainConfig, captions: list[str], work: Path) -> dict:
    """Load a base pipeline's parts, or build fresh ones from a named small config."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if config.base:
        return _base_components(config)
    if config.config not in CONFIGS:
        raise MedisynError(f"--config: unknown config '{config.config}' (choose from {', '.join(CONFIGS)})")
    spec = CONFIGS[config.config]

    tokenizer = build_corpus_tokenizer(sorted(set(captions)) + [""], work / "tokenizer")
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **spec["text"],
    )
    factor = 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
    return {
        "vae": AutoencoderKL(sample_size=config.resolution, **spec["vae"]),
        "unet": UNet2DConditionModel(sample_size=config.resolution // factor, **spec["unet"]),
        "text_encoder": CLIPTextModel(text),
        "tokenizer": tokenizer,
        "noise_scheduler": DDPMScheduler(**spec["noise"]),
        "train_vae": True,
        "train_text_encoder": config.train_text_encoder is not False,
    }


def _base_components(config: TrainConfig) -> dict:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    pipe = load_pipeline(config.base, torch.device("cpu"), torch.float32, scheduler=None)
    if not isinstance(getattr(pipe, "unet", None), UNet2DConditionModel) or getattr(
        pipe, "text_encoder_2", None
    ):
        raise MedisynError(
            f"--base {config.base}: only Stable-Diffusion-style pipelines (one CLIP text encoder "
            f"and a UNet2DConditionModel) can be fine-tuned"
        )
    return {
        "vae": pipe.vae,
        "unet": pipe.unet,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "noise_scheduler": DDPMScheduler.from_config(pipe.scheduler.config),
        "train_vae": False,
        "train_text_encoder": bool(config.train_text_encoder),
    }


def trainable_parameters(parts, config: TrainConfig) -> list:
    """The parameters the optimiser updates: the whole UNet (and text encoder when trained), or only LoRA layers."""
    if config.lora:
        return add_lora(parts, config)
    parts["text_encoder"].requires_grad_(parts["train_text_encoder"])
    return list(parts["unet"].parameters()) + (
        list(parts["text_encoder"].parameters()) if parts["train_text_encoder"] else []
    )


def checkpoint_activations(parts) -> None:
    """Gradient checkpointing: the UNet (and the text encoder when it trains) recompute their activations in the
    backward pass instead of holding them."""
    parts["unet"].enable_gradient_checkpointing()
    if parts["train_text_encoder"]:
        encoder = parts["text_encoder"]
        enable = (
            getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
        )
        # non-reentrant: a frozen input (the token embeddings of LoRA runs) still passes gradients on
        enable({"use_reentrant": False})


def seed_run(seed: int, deterministic: bool = False) -> None:
    """Seed every generator a run draws from without its own: fresh weights, the LoRA layers' initial values,
    dropout, the autoencoder's samples (python, numpy, torch and CUDA); `deterministic`: CUDA's algorithms too."""
    import torch
    from accelerate.utils import set_seed

    set_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def reset_accelerate() -> None:
    """Forget a previous run's accelerate state, so one process can train twice with other precisions."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and hasattr(AcceleratorState, "_reset_state"):
        AcceleratorState._reset_state(reset_partial_state=True)


def build_pipeline(parts, scheduler_name: str = "dpm++"):
    """A StableDiffusionPipeline from trained parts, without safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=unwrap(parts["text_encoder"]),
        tokenizer=parts["tokenizer"],
        unet=unwrap(parts["unet"]),
        scheduler=make_scheduler(scheduler_name, parts["noise_scheduler"].config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def unwrap(model):
    """The module inside a distributed/compiled wrapper, or the module itself."""
    return getattr(model, "module", model)
