"""The `generate` job: manifest -> plan -> batches -> pipeline -> writers -> run.json + dataset card."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from medisyn_cli.core.batching import batched
from medisyn_cli.core.errors import Cancelled, Interrupted, MedisynError
from medisyn_cli.core.progress import console, make_progress, rate_text
from medisyn_cli.core.shards import Shard, resolve_shard
from medisyn_cli.core.store import WorkDir
from medisyn_cli.dataset.manifest import Manifest, load_manifest
from medisyn_cli.generate.claim import claim_out, explained_failures, out_state, refuse_if_busy, start_out
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.finish import ClassCount, RunSummary, completed_summary, finish_run, partial_summary
from medisyn_cli.generate.plan import iter_jobs, quotas
from medisyn_cli.generate.record import model_name, model_settings, start_record
from medisyn_cli.generate.runkey import RESOLVED, check_numbering, run_key
from medisyn_cli.generate.sampler import Renderer, Settings
from medisyn_cli.generate.validate import (
    check_options,
    check_writable,
    prompt_warnings,
    recorded_threads,
    resolved_threads,
    torch_threads,
)
from medisyn_cli.generate.worker import BatchWorker, Lane, Locked, stop_on_signals
from medisyn_cli.judge.screening import judge_record, open_judge, run_checks
from medisyn_cli.pipeline.load import load_pipeline, resolve_device, resolve_dtype
from medisyn_cli.pipeline.lora import apply_adapters, check_adapters, row_model
from medisyn_cli.pipeline.speed import apply_speed_options, choose_batch_size
from medisyn_cli.screening.index import load_index
from medisyn_cli.screening.screener import Screener


def default_out(manifest: str | Path) -> Path:
    """Without --out: a folder named after the manifest, in the current directory."""
    return Path.cwd() / Path(manifest).stem


def plan_run(config: GenerateConfig) -> tuple[Manifest, dict[str, int]]:
    """Validate the manifest and split --n into class quotas, before any model is loaded."""
    manifest = load_manifest(config.manifest)
    return manifest, quotas(manifest.weights(), config.n)


def open_index(config: GenerateConfig):
    """The screening index and threshold of --index / --threshold, checked before any model loads."""
    if config.max_attempts < 1:
        raise MedisynError(f"--max-attempts: must be at least 1, got {config.max_attempts}")
    if config.index is None:
        if config.threshold is not None:
            raise MedisynError("--threshold needs --index (the training index to screen against)")
        return None

    return Screener(load_index(config.index), config.threshold)


@dataclass
class Inputs:
    """What `run_generate` checked before loading the model: plan, output folder, shard and the run's checkers."""

    manifest: Manifest
    quotas: dict[str, int]
    out: Path
    shard: Shard
    screener: object = None
    judge: object = None
    adapters: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_generate(config: GenerateConfig, show_progress: bool = True, env: dict | None = None) -> RunSummary:
    """Generate a balanced, provenance-tracked dataset (see GenerateConfig), or this process's shard of it."""
    # 1. plan: everything that can fail on input fails here, before the model loads
    manifest, class_quotas = plan_run(config)
    out = Path(config.out) if config.out else default_out(config.manifest)
    check_options(config)
    check_writable(out)
    inputs = Inputs(
        manifest,
        class_quotas,
        out,
        resolve_shard(config.shard, os.environ if env is None else env),
        open_index(config),
        open_judge(config, manifest),
        check_adapters(config.loras, config.model, config.force_lora),
        prompt_warnings(manifest, config.model),
    )
    for warning in inputs.warnings:
        console.print(
            f"[yellow]warning:[/yellow] {config.manifest}: {warning}", highlight=False, soft_wrap=True
        )
    if config.dry_run:
        counts = {label: ClassCount(planned) for label, planned in class_quotas.items()}
        preview = list(islice(iter_jobs(manifest, class_quotas, config.seed), 20))
        return RunSummary(out, manifest, counts, dry_run=True, preview=preview, warnings=inputs.warnings)
    refuse_if_busy(out)
    state = out_state(out, config, inputs.shard)
    check_numbering(out, manifest, state)
    config = resolved_threads(recorded_threads(config, out, state))
    if state == "complete":
        return completed_summary(out, run_key(config, manifest, inputs.screener))
    with torch_threads(config.threads):
        return _generate(config, inputs, show_progress)


def _generate(config: GenerateConfig, inputs: Inputs, show_progress: bool) -> RunSummary:
    """Load the model, claim --out, make this shard's batches and consolidate the run if it is the last."""
    # 2. model, then the output folder (a model that fails to load leaves nothing behind)
    out, manifest, screener, judge = inputs.out, inputs.manifest, inputs.screener, inputs.judge
    device = resolve_device(config.device, inputs.shard.local_rank)
    dtype = resolve_dtype(config.dtype, device)
    if _emulated_bf16(dtype, device):
        console.print(
            "[yellow]warning:[/yellow] --dtype bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or "
            "AMX), so bf16 is emulated and many times slower than fp32 (a 512 px UNet convolution 208x slower "
            "on an AVX2 CPU, benchmarks/bf16_cpu.py); use --dtype fp32 here",
            highlight=False,
            soft_wrap=True,
        )
    with warmed(screener):  # the screen's one-time costs paid on the core the model's loading leaves idle
        pipe = load_pipeline(
            config.model, device, _weights_dtype(dtype, device), config.scheduler, config.offload
        )
    apply_adapters(pipe, inputs.adapters, config.fuse_lora)
    speed = apply_speed_options(
        pipe,
        config.channels_last,
        config.compile,
        config.vae_slicing,
        config.vae_tiling,
        config.attention_slicing,
    )
    speed["offload"] = config.offload
    settings = Settings(**model_settings(config, pipe), autocast_bf16=_autocast(dtype, device))
    config, speed["batch_size_from"] = resolve_batch_size(config, pipe, settings, device, out)
    claim = claim_out(out, config, inputs.shard)
    try:
        if claim.state == "complete":  # another process finished the run while this one loaded the model
            return completed_summary(out, run_key(config, manifest, screener))
        record = start_record(
            config, manifest, inputs.quotas, out, inputs.shard, device, dtype, settings, screener
        )
        record.update(
            speed=speed,
            warnings=inputs.warnings,
            replaces=claim.replaced and str(claim.replaced),
            adapters=[adapter.record() for adapter in inputs.adapters],
            judge=judge_record(judge, config),
        )
        start_out(out, record)
        work = WorkDir(out)
        work.create_or_join(
            record, RESOLVED
        )  # temp files a killed process left are overwritten when its batch is redone
        with explained_failures(out, work, claim.replaced):
            # 3. this shard's batches that are not done yet: generate, screen, write, mark done
            made = _make_batches(
                pipe,
                manifest,
                inputs.quotas,
                config,
                settings,
                run_checks(screener, judge, config),
                work,
                inputs.shard,
                show_progress,
            )
            # 4. the process that completes the run consolidates it: dataset files, the card, run.json last
            summary = finish_run(out, manifest) if _all_done(work) and work.lock() else None
        return summary or partial_summary(out, manifest, work, inputs.shard, made)
    finally:
        claim.release()


@contextmanager
def warmed(screener: Screener | None):
    """A thread runs `screener.warm_up()` while the block runs (loading the model: mostly one core); joined after."""
    if screener is None:
        yield
        return
    thread = threading.Thread(target=screener.warm_up, name="medisyn-warm-up", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def resolve_batch_size(config: GenerateConfig, pipe, settings, device, out: Path):
    """The config with its batch size set, and how it was chosen: given, recorded by the run being continued
    (every shard and resume must agree), or chosen for the device."""
    from dataclasses import replace

    if config.batch_size is not None:
        return config, "given"
    if not config.overwrite and WorkDir(out).exists():  # also a shard that started since out_state looked
        return replace(
            config, batch_size=WorkDir(out).read_config()["options"]["batch_size"]
        ), "recorded by the run"
    size, how = choose_batch_size(
        Renderer(pipe, settings, cache_prompts=False), device, settings.height * settings.width
    )
    return replace(config, batch_size=size), f"chosen ({how})"


def _all_done(work: WorkDir) -> bool:
    return len(work.done()) == work.read_config()["batches"]


def _make_batches(
    pipe,
    manifest: Manifest,
    class_quotas: dict,
    config: GenerateConfig,
    settings,
    screener,
    work: WorkDir,
    shard: Shard,
    show_progress: bool,
) -> int:
    """Make this shard's pending batches; returns how many were made.

    The model makes batch k+1 while a background thread screens and writes batch k (`Lane`); a batch that
    has near-copies gets its replacements from the model between two batches (one lock guards the model).
    """
    done = work.done()
    ended = {label: reason for rec in work.done_records() for label, reason in rec["ended"].items()}
    mine = Pending(work.read_config()["batches"], shard, done)
    constant = {
        "model": row_model(model_name(config.model), work.read_config().get("adapters")),
        "scheduler": config.scheduler,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "height": settings.height,
        "width": settings.width,
    }
    render = Locked(Renderer(pipe, settings, cache_prompts=config.cache_prompts))
    worker = BatchWorker(render, config, screener, constant, work)
    clock, tally = time.time(), {"made": 0, "images": 0}
    with (
        stop_on_signals() as stop,
        make_progress(disable=not show_progress) as progress,
        Lane(_overlap(config, pipe)) as lane,
    ):
        task = progress.add_task(
            f"generate {shard.name}" if shard.count > 1 else "generate",
            total=mine.images(sum(class_quotas.values()), config.batch_size),
            rate="",
            info="",
        )

        def finished(number: int, size: int, record: dict) -> None:
            ended.update(record["ended"])
            tally["made"], tally["images"] = tally["made"] + 1, tally["images"] + size
            progress.update(
                task,
                completed=tally["images"],
                info=f"batch {number}",
                rate=rate_text(tally["images"], time.time() - clock, "img"),
            )

        try:
            for number, jobs in _batches(manifest, class_quotas, config):
                if number not in mine:
                    continue
                wanted = [j for j in jobs if j.label not in ended]
                first = worker.first_attempt(wanted)
                lane.submit(
                    lambda n=number, w=wanted, f=first, size=len(jobs): finished(
                        n, size, worker.finish(n, w, f, dict(ended))
                    )
                )
                if stop["signal"]:
                    lane.drain()
                    raise Interrupted(
                        f"{stop['signal']}: stopped after batch {number}; {_done_text(work)}; resume "
                        f"with --resume (same options)"
                    )
        except KeyboardInterrupt:
            raise Cancelled(
                f"Ctrl-C: {_done_text(work)} (the batches in flight are made again); resume with "
                f"--resume (same options)"
            ) from None
    return tally["made"]


class Pending:
    """This shard's batches not done yet, held as a range and the done set (no set of every batch number: memory
    stays flat in --n)."""

    def __init__(self, batches: int, shard: Shard, done: set[int]):
        self.mine, self.done = range(shard.index, batches, shard.count), done

    def __contains__(self, number: int) -> bool:
        return number in self.mine and number not in self.done

    def images(self, total: int, size: int) -> int:
        """Images in these batches: every batch holds `size` but the plan's last, which holds the rest."""

        def count(number: int) -> int:
            return min(size, total - number * size)

        every = len(self.mine) * size - (size - count(self.mine[-1]) if self.mine else 0)
        return every - sum(count(number) for number in self.done if number in self.mine)


def _done_text(work: WorkDir) -> str:
    return f"{len(work.done())} of {work.read_config()['batches']} batches done"


def _overlap(config: GenerateConfig, pipe) -> bool:
    """--overlap, else on when the model runs on a GPU: on CPU the model's threads use every core and a writer
    thread only competes with them (benchmarks/overhead.py)."""
    if config.overlap is not None:
        return config.overlap
    return getattr(pipe, "device", None) is not None and pipe.device.type != "cpu"


def _batches(manifest: Manifest, class_quotas: dict, config: GenerateConfig):
    return enumerate(batched(iter_jobs(manifest, class_quotas, config.seed), config.batch_size))


def _weights_dtype(dtype, device):
    import torch

    return torch.float32 if _autocast(dtype, device) else dtype


def _autocast(dtype, device) -> bool:
    import torch

    return device.type == "cpu" and dtype == torch.bfloat16


def _emulated_bf16(dtype, device) -> bool:
    """bf16 autocast on a CPU without bfloat16 instructions: oneDNN emulates it, far slower than fp32."""
    return _autocast(dtype, device) and not native_bf16()


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), as oneDNN sees it."""
    import torch

    return getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)()
