"""Training options, the small named architectures, and the checks that need no data or model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.pipeline.lora import check_train_options

CAPTION_CACHE_BYTES = 256 * 2**20  # the frozen text encoder's outputs of all distinct captions, at most


MINI = {
    "vae": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
    ),
    "unet": dict(
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 192),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=256,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    "text": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
    ),
    "noise": dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    ),
}


TINY = {
    "vae": dict(
        MINI["vae"],
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
    ),
    "unet": dict(
        MINI["unet"],
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    "text": dict(MINI["text"], hidden_size=32, intermediate_size=64),
    "noise": MINI["noise"],
}


CONFIGS = {"mini": MINI, "tiny": TINY}
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as training.json beside the model."""

    data: tuple[str, ...] = field(
        metadata={
            "help": "ImageFolder(s) with metadata.csv captions, Parquet, label folders, or a folder holding "
            "several such datasets."
        }
    )
    out: str = field(metadata={"help": "Folder for the trained diffusers pipeline."})
    base: str | None = field(
        default=None, metadata={"help": "Pipeline to fine-tune: folder, file or hub id."}
    )
    config: str = field(default="mini", metadata={"help": "Named architecture when training from scratch."})
    resolution: int = field(
        default=64, metadata={"help": "Side in px the images are trained at (centre square, resized)."}
    )
    steps: int = field(default=2000, metadata={"help": "Diffusion (UNet) optimisation steps."})
    vae_steps: int = field(default=600, metadata={"help": "Autoencoder steps (from scratch only)."})
    batch_size: int = field(default=64, metadata={"help": "Images per training batch."})
    lr: float = field(default=5e-4, metadata={"help": "Learning rate (100 warm-up steps)."})
    optimizer: str = field(
        default="adamw",
        metadata={
            "help": "adamw; adamw8bit (bitsandbytes' 8-bit state: pip install bitsandbytes); adafactor (factored "
            "second moments, no first: the least memory, for full fine-tuning on small machines)."
        },
    )
    vae_lr: float = 1e-3
    mixed_precision: str = field(default="auto", metadata={"help": "auto, no, fp16 or bf16."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute activations in the backward pass instead of holding them (the UNet, and the text "
            "encoder when it trains): less memory, slower steps, the same weights."
        },
    )
    grad_accum: int = field(default=1, metadata={"help": "Batches accumulated per optimiser step."})
    ema: bool = field(
        default=True, metadata={"help": "Save an exponential moving average of the trained weights."}
    )
    ema_decay: float = 0.999
    checkpoint_every: int = field(
        default=250, metadata={"help": "Steps between checkpoints (what --resume continues from)."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in --out."})
    caption_dropout: float = field(
        default=0.1,
        metadata={"help": "Share of captions left empty in training (for classifier-free guidance)."},
    )
    balance: float = field(
        default=0.0,
        metadata={
            "help": "Sampling by caption: 0 uniform over images, 1 every caption (class) equally often; "
            "between: 1/count**balance."
        },
    )
    caption_template: str = field(
        default="{label}",
        metadata={"help": "Caption for data without captions, e.g. 'chest x-ray, {label}'."},
    )
    validation_prompts: str | None = field(default=None, metadata={"help": "Text file or manifest."})
    validate_every: int = field(
        default=500, metadata={"help": "Steps between sample grids of the validation prompts (0: none)."}
    )
    train_text_encoder: bool | None = field(
        default=None, metadata={"help": "Default: trained from scratch, frozen when fine-tuning."}
    )
    holdout: float = field(default=0.0, metadata={"help": "Fraction of images held out (by file-name hash)."})
    min_snr_gamma: float = 5.0
    save_dtype: str = field(default="fp32", metadata={"help": "fp32 or fp16 weights."})
    seed: int = field(default=0, metadata={"help": "Seed of the batch order, caption dropout and noise."})
    min_images: int = 4
    lora: int | None = field(
        default=None,
        metadata={
            "help": "Train a LoRA adapter of this rank on --base instead of the whole UNet; --out gets "
            "pytorch_lora_weights.safetensors."
        },
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={  # the rank: scale 1
            "help": "LoRA alpha (default: the rank)."
        },
    )
    lora_targets: str = field(default="unet", metadata={"help": "unet or unet+text."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout of the LoRA layers in training."})
    deterministic: bool = field(
        default=False,
        metadata={
            "help": "Only deterministic CUDA algorithms (torch.use_deterministic_algorithms), so a GPU run with "
            "the same seed and data gives the same weights; slower. CPU runs are reproducible without it."
        },
    )


@dataclass
class TrainResult:
    """What a run produced: where the model is and how training went."""

    model_dir: Path
    steps: int
    final_loss: float
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    vae_psnr: float | None = None


def check_options(config: TrainConfig) -> None:
    """Every option a run can refuse before it reads data or loads a model: one line naming the option."""
    if not config.base and config.config not in CONFIGS:
        raise MedisynError(f"--config: unknown config '{config.config}' (choose from {', '.join(CONFIGS)})")
    if config.optimizer not in OPTIMIZERS:
        raise MedisynError(f"--optimizer: '{config.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    if not 0.0 <= config.balance <= 1.0:
        raise MedisynError(
            f"--balance: {config.balance} is not between 0 (uniform) and 1 (every caption equally often)"
        )
    check_numbers(config)
    check_train_options(config)


def check_numbers(config) -> None:
    """Counts at least 1, rates finite: a zero-step run would save an untrained model and say it trained."""
    import math

    for name in ("steps", "batch_size", "grad_accum", "resolution"):
        if getattr(config, name) < 1:
            raise MedisynError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(config, name)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise MedisynError(f"--lr: must be a positive number, got {config.lr}")
    if not 0.0 <= config.caption_dropout < 1.0:
        raise MedisynError(f"--caption-dropout: {config.caption_dropout} is not in [0, 1)")
    if not 0.0 <= config.holdout < 1.0:
        raise MedisynError(f"--holdout: {config.holdout} is not in [0, 1)")


def mixed_precision(name: str) -> str:
    """The accelerate precision of --mixed-precision; auto: bf16 on CPUs and GPUs that have it, else fp16."""
    import torch

    if name != "auto":
        if name not in ("no", "fp16", "bf16"):
            raise MedisynError(f"--mixed-precision: '{name}' is not one of auto, no, fp16, bf16")
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"


FREE_ON_RESUME = ("gradient_checkpointing",)  # saved, but a resume may change them: the weights stay the same


def run_options(config: TrainConfig) -> dict:
    """The options a resumed run must share with the original (steps may grow)."""
    options = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("out", "resume", "steps", "checkpoint_every", "validate_every", "validation_prompts")
    }
    return json.loads(json.dumps(options))
