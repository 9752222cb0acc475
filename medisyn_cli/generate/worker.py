"""One batch of `generate` (BatchWorker: render -> screen -> write -> mark done) and the threads around it: the
lane that screens and writes batch k while the model makes k+1, the lock that shares the model, signals."""

from __future__ import annotations

import time
from contextlib import contextmanager

from medisyn_cli.core.store import WorkDir, batch_name
from medisyn_cli.dataset.base import run_info
from medisyn_cli.dataset.formats import get_format
from medisyn_cli.dataset.marks import mark_png
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.plan import Job
from medisyn_cli.generate.sampler import generate_batch, generate_screened
from medisyn_cli.screening.checks import Checks, RejectedLog


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


class BatchWorker:
    """One batch's life: the model's first attempt, the run's checks (near-copy, label, plug-ins) with replacements
    of rejected images, the rows written under OUT/_work by every format's writer, then the done marker (last)."""

    def __init__(self, render, config: GenerateConfig, checks: Checks | None, constant: dict, work: WorkDir):
        self.render, self.config, self.checks, self.constant, self.work = (
            render,
            config,
            checks,
            constant,
            work,
        )
        self.run = run_info(work.read_config())

    def marked(self, png: bytes, row: dict) -> tuple[dict, bytes]:
        """(row, png) with the run's synthetic-content mark in the PNG (unless --no-mark)."""
        return row, mark_png(png, self.run.mark(row["id"])) if self.run.marked else png

    def first_attempt(self, jobs: list[Job]) -> list:
        """The model's images for `jobs` (bad images regenerated), before screening: on the main thread."""
        return generate_batch(self.render, jobs, self.config.max_regenerate) if jobs else []

    def finish(self, number: int, jobs: list[Job], first: list, ended: dict) -> dict:
        """Check the batch (replacing rejected images), write it under OUT/_work, then mark it done (last)."""
        clock = time.time()
        result = (
            generate_screened(
                self.render,
                jobs,
                self.checks,
                self.config.max_attempts,
                self.config.max_regenerate,
                first=first,
                ended=ended,
            )
            if jobs
            else None
        )
        name = batch_name(number)
        rejected = (
            RejectedLog(self.work.root / "rejected" / f"{name}.parquet", self.checks.columns())
            if self.checks
            else None
        )
        counts: dict[str, dict] = {}
        items = []
        for item in result.kept if result else []:
            items.append(self.marked(item.png(), provenance_row(item, self.constant)))
            tally = counts.setdefault(item.job.label, {"written": 0, "regenerated": 0, "rejected": 0})
            tally["written"] += 1
            tally["regenerated"] += int(item.attempt > 0)
        for item in result.rejected if result else []:
            kind = self.checks.counter(
                item.screen
            )  # rejected (near-copies), label_rejected, <check>_rejected
            tally = counts.setdefault(item.job.label, {"written": 0, "regenerated": 0, "rejected": 0})
            tally[kind] = tally.get(kind, 0) + 1
        if rejected is not None:
            rejected.write(result.rejected if result else [], self.checks)
            rejected.close()
        for fmt in self.config.formats:
            get_format(fmt).write_batch(self.work.root, name, items, self.run)
        record = {
            "batch": number,
            "ids": [item.job.id for item in result.kept] if result else [],
            "counts": counts,
            "ended": result.ended if result else {},
            "seconds": round(time.time() - clock, 3),
        }
        self.work.mark_done(number, record)
        return record


def provenance_row(item, constant: dict) -> dict:
    """The metadata stored with each image."""
    job, details = item.job, item.screen.details if item.screen else {}
    return {
        "id": job.id,
        "label": job.label,
        "label_id": job.label_id,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": item.seed,
        "attempt": item.attempt,
        "mode": job.mode,
        **constant,
        "nn_id": details.get("nn_id"),
        "nn_similarity": details.get("nn_similarity"),
        "label_score": details.get("label_score"),
        "judged_label": details.get("judged_label"),
    }
