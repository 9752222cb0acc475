"""The VAE's latents of the training images."""

from __future__ import annotations

from medisyn_cli.train.data import to_unit


def encode_latents(vae, pixels, device, batch: int = 64):
    """Posterior mean and std of every image, kept in memory as float16 (N, 2C, h, w)."""
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            dist = vae.encode(to_unit(pixels[start : start + batch]).to(device)).latent_dist
            chunks.append(torch.cat([dist.mean, dist.std], 1).half().cpu())
    return torch.cat(chunks)
