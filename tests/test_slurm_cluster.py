"""The throwaway SLURM cluster fixture (tests/slurm_cluster.py) works: arrays, exit codes, requeue, signals, srun.

Skipped, with the reason, without SLURM (``.ci/install-slurm``) or root.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from slurm_cluster import MARKER, SlurmCluster, slurm_available, slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slow


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body.lstrip("\n"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def walltime_job(slurm_cluster, tmp_path_factory):
    """A job that gets SIGUSR1 from ``--signal=B:USR1@60`` ahead of its walltime.

    slurmctld checks time limits only every 30 s, so the signal comes up to ~30 s after the job starts: the job
    is submitted first (autouse below) and runs while the other tests do; ``test_walltime_signal`` checks it last.
    """
    out = tmp_path_factory.mktemp("walltime")
    script = write_script(
        out / "walltime.sh",
        """
#SBATCH --time=1
#SBATCH --signal=B:USR1@60
trap 'echo "USR1 $(date +%s)" > "$OUT/warned"; kill $pid; exit 0' USR1
echo "started $(date +%s)" > "$OUT/started"
sleep 120 & pid=$!
wait $pid   # a trapped signal interrupts wait at once (a foreground sleep would delay the trap)
echo "no signal" > "$OUT/unwarned"
""",
    )
    job = slurm_cluster.sbatch(script, f"--output={out}/%j.out", env={"OUT": str(out)})
    return job, out


@pytest.fixture(scope="module", autouse=True)
def _submit_walltime_job_first(walltime_job):
    return walltime_job


def test_array_job_runs_every_task(slurm_cluster, tmp_path):
    script = write_script(
        tmp_path / "array.sh",
        """
#SBATCH --array=0-3
#SBATCH --ntasks=1
echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT" > "$OUT/task-$SLURM_ARRAY_TASK_ID.txt"
""",
    )
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/%A_%a.out", env={"OUT": str(tmp_path)})
    states = slurm_cluster.wait(job, timeout=120)
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED", 3: "COMPLETED"}
    assert slurm_cluster.exit_codes(job) == {0: "0:0", 1: "0:0", 2: "0:0", 3: "0:0"}
    for task in range(4):
        assert (tmp_path / f"task-{task}.txt").read_text().split() == [str(task), "4"]
        assert (tmp_path / f"{job}_{task}.out").exists()
    runs = slurm_cluster.history(job)  # jobcomp/filetxt: one finished run per task
    assert sorted(int(run["ArrayTaskId"]) for run in runs) == [0, 1, 2, 3]
    assert {run["ExitCode"] for run in runs} == {"0:0"}


def test_failed_task_and_requeued_task(slurm_cluster, tmp_path):
    script = write_script(
        tmp_path / "mixed.sh",
        """
#SBATCH --array=0-2
echo "run restart=${SLURM_RESTART_COUNT:-0}" >> "$OUT/runs-$SLURM_ARRAY_TASK_ID.txt"
case "$SLURM_ARRAY_TASK_ID" in
  1) exit 3 ;;
  2) if [ ! -e "$OUT/requeued" ]; then
       touch "$OUT/requeued"
       scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || exit 99
       sleep 60   # killed by the requeue
       exit 98
     fi ;;
esac
exit 0
""",
    )
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/%A_%a.out", env={"OUT": str(tmp_path)})
    states = slurm_cluster.wait(job, timeout=120)
    assert states == {0: "COMPLETED", 1: "FAILED", 2: "COMPLETED"}, slurm_cluster.tasks(job)
    assert slurm_cluster.exit_codes(job) == {0: "0:0", 1: "3:0", 2: "0:0"}
    tasks = slurm_cluster.tasks(job)
    assert tasks[2]["Restarts"] == "1" and tasks[0]["Restarts"] == "0"
    assert (tmp_path / "runs-2.txt").read_text().splitlines() == ["run restart=0", "run restart=1"]
    assert (tmp_path / "runs-1.txt").read_text().splitlines() == ["run restart=0"]
    runs = [(run["ArrayTaskId"], run["JobState"]) for run in slurm_cluster.history(job)]
    # jobcomp logs the requeued run with the state right after the requeue (PENDING), then the final run
    assert [state for task, state in runs if task == "2"] == ["PENDING", "COMPLETED"], runs
    assert [state for task, state in runs if task == "1"] == ["FAILED"], runs


def test_scancel_signal_reaches_batch_script_trap(slurm_cluster, tmp_path):
    script = write_script(
        tmp_path / "trap.sh",
        """
trap 'echo USR1 > "$OUT/trapped"; kill $pid; exit 7' USR1
sleep 60 & pid=$!
touch "$OUT/running"
wait $pid
exit 0
""",
    )
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/%j.out", env={"OUT": str(tmp_path)})
    deadline = time.monotonic() + 120
    while not (tmp_path / "running").exists():
        assert time.monotonic() < deadline, slurm_cluster.tasks(job)
        time.sleep(0.1)
    slurm_cluster.cmd("scancel", "--signal=USR1", "--batch", str(job))
    assert slurm_cluster.wait(job, timeout=120) == {None: "FAILED"}
    assert slurm_cluster.exit_codes(job) == {None: "7:0"}
    assert (tmp_path / "trapped").read_text().strip() == "USR1"


def test_srun_inside_batch_script(slurm_cluster, tmp_path):
    # --overcommit: two tasks even on a one-CPU machine
    script = write_script(
        tmp_path / "srun.sh",
        """
#SBATCH --ntasks=2
#SBATCH --overcommit
srun --ntasks=2 bash -c 'echo "rank $SLURM_PROCID of $SLURM_NTASKS"' > "$OUT/ranks.txt"
""",
    )
    job = slurm_cluster.sbatch(script, f"--output={tmp_path}/%j.out", env={"OUT": str(tmp_path)})
    assert slurm_cluster.wait(job, timeout=120) == {None: "COMPLETED"}, (tmp_path / f"{job}.out").read_text()
    assert sorted((tmp_path / "ranks.txt").read_text().splitlines()) == ["rank 0 of 2", "rank 1 of 2"]


def test_walltime_signal(slurm_cluster, walltime_job):
    job, out = walltime_job
    assert slurm_cluster.wait(job, timeout=120) == {None: "COMPLETED"}, (out / f"{job}.out").read_text()
    assert (out / "warned").exists() and not (out / "unwarned").exists()
    started = int((out / "started").read_text().split()[1])
    warned = int((out / "warned").read_text().split()[1])
    assert 0 <= warned - started <= 60


def test_stop_leaves_no_process_behind(tmp_path):
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    with SlurmCluster() as cluster:
        script = write_script(
            tmp_path / "stray.sh",
            """
setsid sleep 300 < /dev/null > /dev/null 2>&1 &
touch "$OUT/running"
sleep 300
""",
        )
        cluster.sbatch(script, f"--output={tmp_path}/%j.out", env={"OUT": str(tmp_path)})
        deadline = time.monotonic() + 120
        while not (tmp_path / "running").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        daemons = cluster.pids()
        tmp = cluster.tmp
        assert set(daemons) == {"munged", "slurmctld", "slurmd"} and cluster._stray_pids()
    for name, pid in daemons.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], (
            name
        )
    needle = f"{MARKER}={tmp}".encode()
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes():
                    left.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass
    assert left == []
    assert not tmp.exists()
