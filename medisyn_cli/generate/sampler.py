"""Run a diffusers pipeline over planned jobs: one generator per image, bad images regenerated."""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.generate.plan import Job
from medisyn_cli.screening.checks import Checks, Verdict


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
    screen: Verdict | None = None  # the run's checks' verdict (screening.checks), None when it has none

    def png(self) -> bytes:
        """The image as PNG bytes (single channel for mode L)."""
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


class Renderer:
    """The pipeline as `render(prompts, negatives, seeds) -> float arrays (B, H, W, C) in [0, 1]`.

    Noise comes from one CPU generator per image, so an image depends on its seed only, not on its batch.
    Each distinct (prompt, negative prompt) is encoded by the text encoder once per run (`PromptCache`), where the
    pipeline accepts prompt embeddings; other pipelines get the strings.
    """

    def __init__(self, pipe, settings: Settings, cache_prompts: bool = True):
        self.pipe, self.settings = pipe, settings
        self.prompts = (
            PromptCache(pipe, settings.guidance) if cache_prompts and PromptCache.supports(pipe) else None
        )

    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int]):
        import torch

        settings = self.settings
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        device = getattr(self.pipe, "device", torch.device("cpu"))
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast_bf16),
        ):
            text = (
                self.prompts.embeddings(prompts, negatives)
                if self.prompts
                else {"prompt": prompts, "negative_prompt": negatives if any(negatives) else None}
            )
            result = self.pipe(
                **text,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                height=settings.height,
                width=settings.width,
                generator=generators,
                output_type="np",
            )
        return result.images


class PromptCache:
    """Text-encoder outputs of each distinct (prompt, negative prompt), kept for the run (least recently used
    dropped beyond `size`)."""

    def __init__(self, pipe, guidance: float, size: int = 2048):
        self.pipe, self.size = pipe, size
        self.guidance = guidance > 1 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None
        self.cache: OrderedDict = OrderedDict()
        self.encoded = self.hits = 0

    @staticmethod
    def supports(pipe) -> bool:
        """Stable Diffusion 1.x/2.x style pipelines: encode_prompt returns (embeddings, negative embeddings)."""
        import inspect

        encode = getattr(pipe, "encode_prompt", None)
        if encode is None or "prompt_embeds" not in inspect.signature(pipe.__call__).parameters:
            return False
        return "prompt_2" not in inspect.signature(encode).parameters  # SDXL/SD3 encode more than one text

    def embeddings(self, prompts: list[str], negatives: list[str]) -> dict:
        """Keyword arguments for the pipeline: prompt_embeds and, with guidance, negative_prompt_embeds."""
        import torch

        pairs = [self._encoded(prompt, negative) for prompt, negative in zip(prompts, negatives)]
        text = {"prompt_embeds": torch.cat([positive for positive, _ in pairs])}
        if self.guidance:
            text["negative_prompt_embeds"] = torch.cat([negative for _, negative in pairs])
        return text

    def _encoded(self, prompt: str, negative: str):
        key = (prompt, negative)
        if key in self.cache:
            self.hits += 1
            self.cache.move_to_end(key)
            return self.cache[key]
        positive, negative_embeds = self.pipe.encode_prompt(
            prompt, self.pipe._execution_device, 1, self.guidance, negative or None
        )
        self.cache[key] = (positive, negative_embeds)
        self.encoded += 1
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return self.cache[key]


def is_bad(array) -> bool:
    """NaN or all-black output (e.g. fp16 overflow or a blanked image)."""
    import numpy as np

    return bool(np.isnan(array).any() or np.nanmax(array) < 2 / 255)


def to_image(array, mode: str):
    """Float [0, 1] array -> PIL image in the manifest's mode (L or RGB)."""
    import numpy as np
    from PIL import Image

    pixels = (np.clip(array, 0, 1) * 255).round().astype("uint8")
    image = Image.fromarray(
        pixels[..., 0] if pixels.shape[-1] == 1 else pixels, "L" if pixels.shape[-1] == 1 else "RGB"
    )
    return image.convert(mode)


def generate_batch(
    render: Callable,
    jobs: list[Job],
    max_regenerate: int = 5,
    attempts: dict[str, int] | None = None,
) -> list[Generated]:
    """Generate a batch with `render` (a Renderer); NaN/black images are made again from a new recorded seed.

    `attempts` gives each job's first attempt number (0 by default) and is advanced past bad images.
    """
    attempts = attempts if attempts is not None else {}
    bad = {job.id: 0 for job in jobs}
    done: dict[str, Generated] = {}
    pending = list(jobs)
    while pending:
        seeds = [job.attempt_seed(attempts.get(job.id, 0)) for job in pending]
        arrays = render([j.prompt for j in pending], [j.negative_prompt for j in pending], seeds)
        retry = []
        for job, seed, array in zip(pending, seeds, arrays):
            if not is_bad(array):
                done[job.id] = Generated(job, to_image(array, job.mode), seed, attempts.get(job.id, 0))
                continue
            attempts[job.id] = attempts.get(job.id, 0) + 1
            bad[job.id] += 1
            if bad[job.id] > max_regenerate:
                raise MedisynError(
                    f"image {job.id} ('{job.label}') came out black or NaN {bad[job.id]} times; "
                    f"try --dtype fp32 or another --scheduler"
                )
            retry.append(job)
        pending = retry
    return [done[job.id] for job in jobs]


@dataclass
class Screened:
    """A batch after its checks: images kept, images rejected, classes ended (rejected too often in a row)."""

    kept: list[Generated] = field(default_factory=list)
    rejected: list[Generated] = field(default_factory=list)
    ended: dict[str, str] = field(default_factory=dict)


def generate_screened(
    render: Callable,
    jobs: list[Job],
    checks: Checks | None = None,
    max_attempts: int = 10,
    max_regenerate: int = 5,
    first: list[Generated] | None = None,
    ended: dict[str, str] | None = None,
) -> Screened:
    """Generate a batch, run the checks on it and replace rejected images with new images from new recorded seeds.

    `first`: the batch's first images when they were already made (the model makes the next batch while this one
    is checked). An image still rejected after `max_attempts` attempts ends its class (e.g. the model memorises
    it): the class is named in `ended` with the checks' reason and its remaining jobs are dropped, as are jobs of
    classes in the `ended` given (ended by an earlier batch).
    """
    result, closed = Screened(), set(ended or {})
    stopped = lambda label: label in closed or label in result.ended  # noqa: E731
    attempts, rejections = {job.id: 0 for job in jobs}, {job.id: 0 for job in jobs}
    items = [item for item in first if not stopped(item.job.label)] if first is not None else None
    pending = [job for job in jobs if not stopped(job.label)]
    while pending:
        if items is None:
            items = generate_batch(render, pending, max_regenerate, attempts)
        verdicts = (
            checks.check([item.image for item in items], [item.job.label for item in items])
            if checks is not None
            else [None] * len(items)
        )
        retry = []
        for item, verdict in zip(items, verdicts):
            item.screen = verdict
            if verdict is None or not verdict.rejected:
                result.kept.append(item)
                continue
            result.rejected.append(item)
            attempts[item.job.id] = item.attempt + 1
            rejections[item.job.id] += 1
            if rejections[item.job.id] >= max_attempts:
                reason = checks.ended_reason(verdict, item.job.id, item.job.label, max_attempts)
                result.ended.setdefault(item.job.label, reason)
            retry.append(item.job)
        pending, items = [job for job in retry if not stopped(job.label)], None
    order = {job.id: i for i, job in enumerate(jobs)}
    result.kept.sort(key=lambda item: order[item.job.id])
    return result
