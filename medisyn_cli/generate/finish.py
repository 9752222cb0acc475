"""The process that completes a run: consolidate it, write the card and run.json (last); summaries of complete
and partial runs; `medisyn merge`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import write_json
from medisyn_cli.core.ownership import foreign_message, holds_files, is_ours, record_files, refuse_if_busy
from medisyn_cli.core.shards import Shard
from medisyn_cli.core.store import WORK, IncompleteRun, WorkDir, differences, missing_report
from medisyn_cli.dataset.card import write_card
from medisyn_cli.dataset.layout import discard_previous, run_files
from medisyn_cli.dataset.manifest import Manifest
from medisyn_cli.generate.config import GenerateConfig, command_line
from medisyn_cli.generate.consolidate import consolidate
from medisyn_cli.generate.consolidate import remove as remove_work
from medisyn_cli.generate.plan import Job
from medisyn_cli.generate.runkey import RESOLVED, key_of_record
from medisyn_cli.judge.screening import judge_totals
from medisyn_cli.screening.checks import batches_log

RUN_FILE, REJECTED_FILE = "run.json", "rejected.parquet"


@dataclass
class ClassCount:
    """Per-class tally for the closing table and run.json."""

    planned: int
    written: int = 0
    regenerated: int = 0
    rejected: int = 0
    label_rejected: int = 0  # rejected by the label check (generate --judge)
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
    complete: bool = True  # False: this shard is done, other shards are not
    note: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ended(self) -> dict[str, str]:
        """Classes that stopped short of their quota, with the reason."""
        return {label: count.ended for label, count in self.counts.items() if count.ended}


def finish_run(out: Path, manifest: Manifest | None = None) -> RunSummary:
    """Consolidate a run whose batches are all done: dataset files, rejected.parquet, run.json, the card."""
    work = WorkDir(out)
    record = work.read_config()
    options = record["options"]
    counts = {label: ClassCount(planned) for label, planned in record["quotas"].items()}
    for done in work.done_records():
        for label, tally in done["counts"].items():
            for name, value in tally.items():
                setattr(counts[label], name, getattr(counts[label], name, 0) + value)  # <check>_rejected too
        for label, reason in done["ended"].items():
            counts[label].ended = counts[label].ended or reason
    work.clean_partial()  # every batch is done: any temp file left is from a killed process
    log = batches_log(work.root / "rejected")  # the columns of the run's checks; None: it had none
    outputs = consolidate(work, tuple(options["formats"]), log)
    started = datetime.fromisoformat(record["started"])
    finished = datetime.now(timezone.utc)
    summary = RunSummary(
        out,
        manifest,
        counts,
        seconds=(finished - started).total_seconds(),
        screened=record["screening"] is not None,
    )
    summary.run = {k: v for k, v in record.items() if k not in ("quotas", "batches", "replaces")}
    summary.run.update(
        finished=finished.isoformat(),
        seconds=round(summary.seconds, 2),
        classes={label: vars(c) for label, c in counts.items()},
        outputs=outputs,
        batches={"count": record["batches"], "size": options["batch_size"]},
    )
    if summary.run["screening"] is not None:
        summary.run["screening"].update(
            rejected=sum(c.rejected for c in counts.values()), ended_classes=summary.ended
        )
    if summary.run.get("judge"):
        judge_totals(summary.run["judge"], counts)
    summary.warnings = list(record.get("warnings") or [])
    write_card(out, summary)
    write_json(out / RUN_FILE, summary.run)  # last: a folder with run.json holds a complete dataset
    files, lists = run_files(out)
    record_files(out, files, lists, replace=True)  # what --overwrite may delete once this run is replaced
    remove_work(work)
    work.unlock()
    summary.note = _discard_replaced(record.get("replaces"))
    return summary


def _discard_replaced(path: str | None) -> str:
    """Delete the run an --overwrite moved aside, now that the new one is complete; say what was left."""
    if not path:
        return ""
    left = discard_previous(Path(path))
    return (
        f"the replaced run's files were deleted; {len(left)} files medisyn did not write were left in "
        f"{path}: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}"
        if left
        else ""
    )


def _class_count(values: dict) -> ClassCount:
    """A ClassCount from run.json, with a plug-in check's tally (<check>_rejected) kept as an attribute."""
    count = ClassCount(**{k: v for k, v in values.items() if k in ClassCount.__dataclass_fields__})
    count.__dict__.update({k: v for k, v in values.items() if k not in ClassCount.__dataclass_fields__})
    return count


def completed_summary(out: Path, requested: dict | None = None) -> RunSummary:
    """The summary of a run that already finished, after checking it is the run asked for (`requested` key)."""
    try:
        run = json.loads((out / RUN_FILE).read_text())
        counts = {label: _class_count(values) for label, values in run["classes"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MedisynError(f"{out / RUN_FILE}: cannot read the finished run's record ({exc})") from exc
    if requested is not None:
        differ = differences(key_of_record(run), requested, RESOLVED)
        if differ:
            raise MedisynError(
                f"--out {out}: holds a complete run with other settings ({'; '.join(differ)}); use "
                f"the same options, another --out, or --overwrite to replace it"
            )
    return RunSummary(
        out,
        None,
        counts,
        seconds=0.0,
        run=run,
        screened=run.get("screening") is not None,
        complete=True,
        note="already complete: nothing to do",
    )


def partial_summary(out: Path, manifest: Manifest, work: WorkDir, shard: Shard, made: int) -> RunSummary:
    """This shard is done but others are not: counts of the batches done so far."""
    counts = {label: ClassCount(0) for label in manifest.labels}
    for done in work.done_records():
        for label, tally in done["counts"].items():
            counts[label].written += tally["written"]
    batches = work.read_config()["batches"]
    note = (
        f"shard {shard.name} made {made} batches; {len(work.done())} of {batches} batches are done. The last "
        f"shard to finish consolidates the dataset (or run: medisyn merge {out})"
    )
    return RunSummary(out, manifest, counts, complete=False, note=note)


def merge_run(out: str | Path) -> RunSummary:
    """`medisyn merge`: consolidate a sharded run, or say precisely which shards still have work."""
    out = Path(out)
    work = WorkDir(out)
    if out.is_dir() and holds_files(out) and not is_ours(out):
        raise MedisynError(foreign_message(out, "OUT", "generate"))
    if out.is_dir():
        refuse_if_busy(out, f"{out}")  # a single process still writing it
    if not work.exists():
        if (out / RUN_FILE).exists():
            return completed_summary(out)
        raise MedisynError(f"{out}: not a medisyn run folder (no {WORK}/config.json or {RUN_FILE})")
    record = work.read_config()
    batches, done = record["batches"], work.done()
    if len(done) < batches:
        raise IncompleteRun(missing_text(out, record, done))
    if not work.lock():
        raise MedisynError(
            f"{out}: another process is consolidating this run (remove {work.lock_path} if none is)"
        )
    return finish_run(out)


def missing_text(out: Path, record: dict, done: set[int]) -> str:
    """One line: how many batches and images each shard still owes, and the command that finishes them."""
    shards, size, total = record["shards"], record["options"]["batch_size"], record["total"]
    missing = missing_report(record["batches"], done, shards, lambda b: min(size, total - b * size))
    parts = [f"shard {k}/{shards}: {b} batches ({n} images)" for k, (b, n) in missing.items()]
    command = command_line(
        GenerateConfig(
            **{
                **record["options"],
                "formats": tuple(record["options"]["formats"]),
                "shard": f"K/{shards}",
                "resume": True,
            }
        )
    )
    return (
        f"{out}: {record['batches'] - len(done)} of {record['batches']} batches are not done: "
        f"{'; '.join(parts)}. Finish them with: {command} (K = each shard listed)"
    )
