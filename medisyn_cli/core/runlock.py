"""A run lock that works on local disks and on shared cluster file systems (NFS, Lustre, GPFS).

The lock is a file created with O_EXCL (atomic on every POSIX file system, NFSv3 included) that holds who took it
(host, pid, command, since when). While it is held, a thread touches it every `HEARTBEAT` seconds. A lock is stale,
and is taken over, when its process is gone: on the same host, its pid is dead (a `kill -9` frees it at once); on
another host, its heartbeat stops: the lock file's modification time does not change for 2.5 heartbeats (compared
with itself, so clocks that disagree between nodes do not matter), or is older than `stale_after` seconds. A job
requeued onto another node after its node died thus waits about 40 s, then resumes. Two processes that find the
same stale lock race on one rename: only one of them takes it over.

A pid can be reused by an unrelated process once its holder died, so the lock also records when its process
started (Linux: boot id and /proc/<pid>/stat field 22; elsewhere psutil or `ps -o lstart=`): a live pid whose start
differs is not the holder. A lock file that is not one medisyn wrote (a JSON list, a pid that is not a process id)
is stale once untouched for `stale_after` seconds (no heartbeat); until then it is refused with a line naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from medisyn_cli.core.errors import MedisynError

HEARTBEAT = 15.0
STALE_AFTER = float(os.environ.get("MEDISYN_LOCK_STALE", "120"))


class RunBusy(MedisynError):
    """Another live process holds the lock."""


class RunLock:
    """`with RunLock(path, what):` holds the lock for the block; raises RunBusy naming the holder."""

    def __init__(
        self,
        path: Path,
        what: str = "this run",
        stale_after: float = STALE_AFTER,
        heartbeat: float = HEARTBEAT,
    ):
        self.path, self.what = Path(path), what
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; RunBusy if a live process holds it."""
        for _ in range(3):
            if self._create():
                self.held = True
                self._thread = threading.Thread(target=self._beat, name="medisyn-lock", daemon=True)
                self._thread.start()
                return self
            holder = read_holder(self.path)
            if holder is not None and not self.is_stale(holder):
                raise RunBusy(busy_message(self.path, self.what, holder))
            self._take_over()
        raise RunBusy(f"{self.path}: could not take the lock of {self.what} (it keeps changing hands)")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held and (read_holder(self.path) or {}).get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def is_stale(self, holder: dict) -> bool:
        """True if the holder's process is gone; a holder on another host is watched for a heartbeat."""
        try:
            first = self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if holder.get("malformed"):
            return time.time() - first > self.stale_after
        if holder.get("host") == socket.gethostname():
            return not holder_alive(holder)
        if time.time() - first > self.stale_after:
            return True
        deadline = time.monotonic() + 2.5 * self.heartbeat
        while time.monotonic() < deadline:
            time.sleep(min(1.0, self.heartbeat / 4))
            try:
                if self.path.stat().st_mtime != first:
                    return False
            except FileNotFoundError:
                return True
        return True

    def _create(self) -> bool:
        self._token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": process_start(os.getpid()),
            "token": self._token,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        return True

    def _take_over(self) -> None:
        """Move a stale lock out of the way; of two processes doing so, one rename succeeds."""
        grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if grave.is_dir():  # a consolidation lock made by medisyn 0.1 (a folder)
            shutil.rmtree(grave, ignore_errors=True)
        else:
            grave.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                pass


def read_holder(path: Path) -> dict | None:
    """The lock file's record; None if it vanished; {} if it is being written or unreadable; {"malformed": why}
    if it is valid JSON that medisyn did not write."""
    try:
        text = Path(path).read_text()
        record = json.loads(text) if text.strip() else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    problem = holder_problem(record) if text.strip() else None
    return {"malformed": problem} if problem else record


def holder_problem(record) -> str | None:
    """Why a decoded lock record is not one medisyn wrote; None if it is."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
        return f"its pid {str(pid)[:40]!r} is not a process id"
    for field in ("host", "started", "token", "since", "command"):
        if record.get(field) is not None and not isinstance(record[field], str):
            return f"its {field} is not a string"
    return None


def holder_alive(holder: dict) -> bool:
    """True if the holder's process (on this host) still runs: its pid exists and, where both are known, that
    process started when the holder's did (else the pid was reused by an unrelated process)."""
    if not pid_alive(holder["pid"]):
        return False
    recorded, now = holder.get("started"), process_start(holder["pid"])
    return recorded is None or now is None or recorded == now


def process_start(pid: int) -> str | None:
    """When a process started, as a string that differs for a reused pid; None where it cannot be known."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (
            f"{_boot_id()}:{fields[19]}"  # field 22 (starttime, clock ticks since boot); fields[0] is field 3
        )
    except (OSError, IndexError):
        pass
    try:
        import psutil

        return f"psutil:{psutil.Process(pid).create_time():.2f}"
    except ImportError:
        pass
    except Exception:  # psutil.NoSuchProcess, AccessDenied
        return None
    return _ps_start(pid)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "boot"


def _ps_start(pid: int) -> str | None:
    import subprocess

    try:
        found = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return f"ps:{found.stdout.strip()}" if found.returncode == 0 and found.stdout.strip() else None


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def busy_message(path: Path, what: str, holder: dict) -> str:
    """One line: who holds the lock, since when, and what to do."""
    if holder.get("malformed"):
        return malformed_message(path, holder["malformed"])
    try:
        beat = f", last heartbeat {time.time() - path.stat().st_mtime:.0f} s ago"
    except OSError:
        beat = ""
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}{beat}"
    return (
        f"{what} is in use by {who} ({holder.get('command', '')!s}); wait for it to finish, or stop it and "
        f"run again with --resume. A lock whose process died is taken over by the next run (at once on the same "
        f"host, after about {2.5 * HEARTBEAT:.0f} s without heartbeat from another host)"
    )


def malformed_message(path: Path, problem: str) -> str:
    """One line for a lock file medisyn did not write, recently touched."""
    try:
        age = f", modified {max(0.0, time.time() - path.stat().st_mtime):.0f} s ago"
    except OSError:
        age = ""
    return (
        f"{path}: not a medisyn lock file ({problem}{age}); if no medisyn command is using this folder, "
        f"delete {path.name} and run again (it is taken over once untouched for {STALE_AFTER:.0f} s)"
    )
