"""Label check (#18): a judge trained on real images; generate --judge rejects and replaces off-class images."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate
from medisyn_cli.judge.build import JudgeConfig, build_judge
from medisyn_cli.judge.model import load_judge

FIXTURES = Path(__file__).parent / "fixtures" / "images"
MANIFEST = "label,prompt,mode\ncell,dermoscopy image of melanoma,RGB\nxray,frontal chest x-ray,L\n"


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """The twelve real fixture images as two label folders: blood smear cells and chest X-rays."""
    folder = tmp_path_factory.mktemp("real")
    for png in sorted((FIXTURES / "images").glob("*.png")):
        kind = "xray" if png.name.startswith("te_") else "cell"
        (folder / kind).mkdir(exist_ok=True)
        shutil.copy(png, folder / kind / png.name)
    return folder


@pytest.fixture(scope="module")
def judge_dir(real, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("judges") / "judge"
    build_judge(JudgeConfig(real=(str(real),), out=str(out)))
    return out


def _images(real: Path, kind: str) -> list:
    from PIL import Image

    return [Image.open(p).copy() for p in sorted((real / kind).glob("*.png"))]


@pytest.mark.parametrize("classifier", ["knn", "linear"])
def test_a_judge_trained_on_real_images_recognises_its_classes(real, tmp_path, classifier):
    meta = build_judge(JudgeConfig(real=(str(real),), out=str(tmp_path / "j"), classifier=classifier))
    assert meta["classes"] == ["cell", "xray"] and meta["heldout"] == 2 and meta["train"] == 10
    assert meta["heldout_accuracy"] == 1.0 and set(meta["per_class"]) == {"cell", "xray"}
    assert 0.0 <= meta["calibration"]["ece"] <= 1.0 and meta["label_score_pass_rate"]["0.5"] == 1.0
    judge = load_judge(tmp_path / "j")
    for kind in ("cell", "xray"):
        scores, judged = judge.label_scores(_images(real, kind), [kind] * 6)
        assert judged == [kind] * 6 and (scores > 0.5).all()
    assert json.loads((tmp_path / "j" / "judge.json").read_text())["fingerprint"] == judge.fingerprint


def test_the_cnn_judge_trains_and_scores(real, tmp_path):
    meta = build_judge(JudgeConfig(real=(str(real),), out=str(tmp_path / "j"), classifier="cnn", steps=30))
    probs = load_judge(tmp_path / "j").scores(_images(real, "cell"))
    assert meta["features"]["network"].startswith("small-cnn") and probs.shape == (6, 2)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


def _stub_render(real: Path):
    """A 'model' that draws an X-ray for even seeds and a blood cell for odd ones, whatever the prompt."""
    cells = [np.asarray(im.convert("RGB"), np.float32) / 255 for im in _images(real, "cell")]
    xrays = [np.asarray(im.convert("RGB"), np.float32) / 255 for im in _images(real, "xray")]

    def render(prompts, negatives, seeds):
        return np.stack([(xrays if seed % 2 == 0 else cells)[seed % 6] for seed in seeds])

    return render


def test_an_image_of_the_wrong_class_is_rejected_and_replaced_with_the_reason(real, judge_dir, tmp_path):
    from medisyn_cli.dataset.manifest import load_manifest
    from medisyn_cli.generate.plan import iter_jobs
    from medisyn_cli.generate.sampler import generate_screened
    from medisyn_cli.judge.screening import LabelCheck
    from medisyn_cli.screening.checks import Checks, RejectedLog

    (tmp_path / "m.csv").write_text(MANIFEST)
    jobs = list(iter_jobs(load_manifest(tmp_path / "m.csv"), {"cell": 5, "xray": 5}, 0))
    checks = Checks([LabelCheck(load_judge(judge_dir), 0.5)])
    result = generate_screened(_stub_render(real), jobs, checks, max_attempts=20)
    assert sorted(item.job.id for item in result.kept) == sorted(job.id for job in jobs)  # quota exact
    assert all(item.screen.details["judged_label"] == item.job.label for item in result.kept)
    assert result.rejected and all(item.screen.check == "label" for item in result.rejected)
    assert all(item.screen.details["judged_label"] != item.job.label for item in result.rejected)
    assert all(item.screen.reason.startswith("off-label: the judge scores") for item in result.rejected)
    log = RejectedLog(tmp_path / "rejected.parquet", checks.columns())
    log.write(result.rejected, checks)
    log.close()
    frame = pd.read_parquet(tmp_path / "rejected.parquet")
    assert (
        len(frame) == len(result.rejected)
        and set(frame["reason"]) == {"label"}
        and frame["nn_id"].isna().all()
    )


def _config(tmp: Path, model, name: str, **options) -> GenerateConfig:
    (tmp / "m.csv").write_text(MANIFEST.replace(",L\n", ",RGB\n"))
    return GenerateConfig(
        manifest=str(tmp / "m.csv"),
        n=options.pop("n", 8),
        out=str(tmp / name),
        model=str(model),
        steps=2,
        batch_size=options.pop("batch_size", 4),
        **options,
    )


@pytest.fixture(scope="module")
def bright_judge(tiny_model, tmp_path_factory) -> Path:
    """A judge that calls the tiny model's brighter images 'cell' and its darker ones 'xray': about half of each
    class's images are off-class for it, and new seeds soon give one it recognises."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("bright")
    first = run_generate(_config(tmp, tiny_model, "first", n=24, seed=99), show_progress=False).out
    pngs = sorted((first / "imagefolder").rglob("*.png"), key=lambda p: np.asarray(Image.open(p)).mean())
    for rank, png in enumerate(pngs):
        folder = tmp / "labelled" / ("xray" if rank < len(pngs) // 2 else "cell")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder / png.name)
    build_judge(JudgeConfig(real=(str(tmp / "labelled"),), out=str(tmp / "judge"), k=3))
    return tmp / "judge"


def test_generate_with_a_judge_scores_every_image_and_logs_label_rejections(
    tiny_model, bright_judge, tmp_path
):
    judge_dir = bright_judge
    summary = run_generate(
        _config(tmp_path, tiny_model, "judged", judge=str(judge_dir), max_attempts=40), show_progress=False
    )
    kept = pd.read_parquet(summary.out / "parquet")
    assert kept.groupby("label").size().to_dict() == {"cell": 4, "xray": 4}
    assert (kept["label_score"] >= 0.5).all() and (kept["judged_label"] == kept["label"]).all()
    run = json.loads((summary.out / "run.json").read_text())
    rejected = pd.read_parquet(summary.out / "rejected.parquet")
    assert len(rejected) > 0 and run["judge"]["label_rejected"] == len(rejected) == sum(
        c["label_rejected"] for c in run["classes"].values()
    )
    assert set(rejected["reason"]) <= {"label"} and (rejected["label_score"] < 0.5).all()
    assert run["judge"]["yield"] == pytest.approx(8 / (8 + len(rejected)), abs=1e-3)
    assert run["key"]["judge_fingerprint"] == load_judge(judge_dir).fingerprint
    card = (summary.out / "README.md").read_text()
    assert "## Label check" in card and "recognised" in card
    metadata = pd.read_csv(summary.out / "imagefolder" / "metadata.csv")
    assert metadata["label_score"].notna().all() and list(metadata["id"]) == list(kept["id"])


def test_unjudged_runs_have_empty_label_columns(tiny_model, tmp_path):
    out = run_generate(_config(tmp_path, tiny_model, "plain", n=2), show_progress=False).out
    kept = pd.read_parquet(out / "parquet")
    assert kept["label_score"].isna().all() and kept["judged_label"].isna().all()
    assert json.loads((out / "run.json").read_text())["judge"] is None


def test_judged_shards_give_the_same_dataset_and_resume_checks_the_judge(tiny_model, bright_judge, tmp_path):
    judge_dir = bright_judge
    one = run_generate(
        _config(tmp_path, tiny_model, "one", judge=str(judge_dir), max_attempts=40, threads=1),
        show_progress=False,
    ).out
    for shard in ("0/2", "1/2"):
        run_generate(
            _config(
                tmp_path, tiny_model, "two", judge=str(judge_dir), max_attempts=40, threads=1, shard=shard
            ),
            show_progress=False,
        )
    two = tmp_path / "two"
    assert pd.read_parquet(one / "parquet").equals(pd.read_parquet(two / "parquet"))
    assert pd.read_parquet(one / "rejected.parquet").equals(pd.read_parquet(two / "rejected.parquet"))
    with pytest.raises(MedisynError, match="min_label_score"):
        run_generate(
            _config(
                tmp_path,
                tiny_model,
                "one",
                judge=str(judge_dir),
                max_attempts=40,
                threads=1,
                min_label_score=0.7,
                resume=True,
            ),
            show_progress=False,
        )


def test_a_class_the_judge_never_recognises_ends_with_a_clear_message(tiny_model, judge_dir, tmp_path):
    (tmp_path / "m.csv").write_text(MANIFEST)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--n",
            "4",
            "--model",
            str(tiny_model),
            "--steps",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--judge",
            str(judge_dir),
            "--min-label-score",
            "1",
            "--max-attempts",
            "2",
        ],
    )
    assert result.exit_code == 3, result.output
    text = result.output.replace("\n", " ")
    assert "class 'cell' ended short of its quota" in text and "did not recognise 'cell'" in text
    assert set(pd.read_parquet(tmp_path / "o" / "rejected.parquet")["reason"]) == {"label"}


def test_judge_with_an_index_and_overlap_tells_privacy_from_label_rejections(
    tiny_model, bright_judge, tmp_path
):
    from medisyn_cli.screening.build import build_index

    first = bright_judge.parent / "first"  # seed 99: a rerun's first attempts copy these images
    build_index([first / "imagefolder"], tmp_path / "index", show_progress=False)
    summary = run_generate(
        _config(
            tmp_path,
            tiny_model,
            "both",
            seed=99,
            judge=str(bright_judge),
            index=str(tmp_path / "index"),
            overlap=True,
            max_attempts=40,
        ),
        show_progress=False,
    )
    kept = pd.read_parquet(summary.out / "parquet")
    rejected = pd.read_parquet(summary.out / "rejected.parquet")
    run = json.loads((summary.out / "run.json").read_text())
    assert kept.groupby("label").size().to_dict() == {"cell": 4, "xray": 4}
    copies = rejected[rejected["reason"] == "near_copy"]
    assert sorted(copies[copies["attempt"] == 0]["id"]) == sorted(
        kept["id"]
    )  # every first attempt was a copy
    assert (copies["nn_similarity"] >= 0.97).all() and run["screening"]["rejected"] == len(copies)
    assert run["judge"]["label_rejected"] == int((rejected["reason"] == "label").sum())
    assert (kept["nn_similarity"] < 0.97).all() and (kept["label_score"] >= 0.5).all()


def test_evaluate_alignment_gives_gan_test_accuracy_per_class_and_the_confusion_matrix(
    real, judge_dir, tmp_path
):
    mixed = tmp_path / "mixed" / "cell"  # the X-rays filed as cells: half the 'cells' are off-class
    mixed.mkdir(parents=True)
    for png in list((real / "cell").glob("*.png")) + list((real / "xray").glob("*.png")):
        shutil.copy(png, mixed / png.name)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "alignment",
            "--synthetic",
            str(tmp_path / "mixed"),
            "--judge",
            str(judge_dir),
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ev" / "alignment.json").read_text())
    assert data["gan_test_accuracy"] == 0.5 and data["confusion"] == [[6, 6], [0, 0]]
    assert data["per_class"][0]["label"] == "cell" and data["ceiling_real_heldout_accuracy"] == 1.0
    assert len(pd.read_csv(tmp_path / "ev" / "alignment_images.csv")) == 12
    same = CliRunner().invoke(
        app,
        [
            "evaluate",
            "alignment",
            "--synthetic",
            str(real),
            "--real-train",
            str(real),
            "--out",
            str(tmp_path / "ev2"),
        ],
    )
    assert (
        same.exit_code == 0
        and json.loads((tmp_path / "ev2" / "alignment.json").read_text())["gan_test_accuracy"] == 1.0
    )
    both = CliRunner().invoke(app, ["evaluate", "alignment", "--synthetic", str(real)])
    assert both.exit_code == 2 and "exactly one of --judge" in both.output


def _broken(judge_dir: Path, tmp_path: Path, how: str) -> Path:
    bad = tmp_path / "bad"
    if how == "missing":
        return tmp_path / "nope"
    shutil.copytree(judge_dir, bad)
    if how == "no-json":
        (bad / "judge.json").unlink()
    elif how == "bad-json":
        (bad / "judge.json").write_text("{not json")
    elif how == "not-a-judge":
        (bad / "judge.json").write_text('{"kind": "something"}')
    elif how == "no-weights":
        (bad / "model.npz").unlink()
    elif how == "changed-weights":
        (bad / "model.npz").write_bytes(b"garbage")
    return bad


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing", "no such folder"),
        ("no-json", "is not a judge folder"),
        ("bad-json", "not valid JSON"),
        ("not-a-judge", "not a medisyn judge record"),
        ("no-weights", "missing (the judge folder is incomplete"),
        ("changed-weights", "sha256 differs from the fingerprint"),
    ],
)
def test_bad_judge_folders_are_one_line_errors_before_the_model_loads(
    judge_dir, tmp_path, monkeypatch, how, message
):
    import medisyn_cli.generate.run as models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "m.csv").write_text(MANIFEST)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--n",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--judge",
            str(_broken(judge_dir, tmp_path, how)),
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", "") and result.output.count("error:") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-label-score", "0.5"], "--min-label-score needs --judge"),
        (["--judge", "{judge}", "--min-label-score", "1.5"], "outside [0, 1]"),
    ],
)
def test_bad_label_check_options_exit_2(judge_dir, tmp_path, args, message):
    (tmp_path / "m.csv").write_text(MANIFEST)
    args = [a.replace("{judge}", str(judge_dir)) for a in args]
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--n",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--dry-run",
            *args,
        ],
    )
    assert result.exit_code == 2 and message in result.output.replace("\n", ""), result.output


def test_a_judge_that_does_not_know_a_class_is_refused(judge_dir, tmp_path):
    (tmp_path / "m.csv").write_text("label,prompt\nmelanoma,dermoscopy image of melanoma\nxray,chest x-ray\n")
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--n",
            "2",
            "--dry-run",
            "--judge",
            str(judge_dir),
        ],
    )
    assert result.exit_code == 2 and "does not know class(es) melanoma" in result.output.replace("\n", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["{real}", "--out", "{tmp}/j", "--classifier", "svm"], "unknown classifier 'svm'"),
        (["{real}", "--out", "{tmp}/j", "--embedder", "phash"], "a hash has no vector space"),
        (["{tmp}/none", "--out", "{tmp}/j"], "no such file or folder"),
        (["{real}", "--out", "{real}"], "was not made by medisyn judge build"),
        (["{real}/cell", "--out", "{tmp}/j"], "no label (the judge learns from labelled images"),
    ],
)
def test_judge_build_bad_input_is_one_line_exit_2(real, tmp_path, args, message):
    args = [a.replace("{real}", str(real)).replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, ["judge", "build", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", "") and not (tmp_path / "j").exists()
