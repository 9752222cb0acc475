"""Train or fine-tune a text-to-image latent diffusion pipeline (accelerate, diffusers)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medisyn_cli.core.datasets import Record, iter_images, read_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import write_json
from medisyn_cli.core.images import image_grid
from medisyn_cli.core.ownership import (
    claim,
    foreign_message,
    holds_files,
    is_ours,
    record_files,
    recorded,
    remove_private,
    remove_recorded,
)
from medisyn_cli.core.progress import console, make_progress, rate_text
from medisyn_cli.generate.manifest import load_manifest
from medisyn_cli.pipeline.load import load_pipeline, make_scheduler, quiet_libraries
from medisyn_cli.pipeline.lora import (
    add_lora,
    check_train_options,
    checkpoint_adapters_only,
    data_fingerprint,
    save_adapter,
)
from medisyn_cli.pipeline.tokenizer import build_corpus_tokenizer

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
    lr: float = field(default=5e-4, metadata={"help": "Learning rate (AdamW, 100 warm-up steps)."})
    vae_lr: float = 1e-3
    mixed_precision: str = field(default="auto", metadata={"help": "auto, no, fp16 or bf16."})
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


# 1. data -----------------------------------------------------------------------------------


def split_key(record: Record) -> str:
    """A stable name for the hold-out split: the file name, or the Parquet key."""
    return record.path.name if record.path is not None else record.key


def is_held_out(record: Record, fraction: float) -> bool:
    """Deterministic hold-out by the hash of the file name."""
    digest = hashlib.sha1(split_key(record).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def load_training_images(config: TrainConfig):
    """Decode and resize every captioned image; returns (uint8 tensor N,3,R,R, captions, skipped)."""
    import numpy as np
    import torch

    records = read_records(list(config.data), config.caption_template)
    uncaptioned = [r for r in records if not r.caption]
    if uncaptioned:
        raise MedisynError(
            f"{uncaptioned[0].key}: no caption (add a 'caption' column to metadata.csv, "
            f"or label folders with --caption-template)"
        )
    train = [r for r in records if not is_held_out(r, config.holdout)]
    pixels, captions, skipped = [], [], []
    for record, image, error in iter_images(train):
        if error:
            skipped.append((record.key, error))
            continue
        pixels.append(np.asarray(_square(image.convert("RGB"), config.resolution)))
        captions.append(record.caption)
    if len(pixels) < config.min_images:
        raise MedisynError(
            f"{', '.join(config.data)}: only {len(pixels)} readable images; need at least {config.min_images}"
        )
    tensor = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    held = [r for r in records if is_held_out(r, config.holdout)]
    return tensor, captions, skipped, held


def _square(image, size: int):
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)


def to_unit(batch_uint8):
    """uint8 0..255 -> float -1..1."""
    return batch_uint8.float() / 127.5 - 1.0


# 2. components -----------------------------------------------------------------------------


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


# 3. autoencoder ----------------------------------------------------------------------------


def train_vae(vae, pixels, config: TrainConfig, accelerator, progress) -> float:
    """Train the autoencoder on reconstruction (L1 + edges) with a light KL; returns PSNR (dB)."""
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    generator = torch.Generator().manual_seed(config.seed)
    task = progress.add_task("autoencoder", total=config.vae_steps, rate="", info="")
    start = time.time()
    for step in range(config.vae_steps):
        idx = torch.randint(0, len(pixels), (min(32, len(pixels)),), generator=generator)
        x = to_unit(pixels[idx]).to(accelerator.device)
        with accelerator.autocast():
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        loss = (recon - x).abs().mean() + _edge_loss(recon, x) + 1e-6 * posterior.kl().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        progress.update(
            task,
            advance=1,
            rate=rate_text((step + 1) * len(idx), time.time() - start, "img"),
            info=f"loss {loss.item():.4f}",
        )
    vae = accelerator.unwrap_model(vae).eval().requires_grad_(False)
    return vae_psnr(vae, pixels[: min(256, len(pixels))], accelerator.device)


def _edge_loss(a, b):
    def grads(x):
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    (ay, ax), (by, bx) = grads(a), grads(b)
    return (ay - by).abs().mean() + (ax - bx).abs().mean()


def vae_psnr(vae, pixels, device) -> float:
    """Mean reconstruction PSNR (dB) of the autoencoder on these images."""
    import torch

    with torch.no_grad():
        x = to_unit(pixels).to(device)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        mse = ((recon - x) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


def encode_latents(vae, pixels, device, batch: int = 64):
    """Posterior mean and std of every image, kept in memory as float16 (N, 2C, h, w)."""
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            dist = vae.encode(to_unit(pixels[start : start + batch]).to(device)).latent_dist
            chunks.append(torch.cat([dist.mean, dist.std], 1).half().cpu())
    return torch.cat(chunks)


# 4. diffusion ------------------------------------------------------------------------------


def min_snr_weights(scheduler, timesteps, gamma: float):
    """Min-SNR-gamma loss weights (Hang et al. 2023) for epsilon or v prediction."""
    import torch

    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=gamma) / snr
    if scheduler.config.prediction_type == "v_prediction":
        weights = torch.clamp(snr, max=gamma) / (snr + 1)
    return weights


def diffusion_loss(parts, latents, hidden, generator, config: TrainConfig):
    """One denoising loss on a batch of scaled latents and the text encoder's hidden states of their captions."""
    import torch
    import torch.nn.functional as F

    scheduler = parts["noise_scheduler"]
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator).to(
        latents.device
    )
    noisy = scheduler.add_noise(latents, noise, t)
    pred = parts["unet"](noisy, t, hidden).sample.float()
    target = (
        noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    )
    per_sample = F.mse_loss(pred, target.float(), reduction="none").flatten(1).mean(1)
    return (per_sample * min_snr_weights(scheduler, t, config.min_snr_gamma)).mean()


def caption_states(parts, ids_of, accelerator, limit: int = CAPTION_CACHE_BYTES):
    """Hidden states of every distinct caption when the text encoder is frozen: computed once, not at every step.
    None when it trains, or when they would take more than `limit` bytes (many free-text captions): then each
    batch is encoded as it comes."""
    import torch

    encoder = parts["text_encoder"]
    width = getattr(_unwrap(encoder).config, "hidden_size", None)
    if parts["train_text_encoder"] or not width or ids_of.numel() * width * 4 > limit:
        return None
    with torch.no_grad(), accelerator.autocast():
        return torch.cat([encoder(chunk.to(accelerator.device))[0] for chunk in ids_of.split(256)])


def text_states(parts, ids_of, rows, cached, device):
    """The hidden states of the captions `rows` of one batch (from the cache when the text encoder is frozen)."""
    if cached is not None:
        return cached[rows.to(cached.device)]
    return parts["text_encoder"](ids_of[rows].to(device))[0]


def tokenize(tokenizer, texts: list[str]):
    """Pad/truncate to the tokenizer's max length."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


# 5. the run --------------------------------------------------------------------------------


def train(config: TrainConfig, show_progress: bool = True) -> TrainResult:
    """Train (VAE first when there is none), then the UNet; save a diffusers pipeline folder."""
    _check_out(Path(config.out), config)
    owner = claim(config.out, "train", fallback=_legacy_train_files, adopt=True)
    foreign = {p.relative_to(owner.path).as_posix() for p in owner.path.rglob("*") if p.is_file()}
    foreign -= recorded(owner.path, _legacy_train_files) or set()
    try:
        result = _train(config, show_progress)
        mine = {p.relative_to(owner.path).as_posix() for p in owner.path.rglob("*") if p.is_file()}
        record_files(owner.path, [n for n in mine - foreign if not n.startswith((".medisyn", "_work/"))])
        return result
    finally:
        owner.release()


def _legacy_train_files(folder: Path) -> set[str]:
    """An older `train` run's folder (its _work/config.json): the files it wrote are all but none known; only
    its scratch folder is taken as medisyn's."""
    work = folder / "_work"
    return (
        {p.relative_to(folder).as_posix() for p in work.rglob("*") if p.is_file()} if work.is_dir() else set()
    )


def _train(config: TrainConfig, show_progress: bool = True) -> TrainResult:
    import torch
    from accelerate import Accelerator

    quiet_libraries()
    torch.set_flush_denormal(True)  # denormal floats slow CPU training by 5-10x once weights get small
    started = time.time()
    out = Path(config.out)
    work = out / "_work"
    _check_out(out, config)
    if not config.base and config.config not in CONFIGS:
        raise MedisynError(f"--config: unknown config '{config.config}' (choose from {', '.join(CONFIGS)})")
    if not 0.0 <= config.balance <= 1.0:
        raise MedisynError(
            f"--balance: {config.balance} is not between 0 (uniform) and 1 (every caption equally often)"
        )
    _check_numbers(config)
    check_train_options(config)
    _reset_accelerate()
    seed_run(config.seed, config.deterministic)
    pixels, captions, skipped, held = load_training_images(config)
    _save_options(work, config)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.grad_accum,
        project_dir=str(work),
    )
    parts = build_components(config, captions, work)
    with make_progress(disable=not show_progress) as progress:
        psnr = _autoencoder_stage(parts, pixels, config, accelerator, progress, work)
        latents = encode_latents(parts["vae"], pixels, accelerator.device)
        scale = parts["vae"].config.scaling_factor
        losses = _diffusion_stage(parts, latents, captions, scale, config, accelerator, progress, work)
    _save(parts, out, config, losses, pixels, captions, len(held))
    _write_reports(out, losses, config, held, skipped, psnr, time.time() - started, len(pixels))
    remove_private(work / "tokenizer")
    return TrainResult(
        out, len(losses), _tail_mean(losses), len(pixels), skipped, time.time() - started, psnr
    )


def _save(parts, out: Path, config: TrainConfig, losses, pixels, captions, held: int) -> Path:
    """The trained pipeline, or with --lora only the adapter (diffusers' LoRA format, adapter.json, card)."""
    if not config.lora:
        return save_pipeline(parts, out, config)
    info = {
        "steps": len(losses),
        "final_loss": _tail_mean(losses),
        "train_images": len(pixels),
        "held_out_images": held,
        "data_fingerprint": data_fingerprint(pixels, captions),
    }
    return save_adapter(parts, out, config, info)


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


def _reset_accelerate() -> None:
    """Forget a previous run's accelerate state, so one process can train twice with other precisions."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and hasattr(AcceleratorState, "_reset_state"):
        AcceleratorState._reset_state(reset_partial_state=True)


def _run_options(config: TrainConfig) -> dict:
    """The options a resumed run must share with the original (steps may grow)."""
    options = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("out", "resume", "steps", "checkpoint_every", "validate_every", "validation_prompts")
    }
    return json.loads(json.dumps(options))


def _check_out(out: Path, config: TrainConfig) -> None:
    if out.exists() and not out.is_dir():
        raise MedisynError(f"--out {out}: exists and is not a folder")
    if holds_files(out) and not is_ours(out) and not (out / "_work" / "config.json").is_file():
        raise MedisynError(foreign_message(out, "--out", "train"))
    if holds_files(out, lambda p: p.name.startswith(".medisyn")) and not config.resume:
        raise MedisynError(f"--out {out}: folder exists and is not empty (use --resume to continue a run)")
    saved = out / "_work" / "config.json"
    if config.resume and saved.exists():
        previous, current = json.loads(saved.read_text()), _run_options(config)
        defaults = _run_options(TrainConfig(data=config.data, out=config.out))
        changed = [k for k in current if current[k] != previous.get(k, defaults[k])]
        if changed:
            raise MedisynError(f"--resume: options differ from the run in {out}: {', '.join(changed)}")


def _save_options(work: Path, config: TrainConfig) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(_run_options(config), indent=2))


def _mixed_precision(name: str) -> str:
    import torch

    if name != "auto":
        if name not in ("no", "fp16", "bf16"):
            raise MedisynError(f"--mixed-precision: '{name}' is not one of auto, no, fp16, bf16")
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"


def _autoencoder_stage(parts, pixels, config, accelerator, progress, work: Path):
    from diffusers import AutoencoderKL

    saved = work / "vae"
    if not parts["train_vae"]:
        parts["vae"].requires_grad_(False).to(accelerator.device)
        return None
    if (saved / "config.json").exists():
        parts["vae"] = AutoencoderKL.from_pretrained(saved).to(accelerator.device).requires_grad_(False)
        return json.loads((saved / "psnr.json").read_text())["psnr"]
    from accelerate import Accelerator

    # its own Accelerator, so that diffusion checkpoints hold only the UNet and text encoder
    vae_accelerator = Accelerator(mixed_precision=accelerator.mixed_precision)
    psnr = train_vae(parts["vae"], pixels, config, vae_accelerator, progress)
    vae = parts["vae"]
    latents = encode_latents(vae, pixels[: min(512, len(pixels))], accelerator.device)
    vae.register_to_config(scaling_factor=float(1.0 / latents[:, : latents.shape[1] // 2].float().std()))
    vae.save_pretrained(saved)
    (saved / "psnr.json").write_text(json.dumps({"psnr": psnr}))
    return psnr


def _optimiser(parts, config: TrainConfig, accelerator):
    """(trainable parameters, optimiser, warm-up schedule, EMA or None), prepared by accelerate; `parts` get the
    prepared UNet and text encoder."""
    import torch
    from diffusers.training_utils import EMAModel

    trainable = _trainable(parts, config)
    if config.lora:
        checkpoint_adapters_only(accelerator)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=1e-2)
    lr_lambda = lambda step: min(1.0, (step + 1) / 100)  # noqa: E731
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    unet, text_encoder, optimizer, lr_schedule = accelerator.prepare(
        parts["unet"], parts["text_encoder"], optimizer, lr_schedule
    )
    parts.update(unet=unet, text_encoder=text_encoder)
    ema = (
        EMAModel(trainable, decay=config.ema_decay, use_ema_warmup=True, power=2 / 3) if config.ema else None
    )
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return trainable, optimizer, lr_schedule, ema


def _diffusion_stage(parts, latents, captions, scale, config, accelerator, progress, work):
    import torch

    trainable, optimizer, lr_schedule, ema = _optimiser(parts, config, accelerator)
    unet, text_encoder = parts["unet"], parts["text_encoder"]
    unique = sorted(set(captions))
    ids_of = tokenize(parts["tokenizer"], unique + [""])
    caption_index = torch.tensor([unique.index(c) for c in captions])
    weights = caption_weights(caption_index, config.balance) if config.balance else None
    losses, step = _restore(accelerator, work)
    generator, micro = torch.Generator(), 0
    task = progress.add_task("diffusion", total=config.steps, completed=step, rate="", info="")
    start, done = time.time(), 0
    unet.train()
    text_encoder.train(parts["train_text_encoder"])
    cached = caption_states(parts, ids_of, accelerator)
    while step < config.steps:
        generator.manual_seed(step_seed(config.seed, step, micro))  # a resumed run draws as an unbroken one
        idx = draw_batch(weights, len(latents), config.batch_size, generator)
        mean, std = latents[idx].float().chunk(2, dim=1)
        z = (mean + std * torch.randn(mean.shape, generator=generator)) * scale
        drop = torch.rand(len(idx), generator=generator) < config.caption_dropout
        rows = torch.where(drop, len(unique), caption_index[idx])
        with accelerator.accumulate(unet), accelerator.autocast():
            hidden = text_states(parts, ids_of, rows, cached, accelerator.device)
            loss = diffusion_loss(parts, z.to(accelerator.device), hidden, generator, config)
            accelerator.backward(loss)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad()
        micro = 0 if accelerator.sync_gradients else micro + 1
        if accelerator.sync_gradients:
            step += 1
            done += len(idx)
            if ema is not None:
                ema.step(trainable)
            losses.append(float(loss.item()))
            progress.update(
                task,
                completed=step,
                rate=rate_text(done, time.time() - start, "img"),
                info=f"loss {_tail_mean(losses):.4f}",
            )
            _after_step(parts, config, accelerator, work, step, losses, ema, trainable, unique)
    if ema is not None:
        ema.copy_to(trainable)
    parts.update(unet=accelerator.unwrap_model(unet), text_encoder=accelerator.unwrap_model(text_encoder))
    return losses


def _after_step(
    parts,
    config: TrainConfig,
    accelerator,
    work: Path,
    step: int,
    losses: list,
    ema,
    trainable,
    unique: list[str],
) -> None:
    """Checkpoint and draw the validation grid when their step comes."""
    if step % config.checkpoint_every == 0 or step == config.steps:
        _checkpoint(accelerator, work, step, losses)
    if config.validate_every and (step % config.validate_every == 0 or step == config.steps):
        with _ema_weights(ema, trainable):
            sample_grid(
                parts,
                _validation_prompts(config, unique),
                work.parent / "samples" / f"step-{step:06d}.png",
                accelerator.device,
            )


def _trainable(parts, config: TrainConfig) -> list:
    """The parameters the optimiser updates: the whole UNet (and text encoder when trained), or only LoRA layers."""
    if config.lora:
        return add_lora(parts, config)
    parts["text_encoder"].requires_grad_(parts["train_text_encoder"])
    return list(parts["unet"].parameters()) + (
        list(parts["text_encoder"].parameters()) if parts["train_text_encoder"] else []
    )


def step_seed(seed: int, step: int, micro: int = 0) -> int:
    """The seed of one batch's draws (images, latents, noise, timesteps, caption dropout), from the run's seed,
    the optimiser step and the batch's place in a --grad-accum step."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def caption_weights(caption_index, power: float):
    """Each image's sampling weight, 1 / (images sharing its caption) ** power: 0 is uniform over images,
    1 draws every caption equally often."""
    counts = caption_index.bincount()
    return counts[caption_index].double() ** -power


def draw_batch(weights, n: int, size: int, generator):
    """Indices of one training batch: uniform over n images, or by weight (with replacement)."""
    import torch

    if weights is None:
        return torch.randint(0, n, (size,), generator=generator)
    return torch.multinomial(weights, size, replacement=True, generator=generator)


class _ema_weights:
    """Swap the EMA weights in for sampling, then put the training weights back."""

    def __init__(self, ema, params):
        self.ema, self.params = ema, params

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.params)


def _checkpoint(accelerator, work: Path, step: int, losses: list[float]) -> None:
    """Save state to a temp folder, then rename it; keep the latest two."""
    root = work / "checkpoints"
    tmp = root / f".tmp-{step:06d}"
    remove_private(tmp)
    accelerator.save_state(str(tmp))
    (tmp / "medisyn_state.json").write_text(json.dumps({"step": step, "losses": losses}))
    final = root / f"step-{step:06d}"
    remove_private(final)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-2]:
        remove_private(old)


def latest_checkpoint(work: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, if any."""
    done = sorted((work / "checkpoints").glob("step-*"))
    return done[-1] if done else None


def _restore(accelerator, work: Path) -> tuple[list[float], int]:
    checkpoint = latest_checkpoint(work)
    if checkpoint is None:
        return [], 0
    accelerator.load_state(str(checkpoint))
    state = json.loads((checkpoint / "medisyn_state.json").read_text())
    console.print(f"resumed from {checkpoint} at step {state['step']}")
    return state["losses"], state["step"]


def _validation_prompts(config: TrainConfig, captions: list[str]) -> list[str]:
    if config.validation_prompts:
        path = Path(config.validation_prompts)
        if not path.exists():
            raise MedisynError(f"--validation-prompts: {path} does not exist")
        if path.suffix == ".csv":
            return [row.prompt for row in load_manifest(path).rows][:16]
        return [line.strip() for line in path.read_text().splitlines() if line.strip()][:16]
    return captions[:16]


def build_pipeline(parts, scheduler_name: str = "dpm++"):
    """A StableDiffusionPipeline from trained parts, without safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=_unwrap(parts["text_encoder"]),
        tokenizer=parts["tokenizer"],
        unet=_unwrap(parts["unet"]),
        scheduler=make_scheduler(scheduler_name, parts["noise_scheduler"].config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _unwrap(model):
    return getattr(model, "module", model)


def sample_grid(parts, prompts: list[str], path: Path, device, per_prompt: int = 4, steps: int = 20) -> Path:
    """Save a grid: one row per prompt, a few seeds each."""
    import torch

    pipe = build_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    unet, text_encoder = _unwrap(parts["unet"]), _unwrap(parts["text_encoder"])
    was_training = unet.training, text_encoder.training
    unet.eval(), text_encoder.eval()
    generators = [torch.Generator().manual_seed(i) for _ in prompts for i in range(per_prompt)]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cpu"):
        images = pipe(
            [p for p in prompts for _ in range(per_prompt)],
            num_inference_steps=steps,
            guidance_scale=3.0,
            generator=generators,
            output_type="pil",
        ).images
    unet.train(was_training[0]), text_encoder.train(was_training[1])

    return image_grid(images, rows=len(prompts), path=path, labels=prompts)


# 6. outputs --------------------------------------------------------------------------------


def save_pipeline(parts, out: Path, config: TrainConfig) -> Path:
    """Save a standard diffusers folder (fp16 weights when asked), written atomically."""
    import torch

    pipe = build_pipeline(parts)
    if config.save_dtype == "fp16":
        pipe = pipe.to(torch.float16)
    tmp = out / "_work" / "pipeline"
    remove_private(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    _load_in_fp32(tmp / "text_encoder" / "config.json")
    _follow_umask(tmp)
    for item in tmp.iterdir():
        target = out / item.name
        if target.exists():  # a pipeline an earlier run saved here: only the files it recorded
            remove_recorded(out, [n for n in recorded(out) or () if n.split("/")[0] == item.name])
        if target.exists():
            raise MedisynError(f"{target}: holds files medisyn did not write; move them away, then run again")
        item.rename(target)
    return out


def _load_in_fp32(config_file: Path) -> None:
    """fp16-saved weights still load as fp32 in plain diffusers: transformers loads the text encoder in its config's
    dtype, diffusers the UNet and VAE in fp32, and a mix fails ('Half and Float')."""
    if config_file.exists():
        config = json.loads(config_file.read_text())
        if config.get("dtype") not in (None, "float32"):
            write_json(config_file, {**config, "dtype": "float32"})


def _follow_umask(folder: Path) -> None:
    """safetensors writes its files owner-only (0600); give them the usual umask mode so a shared model is readable."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _write_reports(
    out: Path, losses, config: TrainConfig, held: list[Record], skipped, psnr, seconds, n_images
):
    with open(out / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows((i + 1, f"{v:.6f}") for i, v in enumerate(losses))
    plot_losses(losses, out / "loss.png")
    if held:
        with open(out / "holdout.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "label"])
            writer.writerows((r.key, r.label) for r in held)
    summary = {
        "config": asdict(config),
        "steps": len(losses),
        "final_loss": _tail_mean(losses),
        "train_images": n_images,
        "held_out_images": len(held),
        "vae_psnr_db": psnr,
        "seconds": round(seconds, 1),
        "skipped": skipped,
    }
    write_json(out / "training.json", summary)


def _check_numbers(config) -> None:
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


def _tail_mean(losses: list[float], n: int = 50) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail) if tail else math.nan


def plot_losses(losses: list[float], path: Path) -> None:
    """Raw and smoothed loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, alpha=0.3, label="loss")
    smooth = [_tail_mean(losses[: i + 1]) for i in range(len(losses))]
    ax.plot(range(1, len(losses) + 1), smooth, label="mean of last 50")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
