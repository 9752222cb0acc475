"""The two model benchmarks stay runnable: utility_mini.py and evaluate_mini.py end to end on a tiny model and a
small blood-smear set built from the fixture images (rotated copies, so every class has enough images)."""

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch, tmp_path, tiny_model):
    """(utility_mini module, model folder with a hold-out list) over a fake ../shared/data."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import utility_mini

    data = tmp_path / "data"
    folder = data / "bccd_blood_smear"
    (folder / "images").mkdir(parents=True)
    rows = [
        r for r in csv.DictReader(open(FIXTURES / "images" / "metadata.csv")) if "blood smear" in r["caption"]
    ]
    out, held = [], []
    for row in rows:
        image = Image.open(FIXTURES / "images" / row["file_name"])
        for turn in range(4):
            name = f"images/{Path(row['file_name']).stem}_r{turn}.png"
            image.rotate(90 * turn).save(folder / name)
            out.append({"file_name": name, "label": row["label"], "caption": row["caption"]})
            if turn == 0:
                held.append([str(folder / name), row["label"]])
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file_name", "label", "caption"])
        writer.writeheader()
        writer.writerows(out)
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    with open(model / "holdout.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["key", "label"], *held])
    monkeypatch.setattr(utility_mini, "DATA", data)
    return utility_mini, model


def run_main(module, monkeypatch, args: list[str]) -> None:
    """Run a benchmark's main(); restore torch's thread count, which it sets (later tests compare pixels made in
    this process with pixels made by a `medisyn` subprocess)."""
    import torch

    monkeypatch.setattr(sys, "argv", [module.__file__, *args])
    threads = torch.get_num_threads()
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_utility_mini_scores_real_and_synthetic(bench, monkeypatch, tmp_path, capsys):
    utility_mini, model = bench
    common = [
        "--model",
        str(model),
        "--sets",
        "bccd_blood_smear",
        "--per-class",
        "3",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--steps",
        "2",
        "--threads",
        "1",
    ]
    out = tmp_path / "u"

    def first_image() -> bytes:
        return Image.open(sorted((out / "bccd_blood_smear" / "imagefolder").rglob("*.png"))[0]).tobytes()

    run_main(utility_mini, monkeypatch, common + ["--out", str(out)])
    result = json.loads((out / "results.json").read_text())["results"][0]
    assert (result["classes"], result["test_images"], result["synthetic_per_class"]) == (3, 6, 3)
    assert 0 <= result["real_auroc"] <= 1 and 0 <= result["synthetic_auroc"] <= 1
    assert (out / "real_vs_synthetic.png").stat().st_size > 0
    assert "bccd_blood_smear" in capsys.readouterr().out
    seed0, record = first_image(), (out / "bccd_blood_smear" / "run.json").read_text()
    run_main(utility_mini, monkeypatch, common + ["--out", str(out)])
    assert (out / "bccd_blood_smear" / "run.json").read_text() == record  # same options: the set is reused
    run_main(utility_mini, monkeypatch, common + ["--generate-seed", "1", "--out", str(out)])
    assert first_image() != seed0  # another seed in the same --out: generated again, not reused


@pytest.mark.slow
def test_evaluate_mini_writes_every_evaluation(bench, monkeypatch, tmp_path):
    _, model = bench
    import evaluate_mini

    run_main(
        evaluate_mini,
        monkeypatch,
        [
            "--model",
            str(model),
            "--sets",
            "bccd_blood_smear",
            "--per-class",
            "4",
            "--seeds",
            "1",
            "--fractions",
            "1",
            "--epochs",
            "1",
            "--steps",
            "2",
            "--threads",
            "1",
            "--features",
            "pixel",
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(tmp_path / "results"),
        ],
    )
    row = json.loads((tmp_path / "results" / "results.json").read_text())["results"][0]
    assert row["dataset"] == "bccd_blood_smear" and row["classes"] == 3
    conditions = row["utility"]["conditions"]
    assert 0 <= conditions["synthetic"]["auroc"] <= 1
    assert len({c["steps"] for c in conditions.values()}) == 1  # the same optimiser steps for every condition
    assert row["privacy"]["heldout_near_copies"]["count"] >= 0 and "p_values" in row["privacy"]
    assert row["fidelity"]["synthetic_fid"] >= 0
    assert (tmp_path / "results" / "bccd_blood_smear" / "utility.json").exists()
    run_main(
        evaluate_mini,
        monkeypatch,
        [
            "--model",
            str(model),
            "--sets",
            "bccd_blood_smear",
            "--leakage-only",
            "--threads",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--results",
            str(tmp_path / "results"),
        ],
    )
    leak = json.loads((tmp_path / "results" / "leakage.json").read_text())["results"][0]
    assert (
        leak["test"] == 6
        and leak["train"] == 18
        and sum(r["images"] for r in leak["per_class"].values()) == 6
    )


def test_utility_mini_trains_the_products_classifier(monkeypatch):
    """utility_mini.py trains `medisyn evaluate utility`'s classifier: the product's network and training loop."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import utility_mini

    from medisyn_cli.judge import classifier

    calls = []
    product = classifier.train_classifier
    monkeypatch.setattr(
        classifier, "train_classifier", lambda *a, **k: calls.append(a[3]) or product(*a, **k)
    )
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 3, 16, 16), dtype=np.uint8), np.array([0, 1] * 8)
    score = utility_mini.train_and_score(x, y, x, y, 2, seed=0, epochs=1)
    assert [c.arch for c in calls] == ["small-cnn"]
    settings = classifier.TrainSettings(arch="small-cnn", epochs=1, batch_size=64, lr=2e-3)
    model = product(x, y, 2, settings, 0, torch.device("cpu"))
    expected = roc_auc_score(y, classifier.predict(model, x, torch.device("cpu"), False)[:, 1])
    assert score == expected


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MEDISYN_BENCHMARK_TESTS") != "1",
    reason="a minute of training processes: run on request with MEDISYN_BENCHMARK_TESTS=1 (CI's 20 minutes)",
)
def test_lora_benchmark_compares_every_condition(bench, monkeypatch, tmp_path):
    """benchmarks/lora.py end to end on the tiny model: every condition trained in its own process, timed and
    scored, and `generate --lora` compared with plain diffusers + load_lora_weights."""
    utility_mini, model = bench
    import lora

    monkeypatch.setattr(lora, "DATA", utility_mini.DATA)
    out = tmp_path / "results"
    run_main(
        lora,
        monkeypatch,
        [
            "--model",
            str(model),
            "--sets",
            "bccd_blood_smear",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--train-per-class",
            "3",
            "--per-class",
            "3",
            "--sample-steps",
            "2",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--scratch",
            str(tmp_path / "scratch"),
            "--out",
            str(out),
        ],
    )
    result = json.loads((out / "results.json").read_text())
    rows = result["datasets"]["bccd_blood_smear"]["conditions"]
    assert list(rows) == ["bundled", "full", "lora4", "lora8", "lora16"]
    assert rows["full"]["trainable"] == result["unet_parameters"]
    assert rows["lora4"]["trainable"] * 2 == rows["lora8"]["trainable"] < rows["lora16"]["trainable"]
    assert all(
        rows[name]["steps"] == 3 and rows[name]["s_per_step"] > 0 for name in rows if name != "bundled"
    )
    assert all(0 <= row["auroc"] <= 1 for row in rows.values())
    assert result["equivalence_max_pixel_difference"] <= 1
    assert "| bccd_blood_smear | lora16 |" in (out / "table.md").read_text()


@pytest.mark.slow
def test_label_check_benchmark_measures_every_condition(bench, monkeypatch, tmp_path):
    """benchmarks/label_check.py end to end on the tiny model: judge, pool (topped up by a second seed), GAN-test,
    the same budget per condition (utility, coverage, yield) and timed product runs with --judge."""
    utility_mini, model = bench
    import label_check

    results = tmp_path / "results"
    common = ["--model", str(model), "--sets", "bccd_blood_smear", "--per-class", "2", "--seeds", "1"]
    common += ["--classifier-steps", "2", "--out", str(tmp_path / "w")]
    common += ["--thresholds", "0.0,1.01", "--results", str(results)]
    run_main(
        label_check, monkeypatch, [*common, "--pool-per-class", "2", "--pool-root", str(tmp_path / "no")]
    )
    made = tmp_path / "w" / "bccd_blood_smear" / "pool"  # as if evaluate_mini.py had made it: topped up below
    shutil.copytree(made, tmp_path / "root" / "bccd_blood_smear" / "synthetic")
    more = [
        "--pool-per-class",
        "3",
        "--pool-root",
        str(tmp_path / "root"),
        "--product-set",
        "bccd_blood_smear",
    ]
    run_main(label_check, monkeypatch, [*common, *more, "--product-per-class", "1"])
    saved = json.loads((results / "results.json").read_text())
    found = saved["sets"][0]
    assert found["pool"]["n"] == 9 and [r["seed"] for r in found["pool"]["runs"]] == [0, 1]
    assert 0 <= found["gan_test"]["accuracy"] <= 1 and 0 <= found["judge"]["heldout_accuracy"] <= 1
    plain, everything, nothing = found["conditions"]
    assert plain["kept"] == everything["kept"] == 6 and plain["yield"] == everything["yield"] == 1.0
    assert 0 <= plain["auroc"] <= 1 and 0 <= everything["coverage"] <= 1
    assert nothing["kept"] == 0 and "short" in nothing  # no image scores above 1
    runs = saved["product"]["runs"]
    assert [r["condition"] for r in runs] == ["no judge", "judge >= 0.5"] and runs[0]["time_ratio"] == 1.0
