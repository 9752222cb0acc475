"""`medisyn report` label check and diversity guard (#18): per-class recognised share, mean label score, yield
and rejections from rejected.parquet; coverage / recall / diversity before and after the label filter."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.evaluate.metrics import diversity
from medisyn_cli.evaluate.report import write_report
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate
from medisyn_cli.judge.alignment import AlignmentConfig, run_alignment
from medisyn_cli.judge.build import JudgeConfig, build_judge
from medisyn_cli.screening.embed import get_embedder

IMAGES = Path(__file__).parent / "fixtures" / "images" / "images"
CELLS = sorted(p for p in IMAGES.glob("*.png") if not p.name.startswith("te_"))
XRAYS = sorted(IMAGES.glob("te_*.png"))


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """The twelve real fixture images as label folders: cell (blood smears) and xray (chest X-rays)."""
    folder = tmp_path_factory.mktemp("real")
    for kind, paths in (("cell", CELLS), ("xray", XRAYS)):
        (folder / kind).mkdir()
        for path in paths:
            shutil.copy(path, folder / kind / path.name)
    return folder


def _row(path: Path, image_id: str, label: str, **extra) -> dict:
    return {
        "image": {"bytes": path.read_bytes(), "path": f"{image_id}.png"},
        "id": image_id,
        "label": label,
        **extra,
    }


def _run_record(classes: dict, judge: dict | None) -> dict:
    """A run.json complete enough for the dataset card."""
    return {
        "model": {"name": "tiny", "source": "test"},
        "dtype": "float32",
        "device": "cpu",
        "sampling": {"scheduler": "ddim", "steps": 2, "guidance": 7.5, "width": 64, "height": 64},
        "manifest": {"path": "m.csv", "sha256": "0" * 64},
        "options": {"seed": 0},
        "medisyn": "test",
        "started": "s",
        "finished": "f",
        "screening": None,
        "judge": judge,
        "classes": {
            label: {
                "planned": n,
                "written": n,
                "regenerated": 0,
                "rejected": 0,
                "label_rejected": 0,
                "ended": None,
            }
            for label, n in classes.items()
        },
    }


def _judged_out(tmp: Path, rejected: list[dict] | None, with_pixels: bool) -> Path:
    """A judged output folder: 4 kept cells and 4 kept X-rays (scores recorded), rejected.parquet as given."""
    out = tmp / "judged"
    (out / "parquet").mkdir(parents=True)
    rows = [
        _row(p, f"cell-{i}", "cell", label_score=0.9 - i / 100, judged_label="cell")
        for i, p in enumerate(CELLS[:4])
    ]
    rows += [
        _row(p, f"xray-{i}", "xray", label_score=0.8 - i / 100, judged_label="xray")
        for i, p in enumerate(XRAYS[:4])
    ]
    pq.write_table(pa.Table.from_pylist(rows), out / "parquet" / "part-00000.parquet")
    if rejected is not None:
        if not with_pixels:
            rejected = [{k: v for k, v in r.items() if k != "image"} for r in rejected]
        pq.write_table(pa.Table.from_pylist(rejected), out / "rejected.parquet")
    judge = {
        "judge": "j",
        "classifier": "knn",
        "features": "thumb",
        "heldout_accuracy": 1.0,
        "min_label_score": 0.5,
        "classes": ["cell", "xray"],
    }
    (out / "run.json").write_text(json.dumps(_run_record({"cell": 4, "xray": 4}, judge)))
    (out / ".medisyn").write_text('{"tool": "medisyn", "command": "generate", "run_id": "r1"}')
    return out


def _rejections() -> list[dict]:
    """Two cell images drawn for 'xray' (rejected for label) and one near-copy (no pixels)."""
    label = [
        {
            **_row(p, "xray-9", "xray"),
            "seed": n,
            "attempt": n,
            "reason": "label",
            "label_score": 0.1,
            "judged_label": "cell",
            "nn_similarity": None,
        }
        for n, p in enumerate(CELLS[4:6])
    ]
    copy = {
        "image": None,
        "id": "cell-1",
        "label": "cell",
        "seed": 7,
        "attempt": 0,
        "reason": "near_copy",
        "label_score": 0.95,
        "judged_label": "cell",
        "nn_similarity": 0.99,
    }
    return label + [copy]


def _config(tmp: Path, model, name: str, **options) -> GenerateConfig:
    (tmp / "m.csv").write_text(
        "label,prompt,mode\ncell,dermoscopy image of melanoma,RGB\nxray,frontal chest x-ray,RGB\n"
    )
    return GenerateConfig(
        manifest=str(tmp / "m.csv"),
        n=options.pop("n", 8),
        out=str(tmp / name),
        model=str(model),
        steps=2,
        batch_size=4,
        **options,
    )


def _pixel_diversity(paths: list[Path]) -> float:
    return diversity(get_embedder("pixel").embed([Image.open(p) for p in paths]))


def test_the_label_check_per_class_matches_rejected_parquet(tmp_path):
    out = _judged_out(tmp_path, _rejections(), with_pixels=False)
    write_report(out)
    check = json.loads((out / "report.json").read_text())["label_check"]
    rejected = pd.read_parquet(out / "rejected.parquet")
    kept = pd.read_parquet(out / "parquet")
    for label in ("cell", "xray"):
        mine, row = rejected[rejected["label"] == label], check["per_class"][label]
        by_label = int((mine["reason"] == "label").sum())
        assert row["kept"] == 4 and row["label_rejected"] == by_label
        assert row["near_copy_rejected"] == int((mine["reason"] == "near_copy").sum())
        assert row["generated"] == 4 + len(mine)
        assert row["yield"] == pytest.approx(4 / (4 + len(mine)), abs=1e-4)
        assert row["recognised_share"] == pytest.approx(4 / (4 + by_label), abs=1e-4)
        scores = list(kept[kept["label"] == label]["label_score"]) + list(
            mine[mine["reason"] == "label"]["label_score"]
        )
        assert row["mean_label_score"] == pytest.approx(np.mean(scores), abs=1e-4)
    assert check["per_class"]["xray"]["label_rejected_judged_as"] == {"cell": 2}
    assert check["total"]["generated"] == 11 and check["total"]["yield"] == pytest.approx(8 / 11, abs=1e-4)
    page = (out / "report.html").read_text()
    assert "label check" in page and "recognised share" in page
    assert "<td>xray</td><td>6</td><td>4</td><td>0.6667</td><td>2</td><td>0</td><td>0.6667</td>" in page
    assert "rejected near-copies" in page and "2 rejected for their label" in page


def test_without_rejected_pixels_the_guard_says_before_is_not_measurable(tmp_path):
    out = _judged_out(tmp_path, _rejections(), with_pixels=False)
    write_report(out)
    guard = json.loads((out / "report.json").read_text())["diversity_guard"]
    assert guard["before"] is None and "no pixels of its 2 label-rejected images" in guard["basis"]
    assert guard["after"]["images"] == 8
    assert guard["after"]["per_class"]["cell"]["diversity"] == pytest.approx(
        _pixel_diversity(CELLS[:4]), rel=1e-5
    )
    assert "before not measurable" in (out / "report.html").read_text()


def test_the_guard_compares_kept_with_kept_plus_label_rejected_images(tmp_path):
    out = _judged_out(tmp_path, _rejections(), with_pixels=True)
    write_report(out)
    guard = json.loads((out / "report.json").read_text())["diversity_guard"]
    before, after = guard["before"], guard["after"]
    assert before["images"] == 10 and after["images"] == 8  # the near-copy (no pixels) is not in "before"
    assert before["per_class"]["xray"]["images"] == 6 and before["per_class"]["cell"]["images"] == 4
    assert before["per_class"]["xray"]["diversity"] == pytest.approx(
        _pixel_diversity(XRAYS[:4] + CELLS[4:6]), rel=1e-5
    )
    assert after["per_class"]["xray"]["diversity"] == pytest.approx(_pixel_diversity(XRAYS[:4]), rel=1e-5)
    equal = guard["before_equal_n"]  # before subsampled to after's class counts: 4 cells (all), 4 of 6 X-rays
    assert equal["images"] == 8 and equal["per_class"]["xray"]["images"] == 4 and equal["draws"] == 10
    assert equal["per_class"]["cell"]["diversity"] == pytest.approx(after["per_class"]["cell"]["diversity"])
    subsets = [
        _pixel_diversity([p for j, p in enumerate(XRAYS[:4] + CELLS[4:6]) if j not in (a, b)])
        for a in range(6)
        for b in range(a + 1, 6)
    ]
    assert min(subsets) <= equal["per_class"]["xray"]["diversity"] <= max(subsets)
    assert guard["change"]["diversity_within_class"] == pytest.approx(
        after["diversity_within_class"] - equal["diversity_within_class"], abs=1e-4
    )
    assert "coverage" not in after  # no real reference: diversity only
    assert "before, equal n" in (out / "report.html").read_text()


def test_a_run_without_label_rejections_has_before_equal_to_after(tmp_path):
    out = _judged_out(tmp_path, None, with_pixels=False)
    write_report(out)
    guard = json.loads((out / "report.json").read_text())["diversity_guard"]
    assert guard["before"] == guard["after"] == guard["before_equal_n"] and guard["before"]["images"] == 8
    assert guard["change"]["diversity_within_class"] == 0.0 and "no image was rejected" in guard["basis"]


@pytest.mark.slow
def test_coverage_and_recall_against_a_real_reference_through_the_cli(tmp_path, real):
    out = _judged_out(tmp_path, None, with_pixels=False)
    result = CliRunner().invoke(app, ["report", str(out), "--real", str(real)])
    assert result.exit_code == 0, result.output
    guard = json.loads((out / "report.json").read_text())["diversity_guard"]
    assert guard["before"] == guard["after"] and guard["features"].startswith("cnn")
    assert 0.0 <= guard["after"]["coverage"] <= 1.0 and 0.0 <= guard["after"]["recall"] <= 1.0
    assert guard["change"] == {"coverage": 0.0, "recall": 0.0, "diversity_within_class": 0.0}
    page = (out / "report.html").read_text()
    assert "diversity guard" in page and "<th>coverage</th>" in page and str(real) in page


def test_a_bad_real_reference_is_a_one_line_error(tmp_path):
    out = _judged_out(tmp_path, None, with_pixels=False)
    result = CliRunner().invoke(app, ["report", str(out), "--real", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "--real" in result.output and "nowhere" in result.output


def test_an_unjudged_run_with_an_alignment_result_simulates_the_filter(tmp_path, real):
    out = tmp_path / "plain"
    (out / "parquet").mkdir(parents=True)
    rows = [_row(p, f"cell-{i}", "cell") for i, p in enumerate(CELLS[:4])]
    rows += [_row(p, f"xray-{i}", "xray") for i, p in enumerate(XRAYS[:4] + CELLS[4:6])]  # two off-class
    pq.write_table(pa.Table.from_pylist(rows), out / "parquet" / "part-00000.parquet")
    (out / "run.json").write_text(json.dumps(_run_record({"cell": 4, "xray": 6}, None)))
    (out / ".medisyn").write_text('{"tool": "medisyn", "command": "generate", "run_id": "r1"}')
    build_judge(JudgeConfig(real=(str(real),), out=str(tmp_path / "judge")))
    alignment = run_alignment(AlignmentConfig(synthetic=(str(out),), judge=str(tmp_path / "judge")))
    write_report(out)
    report = json.loads((out / "report.json").read_text())
    check, guard = report["label_check"], report["diversity_guard"]
    assert check["judged"] is False and check["total"] is None
    for row in alignment["per_class"]:
        assert check["alignment"]["per_class"][row["label"]]["gan_test_accuracy"] == row["gan_test_accuracy"]
    scores = pd.read_csv(out / "evaluate" / "alignment_images.csv")
    passing = scores[scores["label_score"] >= 0.5]
    assert guard["before"]["images"] == 10 and guard["after"]["images"] == len(passing) < 10
    assert guard["after"]["per_class"]["xray"]["images"] == int((passing["label"] == "xray").sum())
    assert "simulated filter" in guard["basis"]
    page = (out / "report.html").read_text()
    assert "alignment: GAN-test accuracy" in page and "evaluation: evaluate/alignment.json" not in page
    assert "mean label score" in (out / "README.md").read_text()


@pytest.mark.slow
def test_report_of_a_real_judged_run_is_consistent_with_its_files(tiny_model, tmp_path):
    """generate --judge with the tiny model, a judge rejecting about half its images; then the report."""
    first = run_generate(_config(tmp_path, tiny_model, "first", n=24, seed=99), show_progress=False).out
    pngs = sorted((first / "imagefolder").rglob("*.png"), key=lambda p: np.asarray(Image.open(p)).mean())
    for rank, png in enumerate(pngs):
        folder = tmp_path / "labelled" / ("xray" if rank < len(pngs) // 2 else "cell")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, folder / png.name)
    build_judge(JudgeConfig(real=(str(tmp_path / "labelled"),), out=str(tmp_path / "judge"), k=3))
    config = _config(tmp_path, tiny_model, "judged", judge=str(tmp_path / "judge"), max_attempts=40)
    out = run_generate(config, show_progress=False).out
    write_report(out, real=(str(tmp_path / "labelled"),))
    report = json.loads((out / "report.json").read_text())
    run = json.loads((out / "run.json").read_text())
    rejected = pd.read_parquet(out / "rejected.parquet")
    for label, row in report["label_check"]["per_class"].items():
        recorded = run["judge"]["per_class"][label]
        assert row["kept"] == recorded["kept"] == 4
        assert row["label_rejected"] == recorded["label_rejected"] == int((rejected["label"] == label).sum())
        assert row["recognised_share"] == recorded["recognised_share"] and row["yield"] == recorded["yield"]
    guard = report["diversity_guard"]
    assert guard["after"]["images"] == 8 and guard["after"]["coverage"] is not None
    # label-rejected images keep their pixels in rejected.parquet (they passed the privacy screen), so the
    # guard measures before the filter: the kept images plus every label rejection
    assert rejected["image"].notna().all() and (rejected["reason"] == "label").all()
    assert guard["before"]["images"] == 8 + len(rejected)
    card = (out / "README.md").read_text()
    cell = run["judge"]["per_class"]["cell"]
    assert f"({cell['kept']} / {cell['kept'] + cell['label_rejected'] + cell['near_copies']})" in card
