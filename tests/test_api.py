"""The Python API (#28): every command has a function in `medisyn_cli`, each runs quietly with
show_progress=False (nothing on stdout or stderr: its messages are in what it returns), and `import medisyn_cli`
imports none of them until they are used."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import ImageOps

import medisyn_cli

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_IMAGES = sorted((FIXTURES / "images" / "images").glob("*.png"))
OTHER_IMAGES = sorted((FIXTURES / "screen" / "distinct").glob("*.png"))
VIEWS = {"id": lambda i: i, "h": ImageOps.mirror, "v": ImageOps.flip, "r90": lambda i: i.rotate(90)}

# command -> its API function; each takes show_progress
COMMANDS = {
    "generate": "run_generate",
    "train": "run_train",
    "index build": "build_index",
    "screen": "screen_dataset",
    "provenance": "check_provenance",
    "evaluate utility": "run_utility",
    "evaluate privacy": "run_privacy",
    "evaluate leakage": "run_leakage",
    "evaluate fidelity": "run_fidelity",
    "evaluate alignment": "run_alignment",
    "judge build": "build_judge",
    "study build": "build_study",
    "report": "write_report",
}
QUIET_BY_NATURE = {
    "merge": "merge_run",
    "study score": "score_study",
    "study serve": "make_server",
    "publish": "publish",
}  # no bar


def kind(path: Path) -> str:
    return "cell" if "blood" in path.name or "platelet" in path.name else "xray"


def label_folders(folder: Path, images: list[Path], views: list[str]) -> str:
    """<folder>/<label>/<name>_<view>.png for every image under every view."""
    from PIL import Image

    for path in images:
        for view in views:
            (folder / kind(path)).mkdir(parents=True, exist_ok=True)
            VIEWS[view](Image.open(path)).save(folder / kind(path) / f"{path.stem}_{view}.png")
    return str(folder)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, str]:
    """train (24 images: 12 cell, 12 xray), test (6, other patients), synthetic (24, other views of train)."""
    root = tmp_path_factory.mktemp("api")
    return {
        "train": label_folders(root / "train", TRAIN_IMAGES, ["id", "h"]),
        "test": label_folders(root / "test", OTHER_IMAGES, ["id", "h"]),
        "synthetic": label_folders(root / "synthetic", TRAIN_IMAGES, ["v", "r90"]),
        "root": str(root),
    }


@pytest.fixture(autouse=True)
def one_thread():
    """Torch and BLAS on one thread (a shared 2-core machine)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def quiet(capfd, function, *args, **kwargs):
    """function(*args, **kwargs) with show_progress=False where it takes it; asserts nothing was printed."""
    if "show_progress" in inspect.signature(function).parameters:
        kwargs["show_progress"] = False
    capfd.readouterr()
    result = function(*args, **kwargs)
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), f"{function.__name__} printed: {out + err}"
    return result


def test_import_medisyn_cli_imports_no_stage():
    code = (
        "import sys, medisyn_cli; "
        "print(sorted(m for m in sys.modules if m.startswith('medisyn_cli')), 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['medisyn_cli', 'medisyn_cli.core', 'medisyn_cli.core.lazy'] False", out


def test_every_public_name_resolves_and_every_command_has_a_quiet_function():
    for name in medisyn_cli.__all__:
        assert getattr(medisyn_cli, name) is not None, name
    assert medisyn_cli.__version__
    with pytest.raises(AttributeError, match="no attribute 'run_nothing'"):
        medisyn_cli.run_nothing  # noqa: B018
    for command, name in COMMANDS.items():
        parameters = inspect.signature(getattr(medisyn_cli, name)).parameters
        assert parameters["show_progress"].default is True, f"{command}: {name} has no show_progress=True"
    assert set(COMMANDS.values()) | set(QUIET_BY_NATURE.values()) <= set(medisyn_cli.__all__)


def test_evaluate_leakage_and_privacy_run_quietly(sets, tmp_path, capfd):
    leakage = quiet(
        capfd,
        medisyn_cli.run_leakage,
        medisyn_cli.LeakageConfig((sets["train"],), (sets["test"],), out=str(tmp_path / "leak")),
    )
    assert leakage["images"] == {"train": 24, "test": 12}
    assert json.loads((tmp_path / "leak" / "leakage.json").read_text())["count"] == leakage["count"]
    privacy = quiet(
        capfd,
        medisyn_cli.run_privacy,
        medisyn_cli.PrivacyConfig(
            (sets["train"],), (sets["test"],), (sets["synthetic"],), out=str(tmp_path / "priv")
        ),
    )
    assert privacy["images"]["synthetic"] == 24 and (tmp_path / "priv" / "privacy.json").is_file()


def test_evaluate_fidelity_and_utility_run_quietly(sets, tmp_path, capfd):
    fidelity = quiet(
        capfd,
        medisyn_cli.run_fidelity,
        medisyn_cli.FidelityConfig(
            (sets["train"],), (sets["synthetic"],), features="pixel", bootstrap=5, out=str(tmp_path)
        ),
    )
    assert fidelity["overall"]["real_images"] == 24 and fidelity["overall"]["fid"] > 0
    utility = quiet(
        capfd,
        medisyn_cli.run_utility,
        medisyn_cli.UtilityConfig(
            (sets["train"],),
            (sets["test"],),
            (sets["synthetic"],),
            fractions=(1.0,),
            seeds=1,
            steps=3,
            batch_size=8,
            size=16,
            bootstrap=5,
            out=str(tmp_path),
        ),
    )
    assert [row["steps"] for row in utility["rows"]] == [3, 3, 3]


def test_judge_alignment_study_index_screen_provenance_run_quietly(sets, tmp_path, capfd):
    judge = tmp_path / "judge"
    meta = quiet(capfd, medisyn_cli.build_judge, medisyn_cli.JudgeConfig((sets["train"],), str(judge)))
    assert meta["classes"] == ["cell", "xray"] and (judge / "judge.json").is_file()
    alignment = quiet(
        capfd,
        medisyn_cli.run_alignment,
        medisyn_cli.AlignmentConfig((sets["synthetic"],), str(judge), out=str(tmp_path / "align")),
    )
    assert alignment["images"] == 24
    key = quiet(
        capfd,
        medisyn_cli.build_study,
        medisyn_cli.StudyConfig(
            (sets["train"],), (sets["synthetic"],), str(tmp_path / "study"), pairs=4, classify=4
        ),
    )
    assert key["design"]["pairs"] == 4 and (tmp_path / "study" / "site" / "index.html").is_file()
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(_perfect_answers(key)))
    score, _ = quiet(capfd, medisyn_cli.score_study, tmp_path / "study", [answers], tmp_path / "score")
    assert score["readers"][0]["metrics"]["detection_accuracy"]["value"] == 1.0
    index = quiet(capfd, medisyn_cli.build_index, [sets["train"]], tmp_path / "index")
    assert index["count"] == 24
    summary = quiet(
        capfd, medisyn_cli.screen_dataset, sets["synthetic"], tmp_path / "index", report_dir=tmp_path / "scr"
    )
    assert summary.screened == 24
    found = quiet(capfd, medisyn_cli.check_provenance, [sets["synthetic"]], tmp_path / "prov")
    assert found.files == 24


def _perfect_answers(key: dict) -> dict:
    return {
        "format": "medisyn-study-answers",
        "version": 1,
        "study_id": key["study_id"],
        "reader": {"id": "r1", "years": 3, "role": "resident / trainee"},
        "started": "2026-01-01T00:00:00Z",
        "updated": "2026-01-01T01:00:00Z",
        "answers": [{"item": item["id"], "answer": item["answer"]} for item in key["items"]],
    }


@pytest.mark.slow
def test_generate_merge_report_and_train_run_quietly(tiny_model, manifest, tmp_path, capfd):
    out = tmp_path / "synth"
    config = medisyn_cli.GenerateConfig(
        manifest=str(manifest), n=6, out=str(out), model=str(tiny_model), steps=2
    )
    summary = quiet(capfd, medisyn_cli.run_generate, config)
    assert sum(count.written for count in summary.counts.values()) == 6
    assert quiet(capfd, medisyn_cli.merge_run, out).run == json.loads((out / "run.json").read_text())
    page, _notes = quiet(capfd, medisyn_cli.write_report, out)
    assert page.is_file()
    trained = quiet(
        capfd,
        medisyn_cli.run_train,
        medisyn_cli.TrainConfig(
            data=(str(out),),
            out=str(tmp_path / "model"),
            base=str(tiny_model),
            steps=2,
            vae_steps=0,
            batch_size=2,
            validate_every=0,
        ),
    )
    assert trained.steps == 2
