"""The autoencoder stage: trained from scratch (reconstruction + KL) or frozen from the base."""

from __future__ import annotations

import json
import time
from pathlib import Path

from medisyn_cli.core.progress import rate_text
from medisyn_cli.train.config import TrainConfig
from medisyn_cli.train.data import PixelFile, TrainingSet, to_unit
from medisyn_cli.train.latents import LatentCache, encode_batch


def autoencoder_stage(parts, data: TrainingSet, config: TrainConfig, accelerator, progress, work: Path):
    """The autoencoder the latents come from: the base's (frozen), one trained earlier in this run, or a new one
    trained now (with its latent scaling factor); returns its PSNR (dB), None for the base's."""
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
    psnr = train_vae(parts["vae"], data.pixels, config, vae_accelerator, progress)
    vae = parts["vae"]
    cache = LatentCache(vae, data.pixels, work, accelerator.device, data.pixel_sha256)
    latents = cache[: min(512, len(data))]
    vae.register_to_config(scaling_factor=float(1.0 / latents[:, : latents.shape[1] // 2].float().std()))
    vae.save_pretrained(saved)
    (saved / "psnr.json").write_text(json.dumps({"psnr": psnr}))
    return psnr


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
    return vae_psnr(vae, pixels, accelerator.device)


def _edge_loss(a, b):
    def grads(x):
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    (ay, ax), (by, bx) = grads(a), grads(b)
    return (ay - by).abs().mean() + (ax - bx).abs().mean()


def vae_psnr(vae, pixels: PixelFile, device, count: int = 256) -> float:
    """Mean reconstruction PSNR (dB) of the autoencoder on the first `count` images, a few at a time."""
    import torch

    values = []
    batch = encode_batch(pixels.size)
    with torch.no_grad():
        for start in range(0, min(count, len(pixels)), batch):
            x = to_unit(pixels[start : min(start + batch, count)]).to(device)
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            mse = ((recon - x) / 2).pow(2).flatten(1).mean(1)
            values.append(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    return float(torch.cat(values).mean())
