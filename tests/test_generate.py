"""End to end: a tiny saved pipeline -> balanced dataset that pandas, pyarrow, torchvision and datasets load."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.dataset.manifest import load_manifest
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.plan import iter_jobs, quotas
from medisyn_cli.generate.run import run_generate
from medisyn_cli.generate.sampler import Renderer, Settings, generate_batch

MANIFEST = (
    "label,finding,prompt,negative_prompt,weight,mode\n"
    "melanoma,atypical network,dermoscopy image of {label} with {finding},blurry,1,RGB\n"
    "melanoma,blue-white veil,dermoscopy of {label_text} showing {finding},,1,RGB\n"
    "nevus,regular network,dermoscopy image of benign melanocytic nevus,,1,RGB\n"
    "x ray/normal,,frontal chest x-ray,,1,L\n"
)


def run(tmp: Path, model: Path, name: str, **options):
    manifest = tmp / "derm.csv"
    manifest.write_text(MANIFEST)
    config = GenerateConfig(
        manifest=str(manifest),
        n=options.pop("n", 9),
        out=str(tmp / name),
        model=str(model),
        steps=2,
        **options,
    )
    return run_generate(config, show_progress=False)


@pytest.fixture(scope="module")
def dataset(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    summary = run(tmp, tiny_model, "out", batch_size=4)
    return summary.out


def test_every_class_reaches_its_quota(dataset):
    run_info = json.loads((dataset / "run.json").read_text())
    assert {k: v["written"] for k, v in run_info["classes"].items()} == {
        "melanoma": 3,
        "nevus": 3,
        "x ray/normal": 3,
    }
    leftovers = [p for p in dataset.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert leftovers == []


def test_parquet_loads_with_pandas_and_pyarrow(dataset):
    import pandas as pd
    import pyarrow.dataset as ds

    frame = pd.read_parquet(dataset / "parquet")
    assert len(frame) == 9 and ds.dataset(dataset / "parquet").count_rows() == 9
    assert {
        "image",
        "id",
        "label",
        "label_id",
        "prompt",
        "negative_prompt",
        "seed",
        "model",
        "scheduler",
        "steps",
        "guidance",
    } <= set(frame.columns)
    assert frame.id.is_unique and set(frame.label) == {"melanoma", "nevus", "x ray/normal"}
    row = frame[frame.id == "melanoma-000000"].iloc[0]
    assert (
        row.prompt == "dermoscopy image of melanoma with atypical network" and row.negative_prompt == "blurry"
    )
    assert row.steps == 2 and row.scheduler == "dpm++"
    image = Image.open(__import__("io").BytesIO(row.image["bytes"]))
    assert image.size == (16, 16) and image.mode == "RGB"


def test_parquet_and_imagefolder_load_with_hugging_face_datasets(dataset):
    from datasets import load_dataset

    parquet = load_dataset("parquet", data_files=str(dataset / "parquet" / "*.parquet"), split="train")
    assert len(parquet) == 9 and parquet[0]["image"].size == (16, 16)
    assert parquet.features["label_id"].names == ["melanoma", "nevus", "x ray/normal"]
    whole = load_dataset(str(dataset), split="train")  # the dataset card's header points at parquet/
    assert len(whole) == 9 and whole.features["image"].__class__.__name__ == "Image"
    folder = load_dataset("imagefolder", data_dir=str(dataset / "imagefolder"), split="train")
    assert len(folder) == 9 and sorted(set(folder["label"])) == ["melanoma", "nevus", "x ray/normal"]
    assert folder[0]["image"].size == (16, 16)


def test_imagefolder_loads_with_torchvision_and_grey_classes_are_single_channel(dataset):
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(dataset / "imagefolder"))
    assert len(folder) == 9 and "melanoma" in folder.classes and len(folder.classes) == 3
    grey = [p for p in (dataset / "imagefolder").rglob("*.png") if p.parent.name.startswith("x_ray_normal")]
    assert len(grey) == 3 and all(Image.open(p).mode == "L" for p in grey)


def test_run_json_records_what_reproduces_the_run(dataset):
    info = json.loads((dataset / "run.json").read_text())
    assert info["manifest"]["sha256"] and info["options"]["n"] == 9 and info["options"]["seed"] == 0
    assert any(k.startswith("unet/") for k in info["model"]["weights_sha256"])
    assert info["libraries"]["torch"] and info["libraries"]["diffusers"]
    assert info["sampling"] == {"scheduler": "dpm++", "steps": 2, "guidance": 7.5, "height": 16, "width": 16}
    assert info["device"] == "cpu" and info["started"] <= info["finished"]
    card = (dataset / "README.md").read_text()
    assert card.startswith("---\n") and "not for clinical use" in card and "| nevus | 3 | 0 |" in card


def test_same_image_whatever_the_batch_size_or_order(tiny_model, tmp_path):
    import torch

    from medisyn_cli.pipeline.load import load_pipeline

    pipe = load_pipeline(str(tiny_model), torch.device("cpu"), torch.float32)
    manifest = tmp_path / "m.csv"
    manifest.write_text(MANIFEST)
    m = load_manifest(manifest)
    jobs = list(iter_jobs(m, quotas(m.weights(), 6), seed=3))
    settings = Settings(steps=2, guidance=7.5, height=16, width=16)
    render = Renderer(pipe, settings)
    together = {g.job.id: np.asarray(g.image) for g in generate_batch(render, jobs)}
    alone = {g.job.id: np.asarray(g.image) for job in reversed(jobs) for g in generate_batch(render, [job])}
    for key in together:
        assert np.abs(together[key].astype(int) - alone[key].astype(int)).max() <= 1
    assert not np.array_equal(together[jobs[0].id], together[jobs[3].id])


def test_black_or_nan_images_are_regenerated_with_a_new_recorded_seed(manifest):
    m = load_manifest(manifest)
    jobs = list(iter_jobs(m, quotas(m.weights(), 3), seed=0))
    calls = []

    def fake(prompts, negatives, seeds):
        calls.append(seeds)
        return [np.full((8, 8, 3), np.nan if i == 1 and len(calls) == 1 else 0.5) for i in range(len(seeds))]

    out = generate_batch(fake, jobs)
    assert [g.attempt for g in out] == [0, 1, 0]
    assert out[1].seed == calls[1][0] == jobs[1].attempt_seed(1) != jobs[1].seed and len(calls) == 2

    def black(prompts, negatives, seeds):
        return [np.zeros((8, 8, 3)) for _ in seeds]

    with pytest.raises(MedisynError, match="black or NaN 3 times"):
        generate_batch(black, jobs, max_regenerate=2)


def test_existing_output_is_refused_then_overwritten_and_kept_if_the_new_run_fails(
    tiny_model, tmp_path, monkeypatch
):
    first = run(tmp_path, tiny_model, "out", n=3)
    with pytest.raises(MedisynError, match="holds a complete medisyn run; .*--overwrite"):
        run(tmp_path, tiny_model, "out", n=3)
    second = run(tmp_path, tiny_model, "out", n=6, overwrite=True)
    assert first.out == second.out
    assert len(list((second.out / "imagefolder").rglob("*.png"))) == 6
    import medisyn_cli.generate.sampler as generate_module
    import medisyn_cli.generate.worker as run_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(generate_module, "generate_batch", broken)
    monkeypatch.setattr(run_module, "generate_batch", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(tmp_path, tiny_model, "out", n=3, overwrite=True)
    kept = next(
        tmp_path.glob("out.previous-*")
    )  # the finished run waits intact beside the unfinished new one
    assert len(list((kept / "imagefolder").rglob("*.png"))) == 6 and (kept / "run.json").exists()
    assert (second.out / "_work").exists() and not (second.out / "run.json").exists()
    monkeypatch.undo()
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    with pytest.raises(MedisynError, match="was not made by medisyn generate"):
        run(tmp_path, tiny_model, "mine", n=3, overwrite=True)
    assert (stranger / "thesis.tex").exists()


def test_cli_dry_run_prints_the_plan_and_loads_no_model(manifest, tmp_path, monkeypatch):
    import medisyn_cli.generate.run as models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("model loaded in --dry-run"))
    result = CliRunner().invoke(
        app, ["generate", "--manifest", str(manifest), "--n", "7", "--dry-run", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "melanoma" in result.output and "melanoma-000000" in result.output and "7 images" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n: must be a positive number"),
        (["--n", "2"], "smaller than the number of classes"),
        (["--n", "5", "--format", "tiff"], "--format: 'tiff'"),
        (["--n", "5", "--scheduler", "magic"], "unknown scheduler 'magic'"),
        (["--n", "5", "--model", "./no/such/model"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(manifest, tmp_path, args, message):
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["generate", "--manifest", str(manifest), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (out / "run.json").exists() and not list(out.rglob("*.png")) if out.exists() else True


def test_cli_bad_manifest_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,prompt\nmelanoma,{site} image\n")
    result = CliRunner().invoke(
        app, ["generate", "--manifest", str(bad), "--n", "4", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert f"{bad}:2: column 'prompt': unknown placeholder {{site}}" in result.output.replace("\n", "")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_installed_medisyn_command_generates_a_dataset(tiny_model, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(MANIFEST)
    exe = shutil.which("medisyn") or str(Path(sys.executable).with_name("medisyn"))
    proc = subprocess.run(
        [
            exe,
            "generate",
            "--manifest",
            str(manifest),
            "--n",
            "3",
            "--model",
            str(tiny_model),
            "--steps",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "written" in proc.stdout and (tmp_path / "o" / "run.json").exists()
    proc = subprocess.run(
        [exe, "generate", "--manifest", str(tmp_path / "missing.csv"), "--n", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (
        proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "manifest not found" in proc.stderr
    )
