"""Shards into one --out, resume after kill -9 or SIGTERM, merge: always the dataset of one uninterrupted run."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate

MANIFEST = (
    "label,prompt,mode\n"
    "melanoma,dermoscopy image of melanoma,RGB\n"
    "nevus,dermoscopy image of benign melanocytic nevus,RGB\n"
    "normal,frontal chest x-ray,L\n"
)


def config(tmp: Path, model: Path, name: str, **options) -> GenerateConfig:
    (tmp / "m.csv").write_text(MANIFEST)
    return GenerateConfig(
        manifest=str(tmp / "m.csv"),
        n=options.pop("n", 10),
        out=str(tmp / name),
        model=str(model),
        steps=options.pop("steps", 2),
        batch_size=options.pop("batch_size", 2),
        rows_per_part=options.pop("rows_per_part", 4),
        **options,
    )


def dataset(out: Path) -> dict:
    """Everything a user loads, in file order: parquet parts, metadata.csv, PNG bytes."""
    parts = sorted((out / "parquet").glob("*.parquet"))
    frames = [pd.read_parquet(p) for p in parts]
    frame = pd.concat(frames, ignore_index=True)
    pngs = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "imagefolder").rglob("*.png")}
    return {
        "parts": [(p.name, len(f)) for p, f in zip(parts, frames)],
        "rows": frame.drop(columns=["image"]).astype(object).where(frame.notna(), None).to_dict("records"),
        "images": [row["bytes"] for row in frame["image"]],
        "metadata": (out / "imagefolder" / "metadata.csv").read_text(),
        "pngs": pngs,
    }


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    out = run_generate(config(tmp, tiny_model, "one"), show_progress=False).out
    return tmp, dataset(out)


@pytest.mark.parametrize("count", [3, 16])
def test_any_split_into_shards_gives_the_dataset_of_one_process(tiny_model, reference, count):
    tmp, expected = reference
    summaries = [
        run_generate(config(tmp, tiny_model, f"split{count}", shard=f"{k}/{count}"), show_progress=False)
        for k in range(count)
    ]
    finisher = min(count, 5) - 1  # 5 batches: the shard of the last batch consolidates
    assert [s.complete for s in summaries] == [False] * finisher + [True] * (count - finisher)
    out = summaries[-1].out
    assert dataset(out) == expected and not (out / "_work").exists()
    run = json.loads((out / "run.json").read_text())
    assert (
        run["batches"] == {"count": 5, "size": 2} and sum(c["written"] for c in run["classes"].values()) == 10
    )


def test_shards_find_their_place_in_the_slurm_environment(tiny_model, reference):
    tmp, expected = reference
    for task in (1, 0):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "2"}
        summary = run_generate(config(tmp, tiny_model, "slurm"), show_progress=False, env=env)
    assert summary.complete and dataset(summary.out) == expected


def test_merge_names_the_missing_shards_and_the_command_that_finishes_them(tiny_model, reference):
    tmp, expected = reference
    out = tmp / "partial"
    run_generate(config(tmp, tiny_model, "partial", shard="1/3"), show_progress=False)
    result = CliRunner().invoke(app, ["merge", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "3 of 5 batches are not done" in text
    assert "shard 0/3: 2 batches (4 images); shard 2/3: 1 batches (2 images)" in text
    assert "--shard K/3 --resume" in text and f"--out {out}" in text
    for k in (
        0,
        2,
    ):  # 0 and 2 would consolidate too; prove that merge does it by blocking the last one's turn
        run_generate(config(tmp, tiny_model, "partial", shard=f"{k}/3"), show_progress=False)
    assert dataset(out) == expected


def test_resume_checks_the_options_that_change_the_result(tiny_model, tmp_path):
    run_generate(config(tmp_path, tiny_model, "o", shard="0/2"), show_progress=False)
    with pytest.raises(Exception, match=r"seed: 0 there, 1 now"):
        run_generate(config(tmp_path, tiny_model, "o", seed=1, resume=True), show_progress=False)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--n",
            "10",
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tiny_model),
            "--steps",
            "2",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 2 and "holds an unfinished run (3 batches done); add --resume" in result.output


def medisyn(tmp: Path, model: Path, out: Path, *extra: str) -> subprocess.Popen:
    exe = shutil.which("medisyn") or str(Path(sys.executable).with_name("medisyn"))
    return subprocess.Popen(
        [
            exe,
            "generate",
            "--manifest",
            str(tmp / "m.csv"),
            "--n",
            "10",
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
    )


def wait_for_batches(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(list((out / "_work" / "done").glob("b-*.json"))) < count if (out / "_work").exists() else True:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no batch finished in time"
        time.sleep(0.05)


def slow_model(tiny_model: Path, tmp: Path) -> Path:
    """The tiny model with many steps recommended, so a kill lands mid-run."""
    model = tmp / "slow"
    shutil.copytree(tiny_model, model)
    (model / "medisyn.json").write_text(json.dumps({"recommended": {"steps": 40}}))
    return model


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_dataset(tiny_model, tmp_path):
    model = slow_model(tiny_model, tmp_path)
    (tmp_path / "m.csv").write_text(MANIFEST)
    reference = run_generate(
        config(tmp_path, model, "ref", steps=None, rows_per_part=5000), show_progress=False
    ).out
    out = tmp_path / "killed"
    proc = medisyn(tmp_path, model, out)
    wait_for_batches(out, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    resumed = medisyn(tmp_path, model, out, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert dataset(out) == dataset(reference)
    assert not list(out.rglob("*.tmp")) and not (out / "_work").exists()


def test_sigterm_finishes_the_batch_in_flight_and_exits_75_for_requeue(tiny_model, tmp_path):
    model = slow_model(tiny_model, tmp_path)
    (tmp_path / "m.csv").write_text(MANIFEST)
    out = tmp_path / "preempted"
    proc = medisyn(tmp_path, model, out)
    wait_for_batches(out, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "interrupted: SIGTERM: stopped after batch" in stderr and "resume with --resume" in stderr
    done = len(list((out / "_work" / "done").glob("b-*.json")))
    assert 1 <= done < 5 and not list((out / "_work").rglob(".*.tmp"))
    resumed = medisyn(tmp_path, model, out, "--resume")
    assert resumed.wait(timeout=300) == 0 and len(pd.read_parquet(out / "parquet")) == 10
    again = medisyn(tmp_path, model, out, "--resume")
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0 and "already complete" in stderr
