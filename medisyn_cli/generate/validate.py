"""Checks of a `generate` run's options that need no model: each bad value is one line, before anything is written."""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.ownership import remove_temp
from medisyn_cli.core.store import WorkDir
from medisyn_cli.dataset.formats import parse_format_list
from medisyn_cli.dataset.manifest import Manifest
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.pipeline.load import SCHEDULERS, check_model_source, model_source

# A run's batches are files named in plan order (core.store.batch_name: 7 digits), and consolidation keeps a list
# of every image file of the run: 100 million images fit both (10 million batches of 10), a few GB of bookkeeping.
MAX_IMAGES = 10**8
MAX_BATCHES = 10**7


def check_options(config: GenerateConfig) -> None:
    """Fail on bad options before anything is written or loaded."""
    parse_format_list(",".join(config.formats))
    check_size(config.n, config.batch_size)
    if config.scheduler not in SCHEDULERS:
        raise MedisynError(
            f"--scheduler: unknown scheduler '{config.scheduler}' (choose from {', '.join(SCHEDULERS)})"
        )
    check_model_source(config.model)
    for name in (
        "steps",
        "height",
        "width",
        "batch_size",
        "threads",
        "rows_per_part",
        "max_attempts",
        "shard_size",
    ):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise MedisynError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
    if config.max_regenerate < 0:
        raise MedisynError(f"--max-regenerate: must be 0 or more, got {config.max_regenerate}")
    for name in ("height", "width"):
        value = getattr(config, name)
        if value is not None and (value % 8 or value > 8192):
            raise MedisynError(
                f"--{name}: {value} is not a multiple of 8 up to 8192 (the autoencoder works on "
                f"8x8 pixel blocks)"
            )
    if config.steps is not None and config.steps > 10_000:
        raise MedisynError(f"--steps: {config.steps} is more than 10000 denoising steps")
    if config.guidance is not None and not (math.isfinite(config.guidance) and 0 <= config.guidance <= 1000):
        raise MedisynError(f"--guidance: must be a number from 0 to 1000, got {config.guidance}")
    if config.threshold is not None and not (math.isfinite(config.threshold) and 0 < config.threshold <= 1):
        raise MedisynError(f"--threshold: {config.threshold} is outside (0, 1] (a cosine similarity)")


def check_size(n: int, batch_size: int | None) -> None:
    """--n within what one run can plan and consolidate; above 10 million images --batch-size must be given, so
    that the number of batches is known before the model loads."""
    if n > MAX_IMAGES:
        raise MedisynError(
            f"--n: {n} images is more than one run makes ({MAX_IMAGES:,}); split the dataset into several "
            f"runs (another --seed or manifest each)"
        )
    batches = -(-n // (batch_size or 1))
    if batches > MAX_BATCHES:
        raise MedisynError(
            f"--n {n}"
            + (f" with --batch-size {batch_size}" if batch_size else "")
            + f" makes {batches:,} batches, "
            f"more than {MAX_BATCHES:,}; give --batch-size {-(-n // MAX_BATCHES)} or more"
        )


def check_writable(out: Path) -> None:
    """--out (or the nearest folder above it that exists) must be a folder this process can write into."""
    existing = Path(os.path.abspath(out))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MedisynError(f"--out {out}: {existing} is a file, not a folder")
    probe = existing / f".medisyn-tmp-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise MedisynError(f"--out {out}: cannot write into {existing} ({exc.strerror})") from exc
    remove_temp(probe)


def recorded_threads(config: GenerateConfig, out: Path, state: str) -> GenerateConfig:
    """Without --threads, a run being continued (resume, another shard) uses the thread count it recorded."""
    if config.threads is not None or state == "new":
        return config
    recorded = None
    if WorkDir(out).exists():
        recorded = WorkDir(out).read_config()["options"].get("threads")
    elif (out / "run.json").exists():
        recorded = json.loads((out / "run.json").read_text()).get("options", {}).get("threads")
    return replace(config, threads=recorded) if recorded else config


def resolved_threads(config: GenerateConfig) -> GenerateConfig:
    """Without --threads (and no recorded count), the run uses and records torch's current thread count."""
    import torch

    return config if config.threads is not None else replace(config, threads=torch.get_num_threads())


@contextmanager
def torch_threads(threads: int):
    """torch's CPU threads set to `threads` for the block, then put back (pixels on CPU depend on the count)."""
    import torch

    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def prompt_warnings(manifest: Manifest, model: str | None) -> list[str]:
    """Warnings for classes whose prompts or labels a model never saw (from the captions and labels its
    medisyn.json lists): such a class is drawn as whatever the model knows, under this class's label."""
    folder = Path(model_source(model))
    try:
        known = json.loads((folder / "medisyn.json").read_text())
    except (OSError, ValueError):
        return []
    vocabulary = {word for caption in known.get("captions", []) for word in _words(caption)}
    labels = set(known.get("labels", []))
    warnings = []
    for label in manifest.labels:
        words = {word for row in manifest.variants(label) for word in _words(row.prompt)}
        unknown = sorted(words - vocabulary) if vocabulary else []
        if labels and label not in labels:
            warnings.append(f"class '{label}': the model was not trained on this label")
        elif unknown and len(unknown) * 2 >= len(words):
            warnings.append(
                f"class '{label}': {len(unknown)} of {len(words)} prompt words are not in the model's "
                f"training captions ({', '.join(unknown[:6])}); its images may not show this class"
            )
    return warnings


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower())
