"""Who may write --out: its state (new, join, complete), the run lock, --overwrite moving the old run aside, and
what a failed run leaves."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medisyn_cli.core.errors import Interrupted, MedisynError
from medisyn_cli.core.outdir import LOCK, MARKER, claim_marker, is_ours, move_aside, read_marker
from medisyn_cli.core.ownership import asides_note, refuse_aside, refuse_cwd, remove_empty
from medisyn_cli.core.progress import console
from medisyn_cli.core.runlock import RunBusy, RunLock, busy_message, read_holder
from medisyn_cli.core.shards import Shard
from medisyn_cli.core.store import WorkDir
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.finish import RUN_FILE


def out_state(out: Path, config: GenerateConfig, shard: Shard) -> str:
    """'new', 'join' (an unfinished run to continue) or 'complete'; a clear error for anything else."""
    if out.is_symlink() and not out.exists():
        raise MedisynError(f"--out {out}: a symbolic link to a folder that does not exist")
    if out.exists() and not out.is_dir():
        raise MedisynError(f"--out {out}: exists and is not a folder")
    refuse_aside(out.resolve())
    if not out.exists() or not any(p.name != LOCK for p in out.iterdir()):
        return "new"
    if not is_ours(out):
        raise MedisynError(
            f"--out {out}: folder exists, is not empty and was not made by medisyn generate (it has "
            f"no {MARKER} marker), so medisyn will neither write into it nor delete it "
            f"(--overwrite included); choose another --out"
        )
    if (read_marker(out) or {}).get("command", "generate") != "generate":
        raise MedisynError(
            f"--out {out}: is the folder of medisyn {read_marker(out)['command']}, not of a generate run; "
            f"choose another --out"
        )
    if config.overwrite:
        refuse_cwd(out.resolve())
        if shard.count > 1:
            raise MedisynError(
                "--overwrite with shards would let each shard delete the others' work; "
                f"delete {out} first, then start the shards"
            )
        return "new"
    joining = config.resume or shard.count > 1
    if (out / RUN_FILE).exists():
        if joining:
            return "complete"
        raise MedisynError(
            f"--out {out}: holds a complete medisyn run; use --resume to check it is this run, "
            f"--overwrite to replace it (the old one is kept until the new one completes), or "
            f"another --out"
        )
    if joining:
        return "join"
    done = len(WorkDir(out).done()) if WorkDir(out).exists() else 0
    raise MedisynError(
        f"--out {out}: holds an unfinished run ({done} batches done); add --resume to continue "
        f"it, or --overwrite to start again (the unfinished run is moved aside, not deleted)"
    )


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
    real = out.resolve()  # a symlink to a run stays a symlink: the folder it names is moved aside
    real.mkdir(parents=True, exist_ok=True)
    lock = RunLock(real / LOCK, f"--out {out}")
    try:
        lock.acquire()
        claim = Claim(out_state(out, config, shard), lock=lock)
        if claim.state == "new" and any(p.name != LOCK for p in real.iterdir()):
            claim.replaced = move_aside(real, config.out or "")
            real.mkdir()
            claim.lock = RunLock(real / LOCK, f"--out {out}").acquire()
            lock.release()
        note = asides_note(real, claim.replaced)
        if note:
            console.print(f"[yellow]warning:[/yellow] {note}", highlight=False, soft_wrap=True)
        return claim
    except BaseException:
        lock.release()
        if not existed and real.exists() and not any(real.iterdir()):
            remove_empty(real)
        raise


def refuse_if_busy(out: Path) -> None:
    """RunBusy, naming the process, if a live single process holds --out."""
    holder = read_holder(out / LOCK)
    if holder is not None and not RunLock(out / LOCK).is_stale(holder):
        raise RunBusy(busy_message(out / LOCK, f"--out {out}", holder))


def start_out(out: Path, record: dict) -> None:
    """Mark a new output folder as this run's (a joined run keeps its marker and run id)."""
    record["run_id"] = claim_marker(out, record["run_id"])


@contextmanager
def explained_failures(out: Path, work: WorkDir, replaced: Path | None):
    """A failed or stopped run says what it leaves: batches done, how to resume, where the previous run is."""
    import errno

    kept = (
        f"; the previous run in {out} is kept intact at {replaced} until this one completes"
        if replaced
        else ""
    )
    try:
        yield
    except Interrupted as exc:
        raise type(exc)(f"{exc}{kept}") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO):
            raise
        done = f"{len(work.done())} of {work.read_config()['batches']} batches are done and kept"
        raise MedisynError(
            f"{exc.filename or out}: {exc.strerror} (errno {exc.errno}); {done}: fix it, then "
            f"resume with --resume (same options){kept}"
        ) from exc
