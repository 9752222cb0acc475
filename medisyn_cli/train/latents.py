"""The VAE's latents of the training images, encoded a few at a time as batches need them and cached on disk
(under the run's _work/latents, keyed by the VAE's weights and the pixels), so that neither memory nor the work
before the first step grows with the number of images, and a resumed run encodes nothing twice."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medisyn_cli.core.files import atomic_path
from medisyn_cli.core.ownership import remove_private
from medisyn_cli.train.data import PixelFile, to_unit

PIXELS_PER_BATCH = 64 * 64 * 64  # images per VAE forward: 64 up to 64 px (as before), 16 at 128, 1 from 512


def encode_batch(resolution: int) -> int:
    """Images per VAE forward at this resolution: at most 64, and no more pixels than 64 images of 64 px."""
    return max(1, min(64, PIXELS_PER_BATCH // (resolution * resolution)))


def encode_latents(vae, pixels, device):
    """Posterior mean and std (float16, (B, 2C, h, w)) of these uint8 images (B, 3, R, R), in one forward."""
    import torch

    with torch.no_grad():
        dist = vae.encode(to_unit(pixels).to(device)).latent_dist
        return torch.cat([dist.mean, dist.std], 1).half().cpu()


def module_sha256(module) -> str:
    """sha256 of a module's weights (names and values), in a fixed order."""
    import numpy as np

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(tensor.detach().float().cpu().numpy()).tobytes())
    return digest.hexdigest()


class LatentCache:
    """Latents of every training image, read like a tensor (`cache[idx]`). Images are encoded in fixed chunks
    (images k*chunk .. (k+1)*chunk-1 together) the first time a batch needs one of them, so an image's latents
    do not depend on the order batches come in; each chunk is one .npy file, written by rename."""

    def __init__(self, vae, pixels: PixelFile, work: Path, device, pixel_sha256: str):
        self.vae, self.pixels, self.device = vae, pixels, device
        self.chunk = encode_batch(pixels.size)
        key = hashlib.sha256(
            f"{module_sha256(vae)}/{pixel_sha256}/{pixels.size}/{len(pixels)}/{self.chunk}".encode()
        ).hexdigest()[:16]
        root = work / "latents"
        for old in root.glob("*") if root.is_dir() else ():  # another VAE's or data set's latents
            if old.name != key:
                remove_private(old)
        self.folder = root / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoded = 0  # images this process encoded (not read from the cache)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index):
        """Latents of the images `index` (a slice or a sequence/tensor of ints), float16 (B, 2C, h, w)."""
        import torch

        rows = range(len(self))[index] if isinstance(index, slice) else [int(i) for i in index]
        chunks = {k: self._chunk(k) for k in sorted({i // self.chunk for i in rows})}
        return torch.stack([chunks[i // self.chunk][i % self.chunk] for i in rows])

    def _chunk(self, k: int):
        import numpy as np
        import torch

        path = self.folder / f"chunk-{k:07d}.npy"
        if not path.exists():
            start = k * self.chunk
            latents = encode_latents(self.vae, self.pixels[start : start + self.chunk], self.device)
            with atomic_path(path, ".npy") as tmp:
                np.save(tmp, latents.numpy())
            self.encoded += len(latents)
        return torch.from_numpy(np.load(path))
