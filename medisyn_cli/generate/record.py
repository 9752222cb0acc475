"""The run record: everything needed to reproduce a run (options, key, model, sampling, screening, versions),
written to OUT/_work/config.json before the first batch and to run.json at the end."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from medisyn_cli.core.names import class_names
from medisyn_cli.core.outdir import new_run_id
from medisyn_cli.core.shards import Shard, batch_count
from medisyn_cli.dataset.licence import portable
from medisyn_cli.dataset.manifest import Manifest
from medisyn_cli.generate.config import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenerateConfig
from medisyn_cli.generate.finish import REJECTED_FILE
from medisyn_cli.generate.runkey import run_key
from medisyn_cli.pipeline.load import model_source


def model_settings(config: GenerateConfig, pipe) -> dict:
    """Steps, guidance and size: the options, else the model's medisyn.json, else the pipeline's defaults."""
    recommended = {}
    folder = Path(getattr(pipe, "name_or_path", "") or "")
    if (folder / "medisyn.json").exists():
        recommended = json.loads((folder / "medisyn.json").read_text()).get("recommended", {})
    size = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
    return {
        "steps": config.steps or recommended.get("steps", DEFAULT_STEPS),
        "guidance": config.guidance
        if config.guidance is not None
        else recommended.get("guidance", DEFAULT_GUIDANCE),
        "height": config.height or size,
        "width": config.width or size,
    }


def screening_record(screener) -> dict | None:
    """What run.json records of the screening: index, fingerprint, embedder, threshold (rejections added at the end)."""
    if screener is None:
        return None
    meta = screener.index.meta
    return {
        "index": str(Path(screener.index.path).resolve()),
        "fingerprint": meta.get("fingerprint"),
        "embedder": meta["embedder"],
        "index_type": meta["index"]["type"],
        "index_count": meta["count"],
        "threshold": screener.threshold,
        "max_attempts": None,
        "rejected_file": REJECTED_FILE,
    }


def model_name(model: str | None) -> str:
    """The model as rows, marks and the card name it: a hub id, or a local folder's or file's name (never its path,
    which would travel with the dataset); run.json's `source` keeps the path."""
    return "medisyn-mini (bundled)" if model is None else portable(model)


def start_record(
    config: GenerateConfig,
    manifest: Manifest,
    class_quotas: dict[str, int],
    out: Path,
    shard: Shard,
    device,
    dtype,
    settings,
    screener,
) -> dict:
    """Everything needed to reproduce the run, written to OUT/_work/config.json before the first batch."""
    screening = screening_record(screener)
    if screening:
        screening["max_attempts"] = config.max_attempts
    sampling = {
        "scheduler": config.scheduler,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "height": settings.height,
        "width": settings.width,
    }
    key = run_key(config, manifest, screener, sampling)
    hashes = key["weights_sha256"]  # hashing a model's weights reads every byte: once per run
    total = sum(class_quotas.values())
    return {
        "key": key,
        "run_id": new_run_id(),
        "medisyn": _version("medisyn"),
        "command": "generate",
        "options": {**config.to_dict(), "out": str(out), "shard": None, "resume": False, "overwrite": False},
        "manifest": {
            "path": str(manifest.path),
            "sha256": manifest.sha256,
            "classes": class_names(manifest.labels),
        },
        "model": {
            "source": model_source(config.model),
            "name": model_name(config.model),
            "weights_sha256": hashes,
        },
        "sampling": sampling,
        "screening": screening,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "libraries": {
            name: _version(name) for name in ("torch", "diffusers", "transformers", "pyarrow", "pillow")
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started": datetime.now(timezone.utc).isoformat(),
        "quotas": class_quotas,
        "total": total,
        "batches": batch_count(total, config.batch_size),
        "shards": shard.count,
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
