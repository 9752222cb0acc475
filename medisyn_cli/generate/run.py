"""The `generate` job: manifest -> plan -> batches -> pipeline -> writers -> run.json + dataset card."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

from medisyn_cli.core.errors import Cancelled, Interrupted, MedisynError
from medisyn_cli.core.files import write_json
from medisyn_cli.core.outdir import (
    LOCK,
    MARKER,
    claim_marker,
    discard_previous,
    is_ours,
    move_aside,
    new_run_id,
)
from medisyn_cli.core.progress import console, make_progress, rate_text
from medisyn_cli.core.runlock import RunBusy, RunLock, busy_message, read_holder
from medisyn_cli.core.shards import Shard, batch_count, resolve_shard, shard_batches
from medisyn_cli.core.store import WORK, IncompleteRun, WorkDir, batch_name, differences, missing_report
from medisyn_cli.generate.card import write_card
from medisyn_cli.generate.config import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenerateConfig, command_line
from medisyn_cli.generate.consolidate import consolidate
from medisyn_cli.generate.consolidate import remove as remove_work
from medisyn_cli.generate.manifest import Manifest, load_manifest
from medisyn_cli.generate.plan import Job, batched, iter_jobs, quotas
from medisyn_cli.generate.runkey import RESOLVED, key_of_record, run_key
from medisyn_cli.generate.sampler import Renderer, Settings, generate_batch, generate_screened
from medisyn_cli.generate.validate import (
    check_options,
    check_writable,
    prompt_warnings,
    recorded_threads,
    resolved_threads,
    torch_threads,
)
from medisyn_cli.generate.writers import make_writers
from medisyn_cli.judge.screening import (
    JudgedRejectedLog,
    judge_record,
    judge_totals,
    open_judge,
    rejected_log,
    with_judge,
)
from medisyn_cli.pipeline.load import load_pipeline, model_source, resolve_device, resolve_dtype
from medisyn_cli.pipeline.lora import apply_adapters, check_adapters, row_model
from medisyn_cli.pipeline.speed import apply_speed_options, choose_batch_size
from medisyn_cli.screening.index import load_index
from medisyn_cli.screening.screener import RejectedLog, Screener

RUN_FILE, REJECTED_FILE = "run.json", "rejected.parquet"


@dataclass
class ClassCount:
    """Per-class tally for the closing table and run.json."""
    planned: int
    written: int = 0
    regenerated: int = 0
    rejected: int = 0
    label_rejected: int = 0     # rejected by the label check (generate --judge)
    ended: str | None = None  # why the class stopped short of its quota (it kept producing near-copies)


@dataclass
class RunSummary:
    """What a run did (or, for --dry-run, would do)."""
    out: Path
    manifest: Manifest | None
    counts: dict[str, ClassCount]
    seconds: float = 0.0
    dry_run: bool = False
    preview: list[Job] = field(default_factory=list)
    run: dict = field(default_factory=dict)
    screened: bool = False
    complete: bool = True       # False: this shard is done, other shards are not
    note: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ended(self) -> dict[str, str]:
        """Classes that stopped short of their quota, with the reason."""
        return {label: count.ended for label, count in self.counts.items() if count.ended}


def default_out(manifest: str | Path) -> Path:
    """Without --out: a folder named after the manifest, in the current directory."""
    return Path.cwd() / Path(manifest).stem


def out_state(out: Path, config: GenerateConfig, shard: Shard) -> str:
    """'new', 'join' (an unfinished run to continue) or 'complete'; a clear error for anything else."""
    if out.exists() and not out.is_dir():
        raise MedisynError(f"--out {out}: exists and is not a folder")
    if not out.exists() or not any(p.name != LOCK for p in out.iterdir()):
        return "new"
    if not is_ours(out):
        raise MedisynError(f"--out {out}: folder exists, is not empty and was not made by medisyn generate (it has "
                           f"no {MARKER} marker), so medisyn will neither write into it nor delete it "
                           f"(--overwrite included); choose another --out")
    if config.overwrite:
        if shard.count > 1:
            raise MedisynError("--overwrite with shards would let each shard delete the others' work; "
                               f"delete {out} first, then start the shards")
        return "new"
    joining = config.resume or shard.count > 1
    if (out / RUN_FILE).exists():
        if joining:
            return "complete"
        raise MedisynError(f"--out {out}: holds a complete medisyn run; use --resume to check it is this run, "
                           f"--overwrite to replace it (the old one is kept until the new one completes), or "
                           f"another --out")
    if joining:
        return "join"
    done = len(WorkDir(out).done()) if WorkDir(out).exists() else 0
    raise MedisynError(f"--out {out}: holds an unfinished run ({done} batches done); add --resume to continue "
                       f"it, or --overwrite to start again (the unfinished run is moved aside, not deleted)")


@dataclass
class Claim:
    """This process's hold on --out: its state under the lock, and the run moved aside by --overwrite."""
    state: str
    replaced: Path | None = None
    lock: RunLock | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def claim_out(out: Path, config: GenerateConfig, shard: Shard) -> Claim:
    """Lock --out (single-process runs), re-check its state under the lock, move an overwritten run aside.

    Shards of one run share --out and coordinate per batch; they only check that no single process holds it.
    """
    if shard.count > 1:
        refuse_if_busy(out)
        return Claim(out_state(out, config, shard))
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out / LOCK, f"--out {out}")
    try:
        lock.acquire()
        claim = Claim(out_state(out, config, shard), lock=lock)
        if claim.state == "new" and any(p.name != LOCK for p in out.iterdir()):
            claim.replaced = move_aside(out)
            out.mkdir()
            claim.lock = RunLock(out / LOCK, f"--out {out}").acquire()
            lock.release()
        return claim
    except BaseException:
        lock.release()
        if not existed and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise


def refuse_if_busy(out: Path) -> None:
    """RunBusy, naming the process, if a live single process holds --out."""
    holder = read_holder(out / LOCK)
    if holder is not None and not RunLock(out / LOCK).is_stale(holder):
        raise RunBusy(busy_message(out / LOCK, f"--out {out}", holder))


def start_out(out: Path, record: dict) -> None:
    """Mark a new output folder as this run's (a joined run keeps its marker and run id)."""
    record["run_id"] = claim_marker(out, record["run_id"])


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
    inputs = Inputs(manifest, class_quotas, out, resolve_shard(config.shard, os.environ if env is None else env),
                    open_index(config), open_judge(config, manifest),
                    check_adapters(config.loras, config.model, config.force_lora),
                    prompt_warnings(manifest, config.model))
    for warning in inputs.warnings:
        console.print(f"[yellow]warning:[/yellow] {config.manifest}: {warning}", highlight=False, soft_wrap=True)
    if config.dry_run:
        counts = {label: ClassCount(planned) for label, planned in class_quotas.items()}
        preview = list(islice(iter_jobs(manifest, class_quotas, config.seed), 20))
        return RunSummary(out, manifest, counts, dry_run=True, preview=preview, warnings=inputs.warnings)
    refuse_if_busy(out)
    state = out_state(out, config, inputs.shard)
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
    pipe = load_pipeline(config.model, device, _weights_dtype(dtype, device), config.scheduler)
    apply_adapters(pipe, inputs.adapters, config.fuse_lora)
    speed = apply_speed_options(pipe, config.channels_last, config.compile, config.vae_slicing, config.vae_tiling)
    settings = Settings(**model_settings(config, pipe), autocast_bf16=_autocast(dtype, device))
    config, speed["batch_size_from"] = resolve_batch_size(config, pipe, settings, device, out)
    claim = claim_out(out, config, inputs.shard)
    try:
        if claim.state == "complete":  # another process finished the run while this one loaded the model
            return completed_summary(out, run_key(config, manifest, screener))
        record = start_record(config, manifest, inputs.quotas, out, inputs.shard, device, dtype, settings, screener)
        record.update(speed=speed, warnings=inputs.warnings, replaces=claim.replaced and str(claim.replaced),
                      adapters=[adapter.record() for adapter in inputs.adapters], judge=judge_record(judge, config))
        start_out(out, record)
        work = WorkDir(out)
        work.create_or_join(record, RESOLVED)  # temp files a killed process left are overwritten when its batch is redone
        with explained_failures(out, work, claim.replaced):
            # 3. this shard's batches that are not done yet: generate, screen, write, mark done
            made = _make_batches(pipe, manifest, inputs.quotas, config, settings,
                                 with_judge(screener, judge, config), work, inputs.shard, show_progress)
            # 4. the process that completes the run consolidates it: dataset files, the card, run.json last
            summary = finish_run(out, manifest) if _all_done(work) and work.lock() else None
        return summary or partial_summary(out, manifest, work, inputs.shard, made)
    finally:
        claim.release()


@contextmanager
def explained_failures(out: Path, work: WorkDir, replaced: Path | None):
    """A failed or stopped run says what it leaves: batches done, how to resume, where the previous run is."""
    import errno

    kept = f"; the previous run in {out} is kept intact at {replaced} until this one completes" if replaced else ""
    try:
        yield
    except Interrupted as exc:
        raise type(exc)(f"{exc}{kept}") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
            raise
        done = f"{len(work.done())} of {work.read_config()['batches']} batches are done and kept"
        raise MedisynError(f"{exc.filename or out}: {exc.strerror} (errno {exc.errno}); {done}: fix it, then "
                           f"resume with --resume (same options){kept}") from exc


def resolve_batch_size(config: GenerateConfig, pipe, settings, device, out: Path):
    """The config with its batch size set, and how it was chosen: given, recorded by the run being continued
    (every shard and resume must agree), or chosen for the device."""
    from dataclasses import replace


    if config.batch_size is not None:
        return config, "given"
    if not config.overwrite and WorkDir(out).exists():  # also a shard that started since out_state looked
        return replace(config, batch_size=WorkDir(out).read_config()["options"]["batch_size"]), "recorded by the run"
    size, how = choose_batch_size(Renderer(pipe, settings, cache_prompts=False), device,
                                  settings.height * settings.width)
    return replace(config, batch_size=size), f"chosen ({how})"


def _all_done(work: WorkDir) -> bool:
    return len(work.done()) == work.read_config()["batches"]


@contextmanager
def stop_on_signals():
    """SIGTERM and SIGUSR1 (SLURM preemption and --signal warnings) set a flag checked after each batch.

    SLURM may deliver both (SIGTERM to every process, USR1 forwarded by the batch script): the first one counts.
    Ctrl-C (SIGINT) still stops at once.
    """
    import signal
    import threading

    flag = {"signal": None}

    def handler(number, frame):
        flag["signal"] = flag["signal"] or signal.Signals(number).name

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {name: signal.signal(getattr(signal, name), handler) for name in ("SIGTERM", "SIGUSR1")}
    try:
        yield flag
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)


def _make_batches(pipe, manifest: Manifest, class_quotas: dict, config: GenerateConfig, settings, screener,
                  work: WorkDir, shard: Shard, show_progress: bool) -> int:
    """Make this shard's pending batches; returns how many were made.

    The model makes batch k+1 while a background thread screens and writes batch k (`Lane`); a batch that
    has near-copies gets its replacements from the model between two batches (one lock guards the model).
    """
    done = work.done()
    ended = {label: reason for rec in work.done_records() for label, reason in rec["ended"].items()}
    mine = set(shard_batches(work.read_config()["batches"], shard)) - done
    constant = {"model": row_model(_model_name(config.model), work.read_config().get("adapters")),
                "scheduler": config.scheduler, "steps": settings.steps,
                "guidance": settings.guidance, "height": settings.height, "width": settings.width}
    render = Locked(Renderer(pipe, settings, cache_prompts=config.cache_prompts))
    clock, tally = time.time(), {"made": 0, "images": 0}
    with stop_on_signals() as stop, make_progress(disable=not show_progress) as progress, \
            Lane(_overlap(config, pipe)) as lane:
        task = progress.add_task(f"generate {shard.name}" if shard.count > 1 else "generate",
                                 total=sum(len(jobs) for b, jobs in _batches(manifest, class_quotas, config) if b in mine),
                                 rate="", info="")

        def finished(number: int, size: int, record: dict) -> None:
            ended.update(record["ended"])
            tally["made"], tally["images"] = tally["made"] + 1, tally["images"] + size
            progress.update(task, completed=tally["images"], info=f"batch {number}",
                            rate=rate_text(tally["images"], time.time() - clock, "img"))

        try:
            for number, jobs in _batches(manifest, class_quotas, config):
                if number not in mine:
                    continue
                wanted = [j for j in jobs if j.label not in ended]
                first = generate_batch(render, wanted, config.seed, config.max_regenerate) if wanted else []
                lane.submit(lambda n=number, w=wanted, f=first, size=len(jobs): finished(
                    n, size, _make_batch(render, n, w, config, screener, constant, work, f, dict(ended))))
                if stop["signal"]:
                    lane.drain()
                    raise Interrupted(f"{stop['signal']}: stopped after batch {number}; {_done_text(work)}; resume "
                                      f"with --resume (same options)")
        except KeyboardInterrupt:
            raise Cancelled(f"Ctrl-C: {_done_text(work)} (the batches in flight are made again); resume with "
                            f"--resume (same options)") from None
    return tally["made"]


def _done_text(work: WorkDir) -> str:
    return f"{len(work.done())} of {work.read_config()['batches']} batches done"


def _overlap(config: GenerateConfig, pipe) -> bool:
    """--overlap, else on when the model runs on a GPU: on CPU the model's threads use every core and a writer
    thread only competes with them (benchmarks/overhead.py)."""
    if config.overlap is not None:
        return config.overlap
    return getattr(pipe, "device", None) is not None and pipe.device.type != "cpu"


class Locked:
    """A renderer shared by the main thread and the lane: one call at a time."""
    def __init__(self, render):
        import threading

        self.render, self.lock = render, threading.Lock()

    def __call__(self, *args):
        with self.lock:
            return self.render(*args)


class Lane:
    """One background thread that screens and writes a batch while the model makes the next one.

    At most one batch waits in the lane, so memory holds two batches. `enabled=False` runs the work in place.
    An error in the lane is raised by the next submit, drain or exit.
    """
    def __init__(self, enabled: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(1, thread_name_prefix="medisyn-write") if enabled else None
        self.pending = None

    def submit(self, work) -> None:
        self.drain()
        if self.pool is None:
            work()
        else:
            self.pending = self.pool.submit(work)

    def drain(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        try:
            self.drain()  # the batch in the lane is finished (and marked done) even when the main thread failed
        except BaseException:
            if kind is None:
                raise
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)


def _batches(manifest: Manifest, class_quotas: dict, config: GenerateConfig):
    return enumerate(batched(iter_jobs(manifest, class_quotas, config.seed), config.batch_size))


def _make_batch(render, number: int, jobs: list[Job], config: GenerateConfig, screener, constant: dict,
                work: WorkDir, first: list, ended: dict) -> dict:
    """Screen one generated batch (replacing near-copies), write it under OUT/_work, then mark it done (last)."""
    clock = time.time()
    result = generate_screened(render, jobs, config.seed, screener, config.max_attempts, config.max_regenerate,
                               first=first, ended=ended) if jobs else None
    name = batch_name(number)
    writers = make_writers(config.formats, work.out, _labels(work), config.rows_per_part, batch=name)
    rejected = rejected_log(work.root / "rejected" / f"{name}.parquet", screener) if screener else None
    counts: dict[str, dict] = {}
    for item in result.kept if result else []:
        png, row = item.png(), provenance_row(item, constant)
        for writer in writers:
            writer.write(row, png)
        tally = counts.setdefault(item.job.label, {"written": 0, "regenerated": 0, "rejected": 0})
        tally["written"] += 1
        tally["regenerated"] += int(item.attempt > 0)
    for item in result.rejected if result else []:
        kind = "label_rejected" if getattr(item.screen, "reason", None) == "label" else "rejected"
        tally = counts.setdefault(item.job.label, {"written": 0, "regenerated": 0, "rejected": 0})
        tally[kind] = tally.get(kind, 0) + 1
    if rejected is not None:
        rejected.write(result.rejected if result else [])
        rejected.close()
    for writer in writers:
        writer.close()
    record = {"batch": number, "ids": [item.job.id for item in result.kept] if result else [], "counts": counts,
              "ended": result.ended if result else {}, "seconds": round(time.time() - clock, 3)}
    work.mark_done(number, record)
    return record


def _labels(work: WorkDir) -> list[str]:
    return work.read_config()["manifest"]["classes"]


def finish_run(out: Path, manifest: Manifest | None = None) -> RunSummary:
    """Consolidate a run whose batches are all done: dataset files, rejected.parquet, run.json, the card."""
    work = WorkDir(out)
    record = work.read_config()
    options = record["options"]
    counts = {label: ClassCount(planned) for label, planned in record["quotas"].items()}
    for done in work.done_records():
        for label, tally in done["counts"].items():
            for name, value in tally.items():
                setattr(counts[label], name, getattr(counts[label], name) + value)
        for label, reason in done["ended"].items():
            counts[label].ended = counts[label].ended or reason
    work.clean_partial()  # every batch is done: any temp file left is from a killed process
    screened = record["screening"] is not None or bool(record.get("judge"))
    log = (JudgedRejectedLog if record.get("judge") else RejectedLog) if screened else None  # judged: with reasons
    outputs = consolidate(work, tuple(options["formats"]), record["manifest"]["classes"], options["rows_per_part"],
                          log)
    started = datetime.fromisoformat(record["started"])
    finished = datetime.now(timezone.utc)
    summary = RunSummary(out, manifest, counts, seconds=(finished - started).total_seconds(),
                         screened=record["screening"] is not None)
    summary.run = {k: v for k, v in record.items() if k not in ("quotas", "batches", "replaces")}
    summary.run.update(finished=finished.isoformat(), seconds=round(summary.seconds, 2),
                       classes={label: vars(c) for label, c in counts.items()}, outputs=outputs,
                       batches={"count": record["batches"], "size": options["batch_size"]})
    if summary.run["screening"] is not None:
        summary.run["screening"].update(rejected=sum(c.rejected for c in counts.values()),
                                        ended_classes=summary.ended)
    if summary.run.get("judge"):
        judge_totals(summary.run["judge"], counts)
    summary.warnings = list(record.get("warnings") or [])
    write_card(out, summary)
    write_json(out / RUN_FILE, summary.run)  # last: a folder with run.json holds a complete dataset
    remove_work(work)
    work.unlock()
    summary.note = _discard_replaced(record.get("replaces"))
    return summary


def _discard_replaced(path: str | None) -> str:
    """Delete the run an --overwrite moved aside, now that the new one is complete; say what was left."""
    if not path:
        return ""
    left = discard_previous(Path(path))
    return (f"the replaced run's files were deleted; {len(left)} other entries were left in {path}: "
            f"{', '.join(left[:5])}" if left else "")


def completed_summary(out: Path, requested: dict | None = None) -> RunSummary:
    """The summary of a run that already finished, after checking it is the run asked for (`requested` key)."""
    try:
        run = json.loads((out / RUN_FILE).read_text())
        counts = {label: ClassCount(**values) for label, values in run["classes"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MedisynError(f"{out / RUN_FILE}: cannot read the finished run's record ({exc})") from exc
    if requested is not None:
        differ = differences(key_of_record(run), requested, RESOLVED)
        if differ:
            raise MedisynError(f"--out {out}: holds a complete run with other settings ({'; '.join(differ)}); use "
                               f"the same options, another --out, or --overwrite to replace it")
    return RunSummary(out, None, counts, seconds=0.0, run=run, screened=run.get("screening") is not None,
                      complete=True, note="already complete: nothing to do")


def partial_summary(out: Path, manifest: Manifest, work: WorkDir, shard: Shard, made: int) -> RunSummary:
    """This shard is done but others are not: counts of the batches done so far."""
    counts = {label: ClassCount(0) for label in manifest.labels}
    for done in work.done_records():
        for label, tally in done["counts"].items():
            counts[label].written += tally["written"]
    batches = work.read_config()["batches"]
    note = (f"shard {shard.name} made {made} batches; {len(work.done())} of {batches} batches are done. The last "
            f"shard to finish consolidates the dataset (or run: medisyn merge {out})")
    return RunSummary(out, manifest, counts, complete=False, note=note)


def merge_run(out: str | Path) -> RunSummary:
    """`medisyn merge`: consolidate a sharded run, or say precisely which shards still have work."""
    out = Path(out)
    work = WorkDir(out)
    if not work.exists():
        if (out / RUN_FILE).exists():
            return completed_summary(out)
        raise MedisynError(f"{out}: not a medisyn run folder (no {WORK}/config.json or {RUN_FILE})")
    record = work.read_config()
    batches, done = record["batches"], work.done()
    if len(done) < batches:
        raise IncompleteRun(missing_text(out, record, done))
    if not work.lock():
        raise MedisynError(f"{out}: another process is consolidating this run (remove {work.lock_path} if none is)")
    return finish_run(out)


def missing_text(out: Path, record: dict, done: set[int]) -> str:
    """One line: how many batches and images each shard still owes, and the command that finishes them."""
    shards, size, total = record["shards"], record["options"]["batch_size"], record["total"]
    missing = missing_report(record["batches"], done, shards, lambda b: min(size, total - b * size))
    parts = [f"shard {k}/{shards}: {b} batches ({n} images)" for k, (b, n) in missing.items()]
    command = command_line(GenerateConfig(**{**record["options"], "formats": tuple(record["options"]["formats"]),
                                             "shard": f"K/{shards}", "resume": True}))
    return (f"{out}: {record['batches'] - len(done)} of {record['batches']} batches are not done: "
            f"{'; '.join(parts)}. Finish them with: {command} (K = each shard listed)")


def screening_record(screener) -> dict | None:
    """What run.json records of the screening: index, fingerprint, embedder, threshold (rejections added at the end)."""
    if screener is None:
        return None
    meta = screener.index.meta
    return {"index": str(Path(screener.index.path).resolve()), "fingerprint": meta.get("fingerprint"),
            "embedder": meta["embedder"], "index_type": meta["index"]["type"], "index_count": meta["count"],
            "threshold": screener.threshold, "max_attempts": None, "rejected_file": REJECTED_FILE}


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
            "nn_similarity": screen.nn_similarity if screen else None,
            "label_score": getattr(screen, "label_score", None), "judged_label": getattr(screen, "judged_label", None)}


def start_record(config: GenerateConfig, manifest: Manifest, class_quotas: dict[str, int], out: Path, shard: Shard,
                 device, dtype, settings, screener) -> dict:
    """Everything needed to reproduce the run, written to OUT/_work/config.json before the first batch."""
    screening = screening_record(screener)
    if screening:
        screening["max_attempts"] = config.max_attempts
    sampling = {"scheduler": config.scheduler, "steps": settings.steps, "guidance": settings.guidance,
                "height": settings.height, "width": settings.width}
    key = run_key(config, manifest, screener, sampling)
    hashes = key["weights_sha256"]  # hashing a model's weights reads every byte: once per run
    total = sum(class_quotas.values())
    return {
        "key": key,
        "run_id": new_run_id(),
        "medisyn": _version("medisyn"),
        "command": "generate",
        "options": {**config.to_dict(), "out": str(out), "shard": None, "resume": False, "overwrite": False},
        "manifest": {"path": str(manifest.path), "sha256": manifest.sha256, "classes": manifest.labels},
        "model": {"source": model_source(config.model), "name": _model_name(config.model), "weights_sha256": hashes},
        "sampling": sampling, "screening": screening,
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "libraries": {name: _version(name) for name in ("torch", "diffusers", "transformers", "pyarrow", "pillow")},
        "python": platform.python_version(), "platform": platform.platform(),
        "started": datetime.now(timezone.utc).isoformat(),
        "quotas": class_quotas, "total": total, "batches": batch_count(total, config.batch_size),
        "shards": shard.count,
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
