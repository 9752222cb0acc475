"""The run key: every option a `generate` run's pixels and files depend on.

It is written to OUT/_work/config.json when a run starts and to run.json when it completes. Every shard, resume
and `--resume` of a complete run compares its own key with the recorded one and refuses a mismatch, naming each
option that differs. Options left to a default that the run resolved itself (steps, guidance and size from the
model, batch size, threads) are compared only when given.
"""

from __future__ import annotations

import json
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.names import class_names
from medisyn_cli.core.store import WorkDir
from medisyn_cli.dataset.manifest import Manifest
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.judge.screening import judge_key
from medisyn_cli.pipeline.load import model_source, weight_hashes
from medisyn_cli.pipeline.lora import adapter_key

# speed options that may change pixel values by rounding: every shard and resume of a run must use the same
NUMERIC_OPTIONS = ("cache_prompts", "channels_last", "compile", "vae_slicing", "vae_tiling")
RESOLVED = ("steps", "guidance", "height", "width", "batch_size", "threads")  # None: not given, use the run's


def run_key(config: GenerateConfig, manifest: Manifest, screener, sampling: dict | None = None) -> dict:
    """The key of this run; `sampling` None gives the requested key (model-resolved values as given, or None)."""
    sampling = sampling or {
        "scheduler": config.scheduler,
        "steps": config.steps,
        "guidance": config.guidance,
        "height": config.height,
        "width": config.width,
    }
    screened = screener is not None
    return {
        "manifest_sha256": manifest.sha256,
        "n": config.n,
        "seed": config.seed,
        "model": model_source(config.model),
        "weights_sha256": weight_hashes(config.model),
        **sampling,
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "threads": config.threads,
        "formats": list(config.formats),
        "rows_per_part": config.rows_per_part,
        "max_regenerate": config.max_regenerate,
        "index_fingerprint": screener.index.meta.get("fingerprint") if screened else None,
        "threshold": screener.threshold if screened else None,
        "max_attempts": config.max_attempts if screened or config.judge else None,
        **judge_key(config),
        **({"checks": list(config.checks)} if config.checks else {}),  # plug-in checks; only when given
        **{name: getattr(config, name) for name in NUMERIC_OPTIONS},
        # sliced attention rounds differently; only when on, so that older keys still match. --offload moves
        # weights between memories (the same kernels run on the same device) and is not compared
        **({"attention_slicing": True} if config.attention_slicing else {}),
        **({"mark": False} if not config.mark else {}),  # unmarked files differ; only when off (older keys)
        # webdataset shards are cut at --shard-size images; only where it matters, so that older keys still match
        **({"shard_size": config.shard_size} if "webdataset" in config.formats else {}),
        **adapter_key(config),
    }


def key_of_record(run: dict) -> dict:
    """The key a run.json records; for a run.json of medisyn 0.1 (no key), rebuilt from its sections."""
    if "key" in run:
        return run["key"]
    options, screening = run.get("options", {}), run.get("screening") or {}
    return {
        "manifest_sha256": run.get("manifest", {}).get("sha256"),
        "n": options.get("n"),
        "seed": options.get("seed"),
        "model": run.get("model", {}).get("source"),
        "weights_sha256": run.get("model", {}).get("weights_sha256"),
        **run.get("sampling", {}),
        "dtype": options.get("dtype"),
        "batch_size": options.get("batch_size"),
        "threads": None,
        "formats": options.get("formats"),
        "rows_per_part": options.get("rows_per_part"),
        "max_regenerate": options.get("max_regenerate"),
        "index_fingerprint": screening.get("fingerprint"),
        "threshold": screening.get("threshold"),
        "max_attempts": screening.get("max_attempts"),
        **{name: options.get(name) for name in NUMERIC_OPTIONS},
    }


def check_numbering(out: Path, manifest: Manifest, state: str) -> None:
    """A run continued (resume, shard, complete) must number its classes as this version does (label_id by
    sorted folder name); an older medisyn numbered them in manifest order. Other differences: the run key."""
    if state == "new":
        return
    work = WorkDir(out)
    path = work.config_path if work.exists() else out / "run.json"
    try:
        recorded = json.loads(path.read_text())["manifest"]["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # unreadable records are reported by the checks that need them
    wanted = class_names(manifest.labels)
    if recorded != wanted and sorted(recorded) == sorted(wanted):
        raise MedisynError(
            f"--out {out}: this run numbers its classes in manifest order (label_id 0 = '{recorded[0]}'), "
            f"an older medisyn's rule; this version numbers them by sorted folder name, as ImageFolder "
            f"loaders do (0 = '{wanted[0]}'), so its rows would disagree. Continue it with the medisyn that "
            f"started it, or use --overwrite to start again"
        )
