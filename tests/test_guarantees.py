"""What medisyn guarantees (README): it never deletes what it did not write, never reports another dataset as
done, never runs twice into one --out, and a kill at any moment leaves a resumable run and no partial dataset."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.runlock import RunBusy, RunLock

MANIFEST = (
    "label,prompt,mode\n"
    "melanoma,dermoscopy image of melanoma,RGB\n"
    "nevus,dermoscopy image of benign melanocytic nevus,RGB\n"
    "normal,frontal chest x-ray,L\n"
)
pytestmark = pytest.mark.slow


def exe() -> str:
    return shutil.which("medisyn") or str(Path(sys.executable).with_name("medisyn"))


def start(tmp: Path, model: Path, out: Path, *extra: str, n: int = 10, **popen) -> subprocess.Popen:
    """`medisyn generate` as a real process, its output redirected (as in a batch job)."""
    if not (tmp / "m.csv").exists():
        (tmp / "m.csv").write_text(MANIFEST)
    return subprocess.Popen(
        [
            exe(),
            "generate",
            "--manifest",
            str(tmp / "m.csv"),
            "--n",
            str(n),
            "--out",
            str(out),
            "--model",
            str(model),
            "--batch-size",
            "2",
            "--no-progress",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run(tmp: Path, model: Path, out: Path, *extra: str, n: int = 10, timeout: float = 300):
    proc = start(tmp, model, out, *extra, n=n)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, " ".join((stdout + stderr).split())


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def batches_done(out: Path) -> int:
    return len(list((out / "_work" / "done").glob("b-*.json"))) if (out / "_work" / "done").exists() else 0


@pytest.fixture
def slow(tiny_model, tmp_path) -> Path:
    """The tiny model with many steps recommended, so a signal lands mid-run."""
    model = tmp_path / "slow"
    shutil.copytree(tiny_model, model)
    (model / "medisyn.json").write_text(json.dumps({"recommended": {"steps": 40}}))
    return model


def seeds(out: Path) -> set[int]:
    return {json.loads((out / "run.json").read_text())["options"]["seed"]}


# --- --overwrite ---------------------------------------------------------------------------------------------


def test_overwrite_never_deletes_a_folder_medisyn_did_not_make(tiny_model, tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "slurm").mkdir()
    (project / "thesis.txt").write_text("three years")
    (project / "src" / "train.py").write_text("print()")
    (project / "slurm" / "job-1.out").write_text("log")
    (project / "run.json").write_text("{}")
    code, output = run(tmp_path, tiny_model, project, "--overwrite", n=3)
    assert code == 2 and "was not made by medisyn generate" in output
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == [
        "run.json",
        "slurm",
        "slurm/job-1.out",
        "src",
        "src/train.py",
        "thesis.txt",
    ]


def test_overwrite_replaces_the_run_only_when_the_new_one_completes_and_keeps_foreign_files(
    tiny_model, tmp_path
):
    out = tmp_path / "o"
    assert run(tmp_path, tiny_model, out, n=3)[0] == 0
    (out / "my-notes.txt").write_text("keep me")
    code, output = run(tmp_path, tiny_model, out, "--overwrite", "--seed", "1", n=6)
    assert code == 0, output
    assert len(pd.read_parquet(out / "parquet")) == 6 and seeds(out) == {1}
    left = [p for p in tmp_path.iterdir() if p.name.startswith("o.previous-")]
    assert [sorted(q.name for q in p.iterdir()) for p in left] == [["my-notes.txt"]]
    assert "my-notes.txt" in output


def test_sigterm_during_overwrite_keeps_the_old_dataset_and_a_resumable_new_run(slow, tmp_path):
    out = tmp_path / "o"
    assert run(tmp_path, slow, out, n=3)[0] == 0
    proc = start(tmp_path, slow, out, "--overwrite", "--seed", "1")
    wait_for(lambda: batches_done(out) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    stderr = " ".join(stderr.split())
    assert proc.returncode == 75 and "resume with --resume" in stderr and "kept intact at" in stderr
    aside = next(p for p in tmp_path.iterdir() if p.name.startswith("o.previous-"))
    assert str(aside) in stderr and len(pd.read_parquet(aside / "parquet")) == 3 and seeds(aside) == {0}
    assert not (out / "run.json").exists() and not (out / "parquet").exists()
    code, output = run(tmp_path, slow, out, "--resume")  # the old options: refused, naming the difference
    assert code == 2 and "seed: 1 there, 0 now" in output
    code, output = run(tmp_path, slow, out, "--resume", "--seed", "1")
    assert code == 0, output
    assert len(pd.read_parquet(out / "parquet")) == 10 and seeds(out) == {1} and not aside.exists()


# --- one process per --out -----------------------------------------------------------------------------------


def test_a_second_process_into_a_running_out_is_refused_and_harms_nothing(slow, tmp_path):
    out = tmp_path / "o"
    first = start(tmp_path, slow, out)
    wait_for(lambda: (out / ".medisyn.lock").exists() and batches_done(out) >= 1, first)
    first.send_signal(signal.SIGSTOP)  # hold it mid-run (alive, lock held) however fast this machine is
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            code, output = run(tmp_path, slow, out, *extra)
            assert code == 2 and f"pid {first.pid} on" in output and "is in use by" in output, (extra, output)
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert len(pd.read_parquet(out / "parquet")) == 10 and not (out / ".medisyn.lock").exists()
    assert not [p for p in tmp_path.iterdir() if ".previous-" in p.name]


def test_a_lock_left_by_a_dead_process_or_a_silent_node_is_taken_over(tmp_path):
    path = tmp_path / "lock"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "since": "then"}))
    with RunLock(path, "run") as lock:
        assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(RunBusy, match=f"pid {os.getpid()} on"):
            RunLock(path, "run").acquire()
    assert not path.exists()
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "since": "then"}))
    beating = threading.Event()

    def heartbeat():  # a live holder on another node touches its lock
        while not beating.wait(0.05):
            os.utime(path)

    thread = threading.Thread(target=heartbeat)
    thread.start()
    try:
        with pytest.raises(RunBusy, match="other-node"):
            RunLock(path, "run", stale_after=60, heartbeat=0.4).acquire()
    finally:
        beating.set()
        thread.join()
    clock = time.monotonic()  # the node died: its heartbeat stops, and the lock is taken over after 2.5 beats
    with RunLock(path, "run", stale_after=60, heartbeat=0.4):
        assert json.loads(path.read_text())["host"] == os.uname().nodename
    assert time.monotonic() - clock >= 1.0
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "since": "then"}))
    old = time.time() - 120  # a heartbeat older than stale_after: taken over at once
    os.utime(path, (old, old))
    with RunLock(path, "run", stale_after=60, heartbeat=100):
        assert json.loads(path.read_text())["host"] == os.uname().nodename


# --- --resume and --shard check the run they find --------------------------------------------------------------


def test_resume_or_shard_on_a_complete_run_refuses_other_options(tiny_model, tmp_path):
    out = tmp_path / "o"
    assert run(tmp_path, tiny_model, out, "--threads", "1", n=6)[0] == 0
    cases = [
        (["--resume", "--seed", "7", "--steps", "7"], n, ["seed: 0 there, 7 now", "steps: 25 there, 7 now"])
        for n in (6,)
    ]
    cases += [
        (["--shard", "1/4"], 5000, ["n: 6 there, 5000 now"]),
        (["--resume", "--threads", "2"], 6, ["threads: 1 there, 2 now"]),
    ]
    for extra, n, messages in cases:
        code, output = run(tmp_path, tiny_model, out, *extra, n=n)
        assert code == 2 and all(m in output for m in messages), output
    (tmp_path / "m.csv").write_text(MANIFEST.replace("nevus,", "naevus,"))
    code, output = run(tmp_path, tiny_model, out, "--resume", n=6)
    assert code == 2 and "manifest_sha256" in output
    (tmp_path / "m.csv").write_text(MANIFEST)
    code, output = run(tmp_path, tiny_model, out, "--resume", n=6)
    assert code == 0 and "already complete" in output
    record = json.loads((out / "run.json").read_text())
    assert record["key"]["threads"] == 1 and record["options"]["threads"] == 1
    del record["key"]  # a run.json written by medisyn 0.1
    (out / "run.json").write_text(json.dumps(record))
    assert "seed: 0 there, 3 now" in run(tmp_path, tiny_model, out, "--resume", "--seed", "3", n=6)[1]


# --- kills, signals and what a loader sees -------------------------------------------------------------------


def test_after_kill_9_no_partial_dataset_is_loadable_and_ctrl_c_says_how_to_resume(slow, tmp_path):
    out = tmp_path / "o"
    proc = start(tmp_path, slow, out)
    wait_for(lambda: batches_done(out) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "imagefolder").exists() and not (out / "parquet").exists()
    assert list((out / "_work" / "images").rglob("*.png"))
    proc = start(tmp_path, slow, out, "--resume")
    wait_for(lambda: batches_done(out) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert (
        proc.returncode == 130 and "Ctrl-C" in stderr and "resume with --resume" in " ".join(stderr.split())
    )
    code, output = run(tmp_path, slow, out, "--resume")
    assert code == 0, output
    from torchvision.datasets import ImageFolder

    assert len(ImageFolder(str(out / "imagefolder"))) == 10


def handles(pid: int, *numbers: int) -> bool:
    """True once the process has its own handler for each signal (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return all(mask >> (number - 1) & 1 for number in numbers)


def loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads /proc to see when start-up is under way"
)
def test_a_signal_during_start_up_is_one_line_and_exit_75_or_130(tiny_model, tmp_path):
    out = tmp_path / "o"
    cases = [
        (signal.SIGTERM, None, 75, "interrupted: SIGTERM"),  # the moment the CLI starts: before Typer parses
        (signal.SIGUSR1, "libtorch", 75, "interrupted: SIGUSR1"),  # while the model loads
        (signal.SIGINT, "libtorch", 130, "interrupted: Ctrl-C"),
    ]
    for number, library, code, message in cases:
        proc = start(tmp_path, tiny_model, out)
        wait_for(lambda p=proc.pid: handles(p, signal.SIGTERM, signal.SIGUSR1), proc, timeout=60)
        if library:
            wait_for(lambda p=proc.pid, lib=library: loaded(p, lib), proc, timeout=60)
        proc.send_signal(number)
        stdout, stderr = proc.communicate(timeout=60)
        lines = (stdout + stderr).strip().splitlines()
        assert proc.returncode == code and len(lines) == 1 and lines[0].startswith(message), (number, lines)
        assert "--resume" in lines[0] or number == signal.SIGINT
        assert not (out / "_work").exists()


def test_disk_full_names_the_file_and_how_to_resume(tiny_model, tmp_path, monkeypatch):
    import errno

    from medisyn_cli.generate import worker as runner  # the batch worker writes each row

    (tmp_path / "m.csv").write_text(MANIFEST)
    real = runner.provenance_row
    calls = {"n": 0}

    def full(item, constant):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "x.png"))
        return real(item, constant)

    monkeypatch.setattr(runner, "provenance_row", full)
    args = [
        "generate",
        "--manifest",
        str(tmp_path / "m.csv"),
        "--n",
        "10",
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(tiny_model),
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "No space left on device" in text and "x.png" in text
    assert "2 of 5 batches are done and kept" in text and "--resume" in text
    monkeypatch.setattr(runner, "provenance_row", real)
    assert CliRunner().invoke(app, args + ["--resume"]).exit_code == 0
    assert len(pd.read_parquet(tmp_path / "o" / "parquet")) == 10


def test_a_file_size_limit_is_like_a_full_disk_one_line_naming_the_file_and_resumable(tiny_model, tmp_path):
    import resource

    out = tmp_path / "o"
    for kib, named in ((2, str(out / "_work" / "config.json")), (30, str(out))):
        proc = start(
            tmp_path,
            tiny_model,
            out,
            "--steps",
            "2",
            *(["--resume"] if out.exists() else []),
            n=12,
            preexec_fn=lambda kib=kib: resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024)),
        )
        stdout, stderr = proc.communicate(timeout=300)
        lines = (stdout + stderr).strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "File too large" in lines[0], lines
        assert f"error: {named}" in lines[0] and "--resume" in lines[0]
    code, output = run(tmp_path, tiny_model, out, "--steps", "2", "--resume", n=12)
    assert code == 0, output
    assert len(pd.read_parquet(out / "parquet")) == 12


# --- medisyn screen ------------------------------------------------------------------------------------------


def test_screen_keep_out_copy_tells_its_own_counts_and_unreadable_input_fails(tiny_model, tmp_path):
    from medisyn_cli.screening.build import build_index

    code, output = run(tmp_path, tiny_model, tmp_path / "synth", n=6)
    assert code == 0, output
    out = tmp_path / "synth"
    build_index([out / "imagefolder" / "melanoma"], tmp_path / "idx", show_progress=False)
    result = CliRunner().invoke(
        app,
        [
            "screen",
            str(out),
            "--index",
            str(tmp_path / "idx"),
            "--keep-out",
            str(tmp_path / "kept"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    kept = json.loads((tmp_path / "kept" / "run.json").read_text())
    assert kept["classes"]["melanoma"]["written"] == 0 and kept["classes"]["nevus"]["written"] == 2
    assert kept["filtered"]["near_copies_removed"] == 2 and kept["filtered"]["threshold"] > 0
    card = (tmp_path / "kept" / "README.md").read_text()
    assert "| melanoma | 0 |" in card and "filtered afterwards by `medisyn screen --keep-out`: 2" in card
    assert "pretty_name: kept\n" in card and "# kept: synthetic" in card and ".medisyn-tmp" not in card
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.png", "b.png"):
        (broken / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = CliRunner().invoke(
        app,
        [
            "screen",
            str(broken),
            "--index",
            str(tmp_path / "idx"),
            "--out",
            str(tmp_path / "rep"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "none of its 2 images could be read" in result.output
    assert not (tmp_path / "rep").exists()
    shutil.copy(out / "imagefolder" / "nevus" / "nevus-000000.png", broken / "c.png")
    result = CliRunner().invoke(
        app,
        [
            "screen",
            str(broken),
            "--index",
            str(tmp_path / "idx"),
            "--out",
            str(tmp_path / "rep"),
            "--fail-on-copies",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1 and "2 unreadable images count as failures" in " ".join(
        result.output.split()
    )
