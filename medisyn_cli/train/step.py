"""One diffusion step: the batch draw, caption states, the min-SNR loss and the optimiser."""

from __future__ import annotations

import hashlib

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.pipeline.lora import checkpoint_adapters_only
from medisyn_cli.train.config import CAPTION_CACHE_BYTES, TrainConfig
from medisyn_cli.train.model import checkpoint_activations, trainable_parameters, unwrap

WEIGHT_DECAY = 1e-2


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


def tokenize(tokenizer, texts: list[str]):
    """Pad/truncate to the tokenizer's max length."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def caption_states(parts, ids_of, accelerator, limit: int = CAPTION_CACHE_BYTES):
    """Hidden states of every distinct caption when the text encoder is frozen: computed once, not at every step.
    None when it trains, or when they would take more than `limit` bytes (many free-text captions): then each
    batch is encoded as it comes."""
    import torch

    encoder = parts["text_encoder"]
    width = getattr(unwrap(encoder).config, "hidden_size", None)
    if parts["train_text_encoder"] or not width or ids_of.numel() * width * 4 > limit:
        return None
    with torch.no_grad(), accelerator.autocast():
        return torch.cat([encoder(chunk.to(accelerator.device))[0] for chunk in ids_of.split(256)])


def text_states(parts, ids_of, rows, cached, device):
    """The hidden states of the captions `rows` of one batch (from the cache when the text encoder is frozen)."""
    if cached is not None:
        return cached[rows.to(cached.device)]
    return parts["text_encoder"](ids_of[rows].to(device))[0]


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


def optimiser(parts, config: TrainConfig, accelerator):
    """(trainable parameters, optimiser, warm-up schedule, EMA or None), prepared by accelerate; `parts` get the
    prepared UNet and text encoder."""
    import torch
    from diffusers.training_utils import EMAModel

    trainable = trainable_parameters(parts, config)
    if config.lora:
        checkpoint_adapters_only(accelerator)
    if config.gradient_checkpointing:
        checkpoint_activations(parts)
    optimizer = make_optimizer(trainable, config.optimizer, config.lr, accelerator.device)
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


def make_optimizer(params: list, name: str, lr: float, device):
    """The --optimizer: torch's AdamW, bitsandbytes' AdamW8bit, or transformers' Adafactor at a fixed `lr` (no
    first moment, factored second moments: state far smaller than the model)."""
    import torch

    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=lr,
            relative_step=False,
            scale_parameter=False,
            warmup_init=False,
            weight_decay=WEIGHT_DECAY,
        )
    if name == "adamw8bit":
        return adamw8bit(device)(params, lr=lr, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)


def check_optimizer(name: str) -> None:
    """Refuse --optimizer adamw8bit before any data or model is read where bitsandbytes is missing or cannot run."""
    if name == "adamw8bit":
        from accelerate import PartialState

        adamw8bit(PartialState().device)


def adamw8bit(device):
    """bitsandbytes' AdamW8bit class, once a trial step on `device` worked: else a one-line error saying what to use."""
    import torch

    instead = "use --optimizer adafactor (the least memory) or adamw"
    try:
        import bitsandbytes
    except Exception as error:  # not installed, or (older releases) no build for this machine
        raise MedisynError(
            f"--optimizer adamw8bit: bitsandbytes cannot be imported ({first_line(error)}); "
            f"pip install bitsandbytes, or {instead}"
        ) from error
    probe = torch.zeros(4096, device=device, requires_grad=True)  # the smallest size it keeps in 8 bits
    probe.grad = torch.ones_like(probe)
    try:
        bitsandbytes.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as error:
        raise MedisynError(
            f"--optimizer adamw8bit: bitsandbytes {getattr(bitsandbytes, '__version__', '')} cannot run on "
            f"{device} ({first_line(error)}); {instead}"
        ) from error
    return bitsandbytes.optim.AdamW8bit


def first_line(error: BaseException) -> str:
    """An exception's first line, at most 200 characters."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


class ema_weights:
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
