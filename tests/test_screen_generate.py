"""Screening inside `generate`: near-copies of indexed images are rejected, logged and replaced."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate
from medisyn_cli.screening.build import build_index

MANIFEST = (
    "label,prompt,mode\n"
    "melanoma,dermoscopy image of melanoma,RGB\n"
    "nevus,dermoscopy image of benign melanocytic nevus,RGB\n"
    "normal,frontal chest x-ray,L\n"
)


def config(tmp, model, name, **options) -> GenerateConfig:
    manifest = tmp / "m.csv"
    manifest.write_text(MANIFEST)
    return GenerateConfig(
        manifest=str(manifest),
        n=options.pop("n", 6),
        out=str(tmp / name),
        model=str(model),
        steps=2,
        batch_size=options.pop("batch_size", 4),
        **options,
    )


@pytest.fixture(scope="module")
def memorised(tiny_model, tmp_path_factory):
    """A first run, and an index of its images: a rerun with the same seed makes exact copies of them."""
    tmp = tmp_path_factory.mktemp("screen")
    first = run_generate(config(tmp, tiny_model, "first"), show_progress=False)
    build_index([first.out / "imagefolder"], tmp / "index", show_progress=False)
    return tmp


def test_near_copies_are_rejected_logged_and_replaced_so_every_class_reaches_its_quota(tiny_model, memorised):
    summary = run_generate(
        config(memorised, tiny_model, "second", index=str(memorised / "index")), show_progress=False
    )
    kept = pd.read_parquet(summary.out / "parquet")
    rejected = pd.read_parquet(summary.out / "rejected.parquet")
    assert kept.groupby("label").size().to_dict() == {"melanoma": 2, "nevus": 2, "normal": 2}
    assert sorted(rejected["id"]) == sorted(kept["id"])  # every first attempt was a copy of run one
    assert (rejected["attempt"] == 0).all() and (rejected["nn_similarity"] > 0.999).all()
    assert (kept["attempt"] >= 1).all() and (kept["nn_similarity"] < 0.97).all()
    assert not set(kept["seed"]) & set(rejected["seed"])
    keys = pq.read_table(memorised / "index" / "keys.parquet").to_pandas().set_index("id")["key"]
    assert all(key.endswith(f"/{image}.png") for key, image in zip(keys[rejected["nn_id"]], rejected["id"]))
    assert "image" not in rejected.columns  # a near-copy of a patient is never stored


def test_run_json_and_card_record_the_index_embedder_threshold_and_rejections(tiny_model, memorised):
    summary = run_generate(
        config(memorised, tiny_model, "third", index=str(memorised / "index"), threshold=0.99),
        show_progress=False,
    )
    screening = json.loads((summary.out / "run.json").read_text())["screening"]
    index_meta = json.loads((memorised / "index" / "index.json").read_text())
    assert screening["fingerprint"] == index_meta["fingerprint"] and screening["threshold"] == 0.99
    assert screening["embedder"]["spec"] == "pixel" and screening["rejected"] == 6
    assert "near-copies replaced" in (summary.out / "README.md").read_text()
    metadata = pd.read_csv(summary.out / "imagefolder" / "metadata.csv")
    assert metadata["nn_similarity"].notna().all() and metadata["nn_id"].between(0, 5).all()


def test_unscreened_runs_have_empty_nn_columns_and_no_rejected_file(tiny_model, memorised):
    out = run_generate(config(memorised, tiny_model, "plain"), show_progress=False).out
    assert pd.read_parquet(out / "parquet")["nn_id"].isna().all() and not (out / "rejected.parquet").exists()
    assert json.loads((out / "run.json").read_text())["screening"] is None


def test_a_class_that_keeps_making_copies_ends_with_its_name_and_exit_3_keeping_the_rest(
    tiny_model, memorised
):
    out = memorised / "ended"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--manifest",
            str(memorised / "m.csv"),
            "--n",
            "12",
            "--model",
            str(tiny_model),
            "--steps",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--index",
            str(memorised / "index"),
            "--max-attempts",
            "1",
        ],
    )
    assert result.exit_code == 3, result.output
    assert "class 'melanoma' ended short of its quota" in result.output and "memorises" in result.output
    run = json.loads((out / "run.json").read_text())
    assert set(run["screening"]["ended_classes"]) == {"melanoma", "nevus", "normal"}
    kept = pd.read_parquet(out / "parquet")
    assert len(kept) > 0 and (kept["nn_similarity"] < 0.97).all()  # what was already good is kept
    assert len(pd.read_csv(out / "imagefolder" / "metadata.csv")) == len(kept)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--index", "no-such-index"], "no such index folder"),
        (["--threshold", "0.9"], "--threshold needs --index"),
        (["--index", "{index}", "--threshold", "1.5"], "outside (0, 1]"),
        (["--index", "{index}", "--max-attempts", "0"], "--max-attempts: must be at least 1"),
    ],
)
def test_bad_screening_options_exit_2_before_the_model_loads(memorised, tmp_path, monkeypatch, args, message):
    import medisyn_cli.generate.run as models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    args = [a.replace("{index}", str(memorised / "index")) for a in args]
    result = CliRunner().invoke(
        app,
        ["generate", "--manifest", str(memorised / "m.csv"), "--n", "3", "--out", str(tmp_path / "o"), *args],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", "") and not (tmp_path / "o").exists()


def test_index_build_command_prints_a_summary_and_writes_index_json(tmp_path):
    fixtures = Path(__file__).parent / "fixtures" / "images"
    result = CliRunner().invoke(
        app, ["index", "build", str(fixtures), "--out", str(tmp_path / "i"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    text = " ".join(result.output.split())
    assert meta["count"] == 12 and "│ 12 │" in text and "nearest other training image" in text
    again = CliRunner().invoke(app, ["index", "build", str(fixtures), "--out", str(tmp_path / "i")])
    assert again.exit_code == 2 and "holds an index; use --overwrite" in again.output
