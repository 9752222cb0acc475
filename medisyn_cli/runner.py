"""The `generate` job: manifest -> plan -> batches -> pipeline -> writers -> run.json + dataset card."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenerateConfig
from .errors import MedisynError
from .manifest import Manifest, load_manifest
from .plan import Job, batched, iter_jobs, quotas

RUN_FILE = "run.json"


@dataclass
class ClassCount:
    """Per-class tally for the closing table and run.json."""

    planned: int
    written: int = 0
    regenerated: int = 0


@dataclass
class RunSummary:
    """What a run did (or, for --dry-run, would do)."""

    out: Path
    manifest: Manifest
    counts: dict[str, ClassCount]
    seconds: float = 0.0
    dry_run: bool = False
    preview: list[Job] = field(default_factory=list)
    run: dict = field(default_factory=dict)


def default_out(manifest: str | Path) -> Path:
    """Without --out: a folder named after the manifest, in the current directory."""
    return Path.cwd() / Path(manifest).stem


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless --overwrite, and then only one that medisyn wrote."""
    if out.exists() and not out.is_dir():
        raise MedisynError(f"--out {out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MedisynError(f"--out {out}: folder exists and is not empty (use --overwrite to replace it)")
        if not any((out / name).exists() for name in (RUN_FILE, "parquet", "imagefolder", ".medisyn")):
            raise MedisynError(f"--out {out}: --overwrite only replaces a medisyn output folder, and this is not one")


def prepare_out(out: Path, overwrite: bool) -> Path | None:
    """Create the output folder; an overwritten one is moved aside (deleted only when the new run succeeds)."""
    check_out(out, overwrite)
    replaced = None
    if out.exists() and any(out.iterdir()):
        replaced = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        out.rename(replaced)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".medisyn").write_text("output folder of medisyn generate\n")
    return replaced


def model_settings(config: GenerateConfig, pipe) -> dict:
    """Steps, guidance and size: the options, else the model's medisyn.json, else the pipeline's defaults."""
    recommended = {}
    folder = Path(getattr(pipe, "name_or_path", "") or "")
    if (folder / "medisyn.json").exists():
        recommended = json.loads((folder / "medisyn.json").read_text()).get("recommended", {})
    size = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
    return {
        "steps": config.steps or recommended.get("steps", DEFAULT_STEPS),
        "guidance": config.guidance if config.guidance is not None else recommended.get("guidance", DEFAULT_GUIDANCE),
        "height": config.height or size,
        "width": config.width or size,
    }


def plan_run(config: GenerateConfig) -> tuple[Manifest, dict[str, int]]:
    """Validate the manifest and split --n into class quotas, before any model is loaded."""
    manifest = load_manifest(config.manifest)
    return manifest, quotas(manifest.weights(), config.n)


def check_options(config: GenerateConfig) -> None:
    """Fail on bad options before anything is written or loaded."""
    from .models import SCHEDULERS, check_model_source
    from .writers import parse_formats

    parse_formats(",".join(config.formats))
    if config.scheduler not in SCHEDULERS:
        raise MedisynError(f"--scheduler: unknown scheduler '{config.scheduler}' (choose from {', '.join(SCHEDULERS)})")
    check_model_source(config.model)
    for name in ("steps", "height", "width", "batch_size"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise MedisynError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")


def run_generate(config: GenerateConfig, show_progress: bool = True) -> RunSummary:
    """Generate a balanced, provenance-tracked dataset (see GenerateConfig for the options)."""
    from .generate import Settings, generate_batch
    from .models import load_pipeline, resolve_device, resolve_dtype
    from .progress import make_progress, rate_text
    from .writers import make_writers

    # 1. plan: everything that can fail on input fails here, before the model loads
    manifest, class_quotas = plan_run(config)
    counts = {label: ClassCount(planned) for label, planned in class_quotas.items()}
    out = Path(config.out) if config.out else default_out(config.manifest)
    check_options(config)
    if config.dry_run:
        preview = list(iter_jobs(manifest, class_quotas, config.seed))[:20]
        return RunSummary(out, manifest, counts, dry_run=True, preview=preview)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    check_out(out, config.overwrite)
    started, clock = datetime.now(timezone.utc), time.time()

    # 2. model, then the output folder (a model that fails to load leaves nothing behind)
    pipe = load_pipeline(config.model, device, _weights_dtype(dtype, device), config.scheduler)
    replaced = prepare_out(out, config.overwrite)
    values = model_settings(config, pipe)
    settings = Settings(**values, autocast_bf16=_autocast(dtype, device))
    constant = {"model": _model_name(config.model), "scheduler": config.scheduler, **values}

    # 3. generate and stream into the writers
    writers = make_writers(config.formats, out, manifest.labels, config.rows_per_part)
    total = sum(class_quotas.values())
    try:
        with make_progress(disable=not show_progress) as progress:
            task = progress.add_task("generate", total=total, rate="", info="")
            written = 0
            for jobs in batched(iter_jobs(manifest, class_quotas, config.seed), config.batch_size):
                for item in generate_batch(pipe, jobs, settings, config.seed, config.max_regenerate):
                    row = provenance_row(item, constant)
                    png = item.png()
                    for writer in writers:
                        writer.write(row, png)
                    counts[item.job.label].written += 1
                    counts[item.job.label].regenerated += int(item.attempt > 0)
                written += len(jobs)
                progress.update(task, completed=written, rate=rate_text(written, time.time() - clock, "img"))
    except BaseException:
        for writer in writers:
            writer.abort()
        if replaced is not None:  # put the previous dataset back rather than leave a partial one
            shutil.rmtree(out, ignore_errors=True)
            replaced.rename(out)
        raise
    outputs = [writer.close() for writer in writers]

    # 4. provenance: run.json last, then the dataset card
    summary = RunSummary(out, manifest, counts, seconds=time.time() - clock)
    summary.run = run_record(config, manifest, summary, outputs, started, device, dtype, settings)
    write_json(out / RUN_FILE, summary.run)
    from .card import write_card

    write_card(out, summary)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return summary


def _weights_dtype(dtype, device):
    import torch

    return torch.float32 if _autocast(dtype, device) else dtype


def _autocast(dtype, device) -> bool:
    import torch

    return device.type == "cpu" and dtype == torch.bfloat16


def _model_name(model: str | None) -> str:
    return "medisyn-mini (bundled)" if model is None else model


def provenance_row(item, constant: dict) -> dict:
    """The metadata stored with each image."""
    job = item.job
    return {"id": job.id, "label": job.label, "label_id": job.label_id, "prompt": job.prompt,
            "negative_prompt": job.negative_prompt, "seed": item.seed, "attempt": item.attempt, "mode": job.mode,
            **constant}


def run_record(config: GenerateConfig, manifest: Manifest, summary: RunSummary, outputs: list[dict], started,
               device, dtype, settings) -> dict:
    """Everything needed to reproduce the run."""
    from .models import model_source, weight_hashes

    return {
        "medisyn": _version("medisyn"),
        "command": "generate",
        "options": config.to_dict(),
        "manifest": {"path": str(manifest.path), "sha256": manifest.sha256, "classes": manifest.labels},
        "model": {"source": model_source(config.model), "name": _model_name(config.model),
                  "weights_sha256": weight_hashes(config.model)},
        "sampling": {"scheduler": config.scheduler, "steps": settings.steps, "guidance": settings.guidance,
                     "height": settings.height, "width": settings.width},
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "libraries": {name: _version(name) for name in ("torch", "diffusers", "transformers", "pyarrow", "pillow")},
        "python": platform.python_version(), "platform": platform.platform(),
        "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
        "seconds": round(summary.seconds, 2),
        "classes": {label: vars(count) for label, count in summary.counts.items()},
        "outputs": outputs,
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_json(path: Path, data: dict) -> None:
    """Write JSON to a temp name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
