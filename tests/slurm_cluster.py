"""A real, throwaway single-node SLURM cluster for integration tests.

``SlurmCluster`` starts its own ``munged`` (own key and socket), ``slurmctld`` and ``slurmd`` from a config in a
temporary directory, on free TCP ports and 127.0.0.1 only, so it neither needs nor touches a system SLURM/munge.
Everything it starts is stopped by PID: the three daemons, and any ``slurmstepd`` or job process left behind
(found by a marker variable in its environment, which the daemons and everything launched with ``cluster.env``
inherit).

Usage in a test module (tests/ is on ``sys.path`` under pytest's default import mode)::

    from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

    def test_array(slurm_cluster, tmp_path):
        job = slurm_cluster.sbatch(script, "--array=0-3", f"--output={tmp_path}/%A_%a.out")
        assert slurm_cluster.wait(job, timeout=60) == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED", 3: "COMPLETED"}
        subprocess.run(["medisyn", ...], env=slurm_cluster.env)  # sbatch/squeue/scontrol there talk to this cluster

Needs root and the Debian packages slurmctld, slurmd, slurm-client and munge (``.ci/install-slurm``); otherwise
``slurm_available()`` says why and the fixture skips.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["SlurmCluster", "SlurmError", "slurm_available", "slurm_cluster", "TERMINAL_STATES"]

MARKER = (
    "MEDISYN_SLURM_CLUSTER"  # env var carrying the cluster's temp dir; used to find its leftover processes
)
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun")
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9_/:]*)=(.*?)(?= [A-Za-z][A-Za-z0-9_/:]*=|$)")


class SlurmError(RuntimeError):
    pass


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + SBIN_PATH)


def slurm_available() -> str | None:
    """None when a SlurmCluster can be started here, else the reason it cannot (for ``pytest.skip``)."""
    if os.environ.get("MEDISYN_SLURM_TESTS", "1").lower() in ("0", "no", "false", "off"):
        return "SLURM tests disabled by MEDISYN_SLURM_TESTS"
    if not sys.platform.startswith("linux"):
        return f"SLURM tests need Linux, not {sys.platform}"
    missing = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if missing:
        return f"SLURM not installed (missing {', '.join(missing)}; run .ci/install-slurm)"
    if os.geteuid() != 0:
        return "SLURM tests need root (slurmd launches jobs; the test cluster runs with SlurmUser=root)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _meminfo_mb(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def parse_record(line: str) -> dict[str, str]:
    """One ``scontrol -o show job`` / jobcomp/filetxt line as a dict."""
    return {key: value for key, value in _FIELD.findall(line.strip())}


def _task_key(record: dict[str, str]) -> int | str | None:
    task = record.get("ArrayTaskId")
    if not task or task == "N/A":
        return None
    return int(task) if task.isdigit() else task  # a range ("2-3", "0-3%2") is the not yet split pending part


class SlurmCluster:
    """A single-node SLURM cluster (partition ``debug``) in a temp dir; a context manager.

    ``env`` is the environment for anything that must talk to this cluster (it has ``SLURM_CONF``).
    """

    def __init__(
        self,
        *,
        cpus: int | None = None,
        start_timeout: float = 60.0,
        keep: bool | None = None,
        cred_expire: int = 10,
    ):
        self.real_cpus = os.cpu_count() or 1
        self.cpus = cpus or self.real_cpus
        self.start_timeout = start_timeout
        self.keep = bool(os.environ.get("MEDISYN_SLURM_KEEP")) if keep is None else keep
        self.cred_expire = cred_expire
        self.node = socket.gethostname().split(".")[0] or "localhost"
        self.tmp: Path | None = None
        self.conf: Path | None = None
        self.env: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> SlurmCluster:
        if self._started:
            return self
        reason = slurm_available()
        if reason:
            raise SlurmError(reason)
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            logs = self.log_tail()
            self.stop()
            if isinstance(sys.exc_info()[1], Exception):
                raise SlurmError(
                    f"could not start the test SLURM cluster: {sys.exc_info()[1]}\n{logs}"
                ) from None
            raise
        return self

    def _start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="medisyn-slurm-")).resolve()
        for sub in ("state", "spool", f"spool/slurmd-{self.node}", "log", "munge"):
            (self.tmp / sub).mkdir(mode=0o700)
        path = os.environ.get("PATH", "/usr/bin:/bin")
        self.env = {
            **os.environ,
            "SLURM_CONF": str(self.tmp / "slurm.conf"),
            MARKER: str(self.tmp),
            "PATH": path + ":" + SBIN_PATH,
        }
        for var in [
            v for v in self.env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_"))
        ]:
            if var != "SLURM_CONF":  # no outer job's settings leak into ours
                del self.env[var]
        self.env.pop("MUNGE_SOCKET", None)
        munge_socket = self.tmp / "munge" / "munge.socket"
        key = self.tmp / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(1024))
        self.conf = self.tmp / "slurm.conf"
        self.conf.write_text(self._slurm_conf(munge_socket))

        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.tmp / 'munge' / 'munged.pid'}",
                f"--seed-file={self.tmp / 'munge' / 'munged.seed'}",
                f"--log-file={self.tmp / 'log' / 'munged.log'}",
                "--num-threads=2",
            ],
        )
        self._wait_for(lambda: munge_socket.exists(), 15, "munged socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for(
            lambda: self.cmd("scontrol", "ping", check=False).returncode == 0,
            self.start_timeout,
            "slurmctld to answer",
        )
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait_for(self._node_idle, self.start_timeout, f"node {self.node} to be idle")

    def _slurm_conf(self, munge_socket: Path) -> str:
        tmp = self.tmp
        total = _meminfo_mb("MemTotal") or 1024
        available = _meminfo_mb("MemAvailable") or total
        self.real_memory = max(1, min(int(available * 0.9), total - 64))
        overrides = "SlurmdParameters=config_overrides\n" if self.cpus > self.real_cpus else ""
        return f"""\
# medisyn test cluster (tests/slurm_cluster.py); throwaway, single node, 127.0.0.1 only
ClusterName=medisyn-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire={self.cred_expire}
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool/slurmd-%n
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd-%n.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={tmp}/jobcomp.txt
JobRequeue=1
ReturnToService=2
MailProg=/bin/true
MinJobAge=3600
KillWait=2
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=300
MessageTimeout=20
MaxArraySize=10001
{overrides}NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.node} CPUs={self.cpus} RealMemory={self.real_memory} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 - kept open by the child
        try:
            self._procs[name] = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def _wait_for(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited with {proc.returncode} while waiting for {what}")
            if check():
                return
            if time.monotonic() > deadline:
                raise SlurmError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.25)

    def _node_idle(self) -> bool:
        out = self.cmd("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False).stdout.strip()
        return out == "idle"

    def stop(self) -> None:
        """Cancel all jobs, then stop every process this cluster started, by PID (SIGTERM, then SIGKILL)."""
        if not self._started:
            return
        self._started = False
        try:
            atexit.unregister(self.stop)
        except Exception:  # noqa: BLE001
            pass
        ctld = self._procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None and self.conf is not None:
            try:
                ids = self.cmd("squeue", "-h", "-o", "%A", check=False, timeout=10).stdout.split()
                if ids:
                    self.cmd("scancel", *sorted(set(ids)), check=False, timeout=10)
                    deadline = time.monotonic() + 10  # KillWait=2: SIGTERM, 2 s, SIGKILL, then completing
                    while (
                        time.monotonic() < deadline
                        and self.cmd("squeue", "-h", "-o", "%A", check=False, timeout=10).stdout.strip()
                    ):
                        time.sleep(0.2)
            except Exception:  # noqa: BLE001 - stopping must go on
                pass
        for name in ("slurmd", "slurmctld"):
            self._terminate([self._procs[name].pid] if name in self._procs else [])
        self._terminate(self._stray_pids())  # slurmstepd and job processes left behind
        if "munged" in self._procs:
            self._terminate([self._procs["munged"].pid])
        for proc in self._procs.values():
            try:
                proc.wait(timeout=1)
            except Exception:  # noqa: BLE001
                pass
        if self.tmp is not None and not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def _terminate(pids: list[int], grace: float = 5.0) -> None:
        pids = [pid for pid in pids if pid != os.getpid() and _alive(pid)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _alive(pid)]
                time.sleep(0.05)
            if not pids:
                return

    def _stray_pids(self) -> list[int]:
        """PIDs of live processes carrying this cluster's marker (slurmstepd, job steps), daemons excluded."""
        if self.tmp is None:
            return []
        needle = f"{MARKER}={self.tmp}\0".encode()
        own = {proc.pid for proc in self._procs.values()} | {os.getpid()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in own:
                continue
            try:
                if needle in (entry / "environ").read_bytes() + b"\0" and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def pids(self) -> dict[str, int]:
        """PIDs of the daemons this cluster started."""
        return {name: proc.pid for name, proc in self._procs.items()}

    # ------------------------------------------------------------------ using it
    def cmd(
        self, *argv: str, check: bool = True, timeout: float = 30, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``sbatch``, ``squeue``, ...) against this cluster; text output captured."""
        kwargs.setdefault("env", self.env)
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(
        self,
        script: str | os.PathLike,
        *args: str,
        script_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> int:
        """Submit ``script`` with sbatch options ``args``; returns the job id (the array job id for arrays).

        ``env``: extra variables for the job, exported through sbatch's own environment. (Prefer this to
        ``--export=ALL,VAR=...``: any explicit ``--export`` list makes slurmd load root's login environment with
        ``su - root -c env`` first, which costs ~5 s per job here.)
        """
        out = self.cmd(
            "sbatch", "--parsable", *args, str(script), *script_args, cwd=cwd, env={**self.env, **(env or {})}
        ).stdout.strip()
        return int(out.split(";")[0])

    def records(self, job_id: int) -> list[dict[str, str]]:
        """``scontrol show job`` records of a job (one per array task, plus a not yet split pending part)."""
        proc = self.cmd("scontrol", "-o", "show", "job", str(job_id), check=False)
        if proc.returncode != 0:
            raise SlurmError(f"scontrol show job {job_id}: {proc.stderr.strip()}")
        return [parse_record(line) for line in proc.stdout.splitlines() if line.strip()]

    def tasks(self, job_id: int) -> dict[int | str | None, dict[str, str]]:
        """Current record per array task id (key None for a job that is not an array)."""
        return {_task_key(rec): rec for rec in self.records(job_id)}

    def states(self, job_id: int) -> dict[int | str | None, str]:
        return {task: rec.get("JobState", "?") for task, rec in self.tasks(job_id).items()}

    def exit_codes(self, job_id: int) -> dict[int | str | None, str]:
        """``ExitCode`` ("status:signal", e.g. "0:0", "3:0") per array task."""
        return {task: rec.get("ExitCode", "?") for task, rec in self.tasks(job_id).items()}

    def wait(self, job_id: int, timeout: float = 60.0, poll: float = 0.5) -> dict[int | str | None, str]:
        """Wait until every task of the job reached a final state; returns array task id -> final state.

        A non-array job has the single key None. A requeued task is followed to its final run.
        Raises TimeoutError (with the states so far) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(job_id)
            if (
                states
                and all(isinstance(t, int) or t is None for t in states)
                and all(s in TERMINAL_STATES for s in states.values())
            ):
                return dict(sorted(states.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} not finished after {timeout} s: {states}\n{self.log_tail()}"
                )
            time.sleep(poll)

    def history(self, job_id: int | None = None) -> list[dict[str, str]]:
        """Every finished run from the jobcomp/filetxt log, requeued runs included (oldest first).

        A run ended by a requeue is logged with the state the job had right after it: ``PENDING``.

        With ``job_id``, only the runs of that job (for an array: of all its tasks, matched via their job ids).
        """
        path = self.tmp / "jobcomp.txt" if self.tmp else None
        if path is None or not path.exists():
            return []
        runs = [parse_record(line) for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if job_id is None:
            return runs
        ids = {str(job_id)} | {rec.get("JobId", "") for rec in self.records(job_id)}
        return [run for run in runs if run.get("JobId") in ids]

    def log_tail(self, lines: int = 30) -> str:
        if self.tmp is None:
            return ""
        out = []
        logs = self.tmp / "log"
        for path in sorted(logs.glob("*")):
            if path.suffix == ".stdout" and (logs / f"{path.stem}.log").exists():
                continue  # slurmctld/slurmd -D print what they log to their log file too
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A started single-node SlurmCluster for the test module; skips with the reason when SLURM is unusable."""
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
