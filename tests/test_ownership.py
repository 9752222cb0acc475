"""One ownership rule for every folder medisyn writes: it creates a folder or reuses one with its marker, and never
deletes or overwrites a file it did not write. The six data-loss cases of issue 30, the `index build` cases, and a
guarantees matrix: every writing command x {foreign folder, a file, a symlink, `.`, a concurrent run, kill -9}."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.ownership import MARKER, TMP, claim, discard, move_aside, read_marker
from medisyn_cli.core.runlock import RunLock
from medisyn_cli.screening.build import build_index

PACKAGE = Path(__file__).resolve().parents[1] / "medisyn_cli"
FIXTURES = Path(__file__).parent / "fixtures" / "images"
MANIFEST = "label,prompt,mode\nmelanoma,dermoscopy image of melanoma,RGB\nnormal,frontal chest x-ray,L\n"


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file (its bytes) and folder under `folder`, a symlink as its target."""
    found: dict[str, bytes | str] = {}
    for path in sorted(Path(folder).rglob("*")):
        name = path.relative_to(folder).as_posix()
        found[name] = (
            f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
        )
    return found


def user_files(folder: Path, names=("thesis.txt", "src/train.py", "data/scan.png")) -> dict:
    """A user's folder: files of theirs, some named as medisyn names its own outputs."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f"the user's {name}".encode())
    return snapshot(folder)


LAST = {"output": ""}


def invoke(*args) -> tuple[int, str]:
    """Exit code and output (whitespace runs as one space) of a command run in-process."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    LAST["output"] = result.output
    return result.exit_code, " ".join(result.output.split())


def one_line(output: str, code: int) -> None:
    """A refusal is exit 2 with one line, starting with 'error:' (the last command's raw output)."""
    assert code == 2, output
    assert output.startswith("error:") and len(LAST["output"].strip().splitlines()) == 1, LAST["output"]


# --- fixtures: the tiny model, images, an index, a finished run ----------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Labelled real images (two label folders), a 'synthetic' copy, an index of them."""
    root = tmp_path_factory.mktemp("ownership")
    for name in ("real", "synthetic"):
        for png in sorted((FIXTURES / "images").glob("*.png")):
            kind = "xray" if png.name.startswith("te_") else "cell"
            (root / name / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, root / name / kind / f"{name}-{png.name}")
    build_index([FIXTURES], root / "index", show_progress=False)
    (root / "m.csv").write_text(MANIFEST)
    return {"root": root, "real": root / "real", "synthetic": root / "synthetic", "index": root / "index"}


def generate_args(data, tiny_model, out, *extra, n: int = 2, steps: int | None = 2) -> list:
    return [
        "generate",
        "--manifest",
        data["root"] / "m.csv",
        "--n",
        n,
        "--out",
        out,
        "--model",
        tiny_model,
        "--batch-size",
        2,
        *(["--steps", steps] if steps else []),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def run(data, tiny_model, tmp_path_factory) -> Path:
    """A finished generate run (never modified by a test: copy it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    code, output = invoke(*generate_args(data, tiny_model, out))
    assert code == 0, output
    return out


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, symlinks=True)
    return target


# --- one module deletes ----------------------------------------------------------------------------------


DELETING = {"rmtree", "unlink", "rmdir", "remove", "removedirs"}


def deleting_calls(tree: ast.Module) -> list[int]:
    """Lines that call rmtree, unlink, rmdir or os.remove (a list's .remove is not a file)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            if name in ("rmtree", "unlink", "rmdir", "removedirs") or (
                name == "remove" and isinstance(owner, ast.Name) and owner.id in ("os", "shutil")
            ):
                lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "shutil"):
            lines += [node.lineno for alias in node.names if alias.name in DELETING]
    return lines


def test_nothing_outside_core_deletes_files():
    found = {
        path.relative_to(PACKAGE).as_posix(): lines
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] != "core"
        and (lines := deleting_calls(ast.parse(path.read_text())))
    }
    assert found == {}, f"delete through medisyn_cli.core.ownership instead: {found}"


def test_the_deletion_check_finds_every_spelling():
    code = "import os, shutil\nshutil.rmtree(p)\np.unlink()\nos.remove(p)\np.rmdir()\nitems.remove(x)\n"
    assert deleting_calls(ast.parse(code)) == [2, 3, 4, 5]


# --- the six data-loss cases ---------------------------------------------------------------------------------


def test_1_study_build_overwrite_never_deletes_a_folder_with_a_key_json_it_did_not_make(data, tmp_path):
    project = tmp_path / "P"
    before = user_files(project, ("key.json", "src/analysis.py", "data/patients.csv"))
    code, output = invoke(
        "study", "build", "--real", data["real"], "--synthetic", data["synthetic"], "--out", project,
        "--pairs", 2, "--classify", 2, "--overwrite",
    )  # fmt: skip
    one_line(output, code)
    assert "was not made by medisyn study build" in output and str(project) in output
    assert snapshot(project) == before


def test_2_judge_build_overwrite_never_deletes_a_folder_with_a_judge_json_it_did_not_make(data, tmp_path):
    project = tmp_path / "P"
    before = user_files(project, ("judge.json", "notes.md", "weights/mine.pt"))
    code, output = invoke("judge", "build", data["real"], "--out", project, "--overwrite")
    one_line(output, code)
    assert "was not made by medisyn judge build" in output
    assert snapshot(project) == before


def test_3_report_and_screen_never_overwrite_the_users_report_files(data, run, tmp_path):
    mine = tmp_path / "mine"
    before = user_files(mine, ("report.html", "screen.csv", "report.json"))
    code, output = invoke("report", mine)
    one_line(output, code)
    assert "not a medisyn output folder" in output
    code, output = invoke("screen", FIXTURES, "--index", data["index"], "--out", mine, "--no-progress")
    one_line(output, code)
    assert "was not made by medisyn screen" in output
    assert snapshot(mine) == before
    out = copy_run(run, tmp_path / "run")  # a medisyn run, with the user's own report.html put inside
    (out / "report.html").write_text("my own page")
    code, output = invoke("report", out)
    one_line(output, code)
    assert "holds report.html, which medisyn did not write" in output
    assert (out / "report.html").read_text() == "my own page" and not (out / "report.json").exists()


def test_3_report_rewrites_its_own_files(run, tmp_path):
    out = copy_run(run, tmp_path / "run")
    assert invoke("report", out)[0] == 0
    first = (out / "report.json").read_bytes()
    code, output = invoke("report", out)
    assert code == 0, output
    assert (out / "report.json").read_bytes() == first
    assert {"report.html", "report.json"} <= set(read_marker(out)["files"])


def test_4_keep_out_never_touches_a_users_folder_named_like_a_temp(data, tmp_path):
    project = tmp_path / "proj"
    before = user_files(project / ".clean.tmp", ("scan-1.png", "notes.txt"))
    code, output = invoke(
        "screen", FIXTURES, "--index", data["index"], "--out", tmp_path / "report", "--keep-out",
        project / "clean", "--no-progress",
    )  # fmt: skip
    assert code == 0, output
    assert snapshot(project / ".clean.tmp") == before
    assert (project / "clean" / "metadata.csv").is_file() and not list((project / "clean").glob(f"{TMP}*"))


def test_5_overwrite_keeps_user_files_inside_medisyn_named_folders(data, tiny_model, run, tmp_path):
    out = copy_run(run, tmp_path / "o")
    theirs = ["slurm/my-job.sh", "screen/my-notes.txt", "imagefolder/melanoma/extra.png", "notes.txt"]
    for name in theirs:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(f"user {name}".encode())
    code, output = invoke(*generate_args(data, tiny_model, out, "--overwrite", "--seed", "1"))
    assert code == 0, output
    aside = next(tmp_path.glob("o.previous-*"))
    left = sorted(p.relative_to(aside).as_posix() for p in aside.rglob("*") if p.is_file())
    assert left == sorted(theirs)  # the old run's files are gone, every file of the user's stays
    assert all((aside / n).read_bytes() == f"user {n}".encode() for n in theirs)
    assert "4 files medisyn did not write were left" in output and "slurm/my-job.sh" in output


def test_6_nothing_may_write_into_a_run_moved_aside(data, tiny_model, run, tmp_path):
    out = copy_run(run, tmp_path / "o")
    aside = move_aside(out, "next")  # what --overwrite does before the new run starts
    code, output = invoke(*generate_args(data, tiny_model, aside / "screen"))
    one_line(output, code)
    assert "a run moved aside by --overwrite" in output
    code, output = invoke("screen", aside, "--index", data["index"], "--no-progress")
    one_line(output, code)
    assert "a run moved aside by --overwrite" in output and not (aside / "screen").exists()


def test_6_a_run_inside_a_replaced_run_is_not_deleted_with_it(data, tiny_model, run, tmp_path):
    out = copy_run(run, tmp_path / "o")
    inner = out / "screen"
    assert invoke(*generate_args(data, tiny_model, inner))[0] == 0  # a complete dataset of its own
    before = snapshot(inner)
    code, output = invoke(*generate_args(data, tiny_model, out, "--overwrite", "--seed", "1"))
    assert code == 0, output
    aside = next(tmp_path.glob("o.previous-*"))
    assert snapshot(aside / "screen") == before and f"left in {aside}: screen/" in output


# --- index build ---------------------------------------------------------------------------------------------


def unreadable(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"broken-{i}.png").write_bytes(b"not a png")
    return folder


def test_index_build_that_fails_leaves_no_empty_out(tmp_path):
    code, output = invoke(
        "index", "build", unreadable(tmp_path / "bad"), "--out", tmp_path / "idx", "--no-progress"
    )
    one_line(output, code)
    assert not (tmp_path / "idx").exists()


def test_index_overwrite_keeps_the_old_index_until_the_new_one_exists(data, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(data["index"], out)
    (out / "my-notes.txt").write_text("keep")
    before = snapshot(out)
    code, output = invoke(
        "index", "build", unreadable(tmp_path / "bad"), "--out", out, "--overwrite", "--no-progress"
    )
    one_line(output, code)
    assert {k: v for k, v in snapshot(out).items() if k != ".medisyn.lock"} == {
        k: v for k, v in before.items() if k != ".medisyn.lock"
    }
    code, output = invoke("index", "build", data["real"], "--out", out, "--overwrite", "--no-progress")
    assert code == 0, output
    assert (out / "my-notes.txt").read_text() == "keep" and "my-notes.txt" in output
    assert json.loads((out / "index.json").read_text())["count"] == 12
    assert not list(out.glob(f"{TMP}*"))


def test_index_build_into_an_out_in_use_is_refused(data, tmp_path):
    out = tmp_path / "idx"
    shutil.copytree(data["index"], out)
    with RunLock(out / ".medisyn.lock", "test"):
        code, output = invoke("index", "build", FIXTURES, "--out", out, "--overwrite", "--no-progress")
    one_line(output, code)
    assert "is in use by pid" in output and (out / "index.json").exists()


@pytest.mark.slow
def test_a_killed_index_build_is_reported_unfinished_and_the_next_build_cleans_up(data, tmp_path):
    out = tmp_path / "idx"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED.format(out=str(out), command="index build")], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL
    code, output = invoke("screen", FIXTURES, "--index", out, "--out", tmp_path / "r", "--no-progress")
    one_line(output, code)
    assert "unfinished build" in output
    code, output = invoke("index", "build", FIXTURES, "--out", out, "--no-progress")
    assert code == 0, output
    assert "unfinished output of a run that was killed" in output and not list(out.glob(f"{TMP}*"))


# --- generate: --out ., a symlink, asides of a killed --overwrite ----------------------------------------------


def test_out_dot_inside_a_run_with_overwrite_is_one_line(data, tiny_model, run, tmp_path, monkeypatch):
    out = copy_run(run, tmp_path / "o")
    before = snapshot(out)
    monkeypatch.chdir(out)
    code, output = invoke(*generate_args(data, tiny_model, ".", "--overwrite"))
    one_line(output, code)
    assert "is the current folder" in output
    assert snapshot(out) == before


def test_out_symlink_to_a_run_stays_a_symlink_through_overwrite(data, tiny_model, run, tmp_path):
    real = copy_run(run, tmp_path / "real-run")
    link = tmp_path / "link"
    link.symlink_to(real)
    code, output = invoke(*generate_args(data, tiny_model, link, "--overwrite", "--seed", "1"))
    assert code == 0, output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads((real / "run.json").read_text())["options"]["seed"] == 1
    assert not list(tmp_path.glob("*.previous-*"))


def test_asides_of_a_killed_overwrite_are_named_by_the_next_run(data, tiny_model, run, tmp_path):
    out = copy_run(run, tmp_path / "o")
    first = move_aside(out, "killed")  # an --overwrite killed after moving the old run aside
    out.mkdir()
    code, output = invoke(*generate_args(data, tiny_model, out, "--overwrite", "--seed", "2"))
    assert code == 0, output
    assert str(first) in output and "did not complete" in output
    assert (first / "run.json").exists()  # named, and kept


# --- the module's own rules ------------------------------------------------------------------------------------


def test_discard_deletes_only_recorded_files_and_nested_results_of_that_run(tmp_path):
    out = tmp_path / "r"
    with claim(out, "judge build") as owner:
        owner.write_text("judge.json", "{}")
        owner.write_text("sub/model.npz", "w")
    (out / "sub" / "mine.txt").write_text("user")
    with claim(out / "evaluate", "evaluate") as owner:  # nested: part of the result
        owner.write_text("fidelity.json", "{}")
    assert read_marker(out / "evaluate")["parent"] == read_marker(out)["run_id"]
    assert discard(out) == ["sub/mine.txt"]
    assert snapshot(out) == {"sub": "dir", "sub/mine.txt": b"user"}


def test_a_file_the_folder_does_not_record_is_never_replaced(tmp_path):
    with claim(tmp_path / "e", "evaluate") as owner:
        (owner.path / "fidelity.json").write_text("user")
        with pytest.raises(ValueError, match="holds fidelity.json, which medisyn did not write"):
            owner.write_text("fidelity.json", "{}")
    assert (tmp_path / "e" / "fidelity.json").read_text() == "user"


# --- the guarantees matrix ------------------------------------------------------------------------------------


def command_args(name: str, out, data, tiny_model) -> list:
    """The command line of each writing command, writing to `out`."""
    real, synthetic, index = data["real"], data["synthetic"], data["index"]
    return {
        "generate": generate_args(data, tiny_model, out),
        "generate --overwrite": generate_args(data, tiny_model, out, "--overwrite"),
        "screen --out": ["screen", FIXTURES, "--index", index, "--out", out, "--no-progress"],
        "screen --keep-out": [
            "screen", FIXTURES, "--index", index, "--out", data["root"] / "r", "--keep-out", out, "--no-progress",
        ],
        "report": ["report", out],
        "merge": ["merge", out],
        "index build": ["index", "build", FIXTURES, "--out", out, "--overwrite", "--no-progress"],
        "judge build": ["judge", "build", real, "--out", out, "--overwrite"],
        "study build": [
            "study", "build", "--real", real, "--synthetic", synthetic, "--out", out, "--pairs", 2, "--classify",
            2, "--overwrite",
        ],
        "train": [
            "train", FIXTURES, "--out", out, "--config", "tiny", "--resolution", 32, "--steps", 1, "--vae-steps",
            1, "--batch-size", 4, "--validate-every", 0, "--mixed-precision", "no", "--resume",
        ],
        "evaluate --out": [
            "evaluate", "fidelity", "--real", real, "--synthetic", synthetic, "--features", "pixel", "--out", out,
        ],
    }[name]  # fmt: skip


COMMANDS = [
    "generate",
    "generate --overwrite",
    "screen --out",
    "screen --keep-out",
    "report",
    "merge",
    "index build",
    "judge build",
    "study build",
    "train",
    "evaluate --out",
]
MARKED = {"generate": "generate", "generate --overwrite": "generate", "screen --out": "screen"}
MARKED |= {"screen --keep-out": "screen", "report": "generate", "index build": "index build"}
MARKED |= {"judge build": "judge build", "study build": "study build", "train": "train"}
MARKED |= {"evaluate --out": "evaluate", "merge": "generate"}
# files named as the command names its own outputs, put in a folder medisyn did not make
THEIRS = (
    "run.json",
    "report.html",
    "index.json",
    "judge.json",
    "key.json",
    "screen.json",
    "fidelity.json",
    "a/b.txt",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_matrix_a_foreign_non_empty_folder_is_refused_untouched(command, data, tiny_model, tmp_path):
    out = tmp_path / "theirs"
    before = user_files(out, THEIRS)
    code, output = invoke(*command_args(command, out, data, tiny_model))
    one_line(output, code)
    assert str(out) in output
    assert snapshot(out) == before and not list(tmp_path.glob("theirs.*"))


@pytest.mark.parametrize("command", COMMANDS)
def test_matrix_a_file_as_out_is_refused_untouched(command, data, tiny_model, tmp_path):
    out = tmp_path / "a-file"
    out.write_bytes(b"user data")
    code, output = invoke(*command_args(command, out, data, tiny_model))
    one_line(output, code)
    assert out.read_bytes() == b"user data"


@pytest.mark.parametrize("command", COMMANDS)
def test_matrix_a_symlink_to_a_foreign_folder_is_refused_untouched(command, data, tiny_model, tmp_path):
    target = tmp_path / "theirs"
    before = user_files(target, THEIRS)
    link = tmp_path / "link"
    link.symlink_to(target)
    code, output = invoke(*command_args(command, link, data, tiny_model))
    one_line(output, code)
    assert link.is_symlink() and snapshot(target) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_matrix_dot_in_a_foreign_folder_is_refused_untouched(
    command, data, tiny_model, tmp_path, monkeypatch
):
    folder = tmp_path / "theirs"
    before = user_files(folder, THEIRS)
    monkeypatch.chdir(folder)
    code, output = invoke(*command_args(command, ".", data, tiny_model))
    one_line(output, code)
    assert snapshot(folder) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_matrix_a_folder_in_use_by_a_live_process_is_refused(command, data, tiny_model, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / MARKER).write_text(
        json.dumps({"tool": "medisyn", "command": MARKED[command], "run_id": "r", "files": []})
    )
    with RunLock(out / ".medisyn.lock", "test"):
        before = snapshot(out)
        code, output = invoke(*command_args(command, out, data, tiny_model))
        one_line(output, code)
        assert "in use by pid" in output and snapshot(out) == before


KILLED = """
import os, signal
from medisyn_cli.core.ownership import claim
owner = claim({out!r}, {command!r})
owner.temp("new").mkdir()
(owner.temp("new") / "index.faiss").write_bytes(b"half")
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", ["screen --out", "index build", "judge build", "study build", "evaluate --out"]
)
def test_matrix_kill_9_then_rerun_completes_and_leaves_no_temp(command, data, tiny_model, tmp_path):
    out = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED.format(out=str(out), command=MARKED[command])], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL and list(out.glob(f"{TMP}*"))
    code, output = invoke(*command_args(command, out, data, tiny_model))
    assert code == 0, output
    assert not list(out.glob(f"{TMP}*")) and not (out / ".medisyn.lock").exists()


# --- concurrent runs as real processes of the installed `medisyn` ---------------------------------------------


def medisyn(*args) -> subprocess.Popen:
    exe = shutil.which("medisyn") or str(Path(sys.executable).with_name("medisyn"))
    return subprocess.Popen(
        [exe, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


@pytest.mark.slow
def test_two_index_builds_into_one_out_one_wins_the_other_is_one_line(data, tmp_path):
    out = tmp_path / "idx"
    results = [finish(p) for p in [medisyn("index", "build", data["real"], "--out", out, "--no-progress")
                                   for _ in range(2)]]  # fmt: skip
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(output for code, output in results if code == 2)
    assert len(refused.strip().splitlines()) == 1 and (
        "in use by pid" in refused or "holds an index" in refused
    )
    assert json.loads((out / "index.json").read_text())["count"] == 12 and not list(out.glob(f"{TMP}*"))


@pytest.mark.slow
def test_keep_out_racing_generate_into_one_folder_one_is_refused_before_writing(data, tiny_model, tmp_path):
    target = tmp_path / "B"
    generate = medisyn(*generate_args(data, tiny_model, target, n=6))
    screen = medisyn(
        "screen", data["synthetic"], "--index", data["index"], "--out", tmp_path / "r", "--keep-out", target,
        "--no-progress",
    )  # fmt: skip
    results = {"generate": finish(generate), "screen": finish(screen)}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    loser = next(name for name, (code, _) in results.items() if code == 2)
    assert len(results[loser][1].strip().splitlines()) == 1, results[loser]
    assert not list(tmp_path.glob(".*tmp*")) and not list(target.glob(f"{TMP}*"))
    if loser == "screen":
        assert (target / "run.json").exists() and read_marker(target)["command"] == "generate"
    else:
        assert read_marker(target)["command"] == "screen" and (tmp_path / "r" / "screen.json").exists()


@pytest.mark.parametrize(
    "command", ["screen --out", "report", "index build", "judge build", "study build", "evaluate --out"]
)
def test_matrix_user_files_inside_a_medisyn_folder_survive_a_rerun(command, data, tiny_model, run, tmp_path):
    out = copy_run(run, tmp_path / "out") if command == "report" else tmp_path / "out"
    code, output = invoke(*command_args(command, out, data, tiny_model))
    assert code == 0, output
    theirs = {"mine.txt": b"user notes", "sub/mine.csv": b"a,b"}
    for name, content in theirs.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    code, output = invoke(*command_args(command, out, data, tiny_model))  # --overwrite where it has one
    assert code == 0, output
    assert all((out / name).read_bytes() == content for name, content in theirs.items())
    assert not list(out.glob(f"{TMP}*")) and not (out / ".medisyn.lock").exists()


def test_single_and_sharded_index_builds_never_share_an_out(data, tmp_path):
    from medisyn_cli.core.errors import MedisynError
    from medisyn_cli.core.runlock import RunBusy
    from medisyn_cli.core.shards import parse_shard

    out = tmp_path / "idx"
    assert build_index([FIXTURES], out, batch_size=4, show_progress=False, shard=parse_shard("0/2"))[
        "partial"
    ]
    with pytest.raises(MedisynError, match="holds an unfinished sharded build"):
        build_index([FIXTURES], out, batch_size=4, show_progress=False, overwrite=True)
    assert (out / "_shards" / "config.json").exists()
    busy = tmp_path / "busy"
    with claim(busy, "index build"):
        with pytest.raises(RunBusy, match="in use by pid"):
            build_index([FIXTURES], busy, batch_size=4, show_progress=False, shard=parse_shard("1/2"))


@pytest.mark.slow
def test_kill_9_during_overwrite_then_overwrite_again_names_the_first_aside(data, tiny_model, run, tmp_path):
    import time

    slow = tmp_path / "slow-model"
    shutil.copytree(tiny_model, slow)
    (slow / "medisyn.json").write_text(json.dumps({"recommended": {"steps": 40}}))
    out = copy_run(run, tmp_path / "o")
    proc = medisyn(*generate_args(data, slow, out, "--overwrite", "--seed", "1", n=12, steps=None))
    deadline, done = time.time() + 240, out / "_work" / "done"
    while not (done.exists() and any(done.glob("b-*.json"))):  # the model's 40 steps: the kill lands mid-run
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = next(tmp_path.glob("o.previous-*"))
    old = snapshot(first)
    code, output = finish(medisyn(*generate_args(data, tiny_model, out, "--overwrite", "--seed", "2")))
    assert code == 0, output
    assert str(first) in " ".join(output.split()) and "did not complete" in " ".join(output.split())
    assert {k: v for k, v in snapshot(first).items() if k != MARKER} == {
        k: v for k, v in old.items() if k != MARKER
    }


# --- signals and file-size limits, for every writing command, as real processes -------------------------------


def inputs_of(data) -> dict:
    """The commands' inputs (images, index, runs), without `screen --keep-out`'s report folder `r`."""
    return {k: v for k, v in snapshot(data["root"]).items() if k != "r" and not k.startswith("r/")}


FRESH_OUT = [c for c in COMMANDS if c not in ("report", "merge", "generate --overwrite")]


def run_medisyn(
    args: list, limit_bytes: int | None = None, term_after: float | None = None
) -> tuple[int, str]:
    """Run the installed `medisyn` (output to pipes, no terminal); optionally under a file-size limit
    (RLIMIT_FSIZE, as `ulimit -f`) or with SIGTERM sent `term_after` seconds after it starts."""
    import resource
    import time

    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    exe = shutil.which("medisyn") or str(Path(sys.executable).with_name("medisyn"))
    proc = subprocess.Popen(
        [exe, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=limit
    )
    if term_after is not None:
        time.sleep(term_after)
        proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=600)
    return proc.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_matrix_sigterm_at_start_up_exits_75_in_one_line_and_writes_nothing(
    command, data, tiny_model, tmp_path
):
    out = tmp_path / "theirs"
    before = user_files(out, ("thesis.txt",))
    inputs = inputs_of(data)
    code, output = run_medisyn(command_args(command, out, data, tiny_model), term_after=0.4)
    assert code == 75, output
    assert output.strip().splitlines() == [
        "interrupted: SIGTERM: stopped while medisyn was starting; nothing was written: "
        "run the same command again (generate: with --resume if its run had started before)"
    ]
    assert snapshot(out) == before and inputs_of(data) == inputs


@pytest.mark.slow
@pytest.mark.parametrize("command", FRESH_OUT)
def test_matrix_a_file_size_limit_is_one_line_exit_2_and_changes_no_input(
    command, data, tiny_model, tmp_path
):
    """EFBIG (`ulimit -f`, a quota) like a full disk: one line naming the cause and how to go on, exit 2; the
    inputs are untouched and no temp file of the command is left in the folder it claimed."""
    out = tmp_path / "new"
    inputs = inputs_of(data)
    code, output = run_medisyn(command_args(command, out, data, tiny_model), limit_bytes=1024)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == 2, output
    assert lines[-1].startswith("error:") and "File too large" in lines[-1], output
    assert inputs_of(data) == inputs
    assert not list(out.glob(f"{TMP}*"))
