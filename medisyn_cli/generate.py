"""Run a diffusers pipeline over planned jobs: one generator per image, bad images regenerated."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

from .errors import MedisynError
from .plan import Job, image_seed


@dataclass(frozen=True)
class Settings:
    """Sampling settings for every image of a run."""

    steps: int
    guidance: float
    height: int
    width: int
    autocast_bf16: bool = False


@dataclass
class Generated:
    """One finished image with the seed that made it (attempt > 0 means it was regenerated)."""

    job: Job
    image: object
    seed: int
    attempt: int

    def png(self) -> bytes:
        """The image as PNG bytes (single channel for mode L)."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


def render_batch(pipe, prompts: list[str], negatives: list[str], seeds: list[int], settings: Settings):
    """Images as float arrays (B, H, W, C) in [0, 1]; noise drawn from one CPU generator per image."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    device = getattr(pipe, "device", torch.device("cpu"))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast_bf16):
        result = pipe(prompt=prompts, negative_prompt=negatives if any(negatives) else None,
                      num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                      height=settings.height, width=settings.width, generator=generators, output_type="np")
    return result.images


def is_bad(array) -> bool:
    """NaN or all-black output (e.g. fp16 overflow or a blanked image)."""
    import numpy as np

    return bool(np.isnan(array).any() or np.nanmax(array) < 2 / 255)


def to_image(array, mode: str):
    """Float [0, 1] array -> PIL image in the manifest's mode (L or RGB)."""
    import numpy as np
    from PIL import Image

    pixels = (np.clip(array, 0, 1) * 255).round().astype("uint8")
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, "L" if pixels.shape[-1] == 1 else "RGB")
    return image.convert(mode)


def generate_batch(pipe, jobs: list[Job], settings: Settings, run_seed: int, max_regenerate: int = 5,
                   render: Callable = render_batch) -> list[Generated]:
    """Generate a batch; NaN/black images are made again from a new recorded seed."""
    attempts = {job.id: 0 for job in jobs}
    done: dict[str, Generated] = {}
    pending = list(jobs)
    while pending:
        seeds = [image_seed(run_seed, job.label, job.index, attempts[job.id]) for job in pending]
        arrays = render(pipe, [j.prompt for j in pending], [j.negative_prompt for j in pending], seeds, settings)
        retry = []
        for job, seed, array in zip(pending, seeds, arrays):
            if not is_bad(array):
                done[job.id] = Generated(job, to_image(array, job.mode), seed, attempts[job.id])
                continue
            attempts[job.id] += 1
            if attempts[job.id] > max_regenerate:
                raise MedisynError(f"image {job.id} ('{job.label}') came out black or NaN {attempts[job.id]} times; "
                                   f"try --dtype fp32 or another --scheduler")
            retry.append(job)
        pending = retry
    return [done[job.id] for job in jobs]
