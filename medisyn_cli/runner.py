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
from .screen import RejectedLog

RUN_FILE, REJECTED_FILE = "run.json", "rejected.parquet"


@dataclass
class ClassCount:
    """Per-class tally for the closing table and run.json."""

    planned: int
    written: int = 0
    regenerated: int = 0
    rejected: int = 0
    ended: str | None = None  # why the class stopped short of its quota (it kept producing near-copies)


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
    screened: bool = False

    @property
    def ended(self) -> dict[str, str]:
        """Classes that stopped short of their quota, with the reason."""
        return {label: count.ended for label, count in self.counts.items() if count.ended}


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


def open_index(config: GenerateConfig):
    """The screening index and threshold of --index / --threshold, checked before any model loads."""
    if config.max_attempts < 1:
        raise MedisynError(f"--max-attempts: must be at least 1, got {config.max_attempts}")
    if config.index is None:
        if config.threshold is not None:
            raise MedisynError("--threshold needs --index (the training index to screen against)")
        return None
    from .index import load_index
    from .screen import Screener

    return Screener(load_index(config.index), config.threshold)


def run_generate(config: GenerateConfig, show_progress: bool = True) -> RunSummary:
    """Generate a balanced, provenance-tracked dataset (see GenerateConfig for the options)."""
    from .generate import Settings
    from .models import load_pipeline, resolve_device, resolve_dtype
    from .writers import make_writers

    # 1. plan: everything that can fail on input fails here, before the model loads
    manifest, class_quotas = plan_run(config)
    counts = {label: ClassCount(planned) for label, planned in class_quotas.items()}
    out = Path(config.out) if config.out else default_out(config.manifest)
    check_options(config)
    screener = open_index(config)
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

    # 3. generate, screen and stream into the writers
    sinks = Sinks(make_writers(config.formats, out, manifest.labels, config.rows_per_part),
                  RejectedLog(out / REJECTED_FILE) if screener else None)
    try:
        _stream(pipe, manifest, class_quotas, config, settings, constant, screener, sinks, counts, show_progress)
    except BaseException:
        sinks.abort()
        if replaced is not None:  # put the previous dataset back rather than leave a partial one
            shutil.rmtree(out, ignore_errors=True)
            replaced.rename(out)
        raise
    outputs = sinks.close()

    # 4. provenance: run.json last, then the dataset card
    summary = RunSummary(out, manifest, counts, seconds=time.time() - clock, screened=screener is not None)
    summary.run = run_record(config, manifest, summary, outputs, started, device, dtype, settings)
    summary.run["screening"] = screening_record(screener, counts)
    write_json(out / RUN_FILE, summary.run)
    from .card import write_card

    write_card(out, summary)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return summary


@dataclass
class Sinks:
    """Where a run's images go: the dataset writers, and the log of rejected near-copies when screening."""

    writers: list
    rejected: object | None = None

    def abort(self) -> None:
        for sink in self.writers + [self.rejected]:
            if sink is not None:
                sink.abort()

    def close(self) -> list[dict]:
        outputs = [writer.close() for writer in self.writers]
        return outputs + ([{"format": "rejected", **self.rejected.close()}] if self.rejected else [])


def _stream(pipe, manifest: Manifest, class_quotas: dict, config: GenerateConfig, settings, constant: dict,
            screener, sinks: Sinks, counts: dict[str, ClassCount], show_progress: bool) -> None:
    """Generate the plan batch by batch, screen each batch, write what is kept; end classes that memorise."""
    from .generate import generate_screened
    from .progress import make_progress, rate_text

    clock, written = time.time(), 0
    jobs = (job for job in iter_jobs(manifest, class_quotas, config.seed) if not counts[job.label].ended)
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task("generate", total=sum(class_quotas.values()), rate="", info="")
        for batch in batched(jobs, config.batch_size):
            batch = [job for job in batch if not counts[job.label].ended]
            result = generate_screened(pipe, batch, settings, config.seed, screener, config.max_attempts,
                                       config.max_regenerate)
            for item in result.kept:
                png, row = item.png(), provenance_row(item, constant)
                for writer in sinks.writers:
                    writer.write(row, png)
                counts[item.job.label].written += 1
                counts[item.job.label].regenerated += int(item.attempt > 0)
            if sinks.rejected is not None:
                sinks.rejected.write(result.rejected)
            for item in result.rejected:
                counts[item.job.label].rejected += 1
            for label, reason in result.ended.items():
                counts[label].ended = reason
            written += len(result.kept)
            rejected = sum(c.rejected for c in counts.values())
            progress.update(task, completed=written, total=sum(c.written if c.ended else c.planned
                                                                for c in counts.values()),
                            rate=rate_text(written, time.time() - clock, "img"),
                            info=f"{rejected} near-copies replaced" if screener else "")


def screening_record(screener, counts: dict[str, ClassCount]) -> dict | None:
    """What run.json records of the screening: index fingerprint, embedder, threshold, rejections."""
    if screener is None:
        return None
    meta = screener.index.meta
    return {"index": str(Path(screener.index.path).resolve()), "fingerprint": meta.get("fingerprint"),
            "embedder": meta["embedder"], "index_type": meta["index"]["type"], "index_count": meta["count"],
            "threshold": screener.threshold, "rejected": sum(c.rejected for c in counts.values()),
            "rejected_file": REJECTED_FILE,
            "ended_classes": {label: c.ended for label, c in counts.items() if c.ended}}


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
    job, screen = item.job, item.screen
    return {"id": job.id, "label": job.label, "label_id": job.label_id, "prompt": job.prompt,
            "negative_prompt": job.negative_prompt, "seed": item.seed, "attempt": item.attempt, "mode": job.mode,
            **constant, "nn_id": screen.nn_id if screen else None,
            "nn_similarity": screen.nn_similarity if screen else None}


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
