"""The run lock: a lock file medisyn did not write never crashes a run, and a reused pid does not hold a lock."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.runlock import RunBusy, RunLock, process_start, read_holder

HOST = socket.gethostname()
MALFORMED = [
    json.dumps({"host": HOST, "pid": "abc", "since": "then"}),
    "[1, 2, 3]",
    json.dumps({"host": HOST, "pid": 123456789012345678901}),
    json.dumps({"host": HOST, "pid": -4}),
    json.dumps({"host": HOST, "pid": True}),
    '{"host": ["x"], "pid": 12}',
    "{}",
    '"just a string"',
]


@pytest.fixture
def sleeper():
    """A live process unrelated to any lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("content", MALFORMED)
def test_a_malformed_lock_is_refused_naming_the_file_then_taken_over_once_untouched(tmp_path, content):
    path = tmp_path / ".medisyn.lock"
    path.write_text(content)
    with pytest.raises(RunBusy) as busy:
        RunLock(path, "run", stale_after=60).acquire()
    message = str(busy.value)
    assert str(path) in message and "not a medisyn lock file" in message and "\n" not in message
    old = time.time() - 120  # no heartbeat for longer than stale_after: no live medisyn process holds it
    os.utime(path, (old, old))
    with RunLock(path, "run", stale_after=60) as lock:
        assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_lock_being_written_is_not_called_malformed(tmp_path):
    path = tmp_path / "lock"
    path.write_text("")
    assert read_holder(path) == {}
    path.write_text('{"host": "a", "pi')
    assert read_holder(path) == {}


def test_the_lock_records_when_its_process_started(tmp_path):
    path = tmp_path / "lock"
    with RunLock(path, "run"):
        record = json.loads(path.read_text())
    assert record["started"] == process_start(os.getpid()) and record["started"] is not None


def test_a_reused_pid_does_not_hold_the_lock_but_its_holder_does(tmp_path, sleeper):
    path = tmp_path / "lock"
    started = process_start(sleeper.pid)
    assert started is not None and started != process_start(os.getpid())
    path.write_text(json.dumps({"host": HOST, "pid": sleeper.pid, "started": started}))
    with pytest.raises(RunBusy, match=f"pid {sleeper.pid} on"):
        RunLock(path, "run").acquire()
    path.write_text(json.dumps({"host": HOST, "pid": sleeper.pid}))  # a lock of medisyn 0.1: pid only
    with pytest.raises(RunBusy, match=f"pid {sleeper.pid} on"):
        RunLock(path, "run").acquire()
    # the holder died and its pid now names an unrelated process that started at another time
    path.write_text(json.dumps({"host": HOST, "pid": sleeper.pid, "started": started + "0"}))
    with RunLock(path, "run") as lock:
        assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()


def test_generate_into_a_folder_with_a_malformed_lock_is_one_line_exit_2(tiny_model, tmp_path):
    (tmp_path / "m.csv").write_text("label,prompt\nmelanoma,dermoscopy image of melanoma\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / ".medisyn.lock").write_text('{"pid": "abc"}')
    args = ["generate", "--manifest", str(tmp_path / "m.csv"), "--n", "2", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--model", str(tiny_model), "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "not a medisyn lock file" in text and str(out / ".medisyn.lock") in text
    assert "Traceback" not in result.output and sorted(p.name for p in out.iterdir()) == [".medisyn.lock"]
