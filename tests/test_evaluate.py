"""`medisyn evaluate` (utility, privacy, fidelity) and `medisyn report`, on small sets made from real fixture images.

The sets: every real fixture image (BCCD blood-smear crops and Kermany chest x-rays) under a few flips and
rotations, labelled `cell` or `xray` -- two visually distinct classes a small CNN separates reliably. Training
sets come from tests/fixtures/images, test / held-out sets from tests/fixtures/screen/distinct (other patients).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from PIL import Image, ImageEnhance, ImageOps
from typer.testing import CliRunner

from medisyn_cli.cli.evaluate import evaluate_app, report_command
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.evaluate.metrics import diversity, fid, kid, prdc, trace_sqrt_product
from medisyn_cli.judge.classifier import auroc, macro_auroc

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_IMAGES = sorted((FIXTURES / "images" / "images").glob("*.png"))
OTHER_IMAGES = sorted((FIXTURES / "screen" / "distinct").glob("*.png"))
VIEWS = {
    "id": lambda i: i,
    "h": ImageOps.mirror,
    "v": ImageOps.flip,
    "r90": lambda i: i.rotate(90),
    "r180": lambda i: i.rotate(180),
    "r270": lambda i: i.rotate(270),
    "t": lambda i: ImageOps.mirror(i.rotate(90)),
    "crop": lambda i: i.crop((4, 4, 60, 60)).resize((64, 64)),
}
TINY = ["--size", "16", "--batch-size", "16", "--epochs", "6", "--bootstrap", "100"]


def kind(path: Path) -> str:
    return "cell" if "blood" in path.name or "platelet" in path.name else "xray"


def jpeg(image: Image.Image, quality: int = 85) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)


def label_folders(folder: Path, images: list[Path], views: list[str], label=kind) -> Path:
    """<folder>/<label>/<name>_<view>.png for every image under every view."""
    for path in images:
        for view in views:
            (folder / label(path)).mkdir(parents=True, exist_ok=True)
            VIEWS[view](Image.open(path)).save(folder / label(path) / f"{path.stem}_{view}.png")
    return folder


def invoke(*args: str):
    app = typer.Typer()
    app.add_typer(evaluate_app, name="evaluate")
    app.command("report")(report_command)
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def one_thread():
    """Torch and BLAS on one thread: on a shared 2-core machine spinning threads make tiny models and small
    matrix products 20-40x slower."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    """train (48: 24 cell, 24 xray), test (24, other patients), synthetic (other views of the training images)."""
    root = tmp_path_factory.mktemp("sets")
    label_folders(root / "train", TRAIN_IMAGES, ["id", "h", "v", "r90"])
    label_folders(root / "test", OTHER_IMAGES, ["id", "h", "v", "r90"])
    label_folders(root / "synthetic", TRAIN_IMAGES, ["r180", "r270", "t", "crop"])
    return root


# --- metrics --------------------------------------------------------------------------------------------


def test_auroc_matches_sklearn_including_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.normal(size=200) + y, 1)  # rounding makes ties
    assert auroc(y == 1, score) == pytest.approx(roc_auc_score(y, score))
    probs = rng.dirichlet([1, 1, 1], 90)
    labels = rng.integers(0, 3, 90)
    value, _ = macro_auroc(labels, probs, ["a", "b", "c"], multi_label=False)
    assert value == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert np.isnan(auroc(np.ones(5, bool), np.arange(5)))


def test_fid_is_zero_for_identical_features_grows_with_a_shift_and_matches_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) * 1.3 + 0.5
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert trace_sqrt_product(c1, c2) == pytest.approx(np.trace(sqrtm(c1 @ c2)).real, rel=1e-8)
    few = rng.normal(size=(10, 64))  # fewer samples than dimensions: singular covariance
    assert fid(few, few) == pytest.approx(0.0, abs=1e-6)
    other = rng.normal(size=(12, 64)) * 1.5 + 0.2  # the sample-space path equals the covariance-space formula
    k1, k2 = np.cov(few, rowvar=False), np.cov(other, rowvar=False)
    full = np.sum((few.mean(0) - other.mean(0)) ** 2) + np.trace(k1 + k2) - 2 * trace_sqrt_product(k1, k2)
    assert fid(few, other) == pytest.approx(full, rel=1e-7)
    assert fid(a, a + 1.0) == pytest.approx(6.0, rel=1e-6)  # mean shift of 1 in 6 dimensions
    assert fid(a, b) > 1.0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(2)
    x, y, z = rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), rng.normal(size=(400, 16)) + 0.5
    same, _ = kid(x, y, subsets=20, subset_size=200)
    shifted, _ = kid(x, z, subsets=20, subset_size=200)
    assert abs(same) < 0.01 and shifted > 0.05


def test_prdc_of_identical_sets_is_perfect_and_of_far_sets_is_zero():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5))
    assert prdc(x, x.copy(), k=5) == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    )
    far = prdc(x, x + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    half = prdc(x, np.concatenate([x[:30], x[:30] + 100.0]), k=5)  # half the fakes are real-like
    assert half["precision"] == pytest.approx(0.5)
    with pytest.raises(MedisynError, match="at least 6"):
        prdc(x[:5], x, k=5)


def test_diversity_is_the_mean_distance_between_distinct_samples():
    points = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert diversity(points) == pytest.approx(5.0)
    assert np.isnan(diversity(points[:1]))


# --- utility --------------------------------------------------------------------------------------------


def test_utility_real_trained_classifier_beats_chance_and_every_condition_is_written(sets, tmp_path):
    out = tmp_path / "utility"
    result = invoke(
        "evaluate",
        "utility",
        "--real-train",
        sets / "train",
        "--real-test",
        sets / "test",
        "--synthetic",
        sets / "synthetic",
        "--fractions",
        "0.5,1",
        "--seeds",
        "2",
        *TINY,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "real+synthetic" in result.output and "AUROC ± std" in result.output
    assert "95% CI" in result.output
    assert "budget: equal: 36 optimiser steps" in result.output
    data = json.loads((out / "utility.json").read_text())
    rows = {(r["condition"], r["real_fraction"]): r for r in data["rows"]}
    assert set(rows) == {
        ("real", 0.5),
        ("real", 1.0),
        ("synthetic", None),
        ("real+synthetic", 0.5),
        ("real+synthetic", 1.0),
    }
    assert rows[("real", 1.0)]["auroc_mean"] > 0.8 and rows[("synthetic", None)]["auroc_mean"] > 0.8
    assert (
        rows[("real", 0.5)]["real_images"] == 24 and rows[("real+synthetic", 1.0)]["synthetic_images"] == 48
    )
    assert len(rows[("real", 1.0)]["auroc_seeds"]) == 2 and data["classes"] == ["cell", "xray"]
    seeds = rows[("real", 1.0)]["auroc_seeds"]
    assert rows[("real", 1.0)]["auroc_std"] == pytest.approx(np.std(seeds, ddof=1))
    low, high = rows[("real", 1.0)]["auroc_ci95"]
    assert low <= rows[("real", 1.0)]["auroc_mean"] <= high
    assert len(pd.read_csv(out / "utility.csv")) == 5
    assert Image.open(out / "utility.png").size[0] > 300
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_utility_multi_label_scores_each_finding(tmp_path):
    def write(folder: Path, images: list[Path], views: list[str]) -> Path:
        """An ImageFolder whose metadata.csv labels x-rays with two findings, 'xray|grey'."""
        folder.mkdir()
        rows = []
        for path in images:
            for view in views:
                VIEWS[view](Image.open(path)).save(folder / f"{path.stem}_{view}.png")
                label = "cell" if kind(path) == "cell" else "xray|grey"
                rows.append({"file_name": f"{path.stem}_{view}.png", "label": label})
        pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
        return folder

    train, test = (
        write(tmp_path / "train", TRAIN_IMAGES, ["id", "h"]),
        write(tmp_path / "test", OTHER_IMAGES, ["id"]),
    )
    result = invoke(
        "evaluate",
        "utility",
        "--real-train",
        train,
        "--real-test",
        test,
        "--synthetic",
        train,
        "--fractions",
        "1",
        "--seeds",
        "1",
        "--multi-label",
        *TINY,
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "utility.json").read_text())
    assert data["classes"] == ["cell", "grey", "xray"] and data["multi_label"]
    real = next(r for r in data["rows"] if r["condition"] == "real")
    assert set(real["auroc_per_class"]) == {"cell", "grey", "xray"} and real["auroc_mean"] > 0.8


def test_utility_gives_every_condition_the_same_optimiser_steps(sets, tmp_path, monkeypatch):
    """The default budget: epochs x ceil(N / batch) of the largest condition (real 100% + synthetic) for all."""
    import torch

    from medisyn_cli.evaluate.utility import UtilityConfig, run_utility

    counted: list = []  # the optimiser of every step, kept alive so that no two runs share an id
    real_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        counted.append(self)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    config = dict(fractions=(0.25, 1.0), seeds=1, epochs=2, batch_size=16, size=16, bootstrap=50)
    data = run_utility(
        UtilityConfig(
            (str(sets / "train"),),
            (str(sets / "test"),),
            (str(sets / "synthetic"),),
            **config,
            out=str(tmp_path / "steps"),
        )
    )
    runs = list({id(o): o for o in counted}.values())
    per_run = [sum(1 for o in counted if o is run) for run in runs]  # optimiser steps of each training run
    largest = 48 + 48  # all real training images + all synthetic ones
    assert per_run == [2 * -(-largest // 16)] * 5 == [row["steps"] for row in data["rows"]]
    assert data["budget"]["steps"] == 12 and "12 optimiser steps" in data["budget"]["text"]
    assert {row["epochs_seen"] for row in data["rows"]} == {round(12 * 16 / n, 2) for n in (12, 48, 60, 96)}
    counted.clear()
    epochs = run_utility(
        UtilityConfig(
            (str(sets / "train"),),
            (str(sets / "test"),),
            (str(sets / "synthetic"),),
            **config,
            budget="epochs",
            out=str(tmp_path / "epochs"),
        )
    )
    assert [row["steps"] for row in epochs["rows"]] == [2, 6, 6, 8, 12]  # 12, 48, 48, 60, 96 images
    assert epochs["budget"]["steps"] is None and epochs["budget"]["text"].startswith("unequal")
    one_seed = epochs["rows"][0]
    assert one_seed["auroc_ci95_method"].startswith("bootstrap") and np.isnan(one_seed["auroc_std"])
    assert one_seed["auroc_ci95"] == one_seed["auroc_seed_bootstrap_ci95"][0]


def test_utility_multi_label_fraction_keeps_each_finding_and_no_finding_share():
    from medisyn_cli.core.imagesets import ImageSet
    from medisyn_cli.evaluate.utility import fraction_rows

    labels = ["a"] * 200 + ["b"] * 30 + ["a|c"] * 10 + [""] * 760  # c: rare, only with a
    image_set = ImageSet("x", keys=[str(i) for i in range(1000)], labels=labels, positions=list(range(1000)))
    for seed in range(3):
        rows = fraction_rows(image_set, 0.1, seed, multi_label=True)
        picked = [labels[r] for r in rows]
        assert 1 <= sum("c" in p for p in picked) <= 3 and sum(p == "b" for p in picked) == 3  # c also via a
        assert sum("a" in p for p in picked) == 21 and sum(p == "" for p in picked) == 76


def test_bootstrap_auroc_interval_holds_the_estimate_and_narrows_with_more_test_images():
    from medisyn_cli.judge.classifier import bootstrap_auroc

    rng = np.random.default_rng(4)
    widths = []
    for n in (60, 600):
        y = rng.integers(0, 2, n)
        scores = np.stack([1 - (s := 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y)))), s], 1)
        value, _ = macro_auroc(y, scores, ["a", "b"], False)
        low, high = bootstrap_auroc(y, scores, ["a", "b"], False, rounds=300)
        assert low < value < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


@pytest.mark.parametrize(
    "case, message",
    [
        ("extra synthetic label", "--synthetic: labels not in --real-test: tumour"),
        ("missing synthetic label", "--synthetic: no images of --real-test labels xray"),
        ("single test class", "only one class (cell) in the test set; AUROC is undefined"),
        ("empty synthetic set", "--synthetic: "),
    ],
)
def test_utility_bad_inputs_give_one_clear_line_and_exit_2(sets, tmp_path, case, message):
    synthetic, test = sets / "synthetic", sets / "test"
    if case == "extra synthetic label":
        synthetic = label_folders(tmp_path / "s", TRAIN_IMAGES[:6], ["id"], label=lambda p: "tumour")
        label_folders(synthetic, TRAIN_IMAGES, ["id"])
    elif case == "missing synthetic label":
        synthetic = label_folders(tmp_path / "s", [p for p in TRAIN_IMAGES if kind(p) == "cell"], ["id"])
    elif case == "single test class":
        test = label_folders(tmp_path / "t", [p for p in OTHER_IMAGES if kind(p) == "cell"], ["id"])
    else:
        synthetic = tmp_path / "empty"
        (synthetic / "cell").mkdir(parents=True)
    result = invoke(
        "evaluate",
        "utility",
        "--real-train",
        sets / "train",
        "--real-test",
        test,
        "--synthetic",
        synthetic,
        "--seeds",
        "1",
        *TINY,
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


# --- privacy --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def privacy_sets(tmp_path_factory) -> Path:
    """heldout: unseen patients (two views each); copies: flipped JPEGs of the training images;
    heldout_like: the held-out images re-encoded and brightened (same distance to training as held-out)."""
    root = tmp_path_factory.mktemp("privacy")
    label_folders(root / "heldout", OTHER_IMAGES, ["id", "r90"])
    for name, images, change in (
        ("copies", TRAIN_IMAGES, lambda i: jpeg(ImageOps.mirror(i))),
        (
            "heldout_like",
            sorted((root / "heldout").rglob("*.png")),
            lambda i: jpeg(ImageEnhance.Brightness(i).enhance(1.1)),
        ),
    ):
        for path in images:
            (root / name / path.parent.name).mkdir(parents=True, exist_ok=True)
            change(Image.open(path)).save(root / name / path.parent.name / path.name)
    return root


def test_privacy_flags_copies_of_training_images_as_memorised(privacy_sets, tmp_path):
    out = tmp_path / "privacy"
    result = invoke(
        "evaluate",
        "privacy",
        "--real-train",
        FIXTURES / "images",
        "--real-heldout",
        privacy_sets / "heldout",
        "--synthetic",
        privacy_sets / "copies",
        "--pairs",
        "4",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "memorises" in result.output
    data = json.loads((out / "privacy.json").read_text())
    assert data["memorises"] and data["share_above_heldout_p95"] == 1.0
    assert data["near_copy_rate"] == {"synthetic": 1.0, "heldout": 0.0, "reference": 0.0}
    assert data["mannwhitney_p"] < 0.001 and data["p_synthetic_closer"] == 1.0
    assert set(data["flagged_by"]) == {"tail_p95", "near_copies", "distribution", "beyond_reference"}
    assert (
        data["pixel_distance_percentiles"]["synthetic"]["p50"]
        < data["pixel_distance_percentiles"]["heldout"]["p5"]
    )
    rows = pd.read_csv(out / "privacy.csv")
    copies = rows[rows["set"] == "synthetic"]
    assert len(copies) == 12 and (copies["view"] == "hflip").all()  # each found as the flip of its source
    assert copies["near_copy"].all() and (copies["pixel_distance"] > 0).all()
    assert all(Path(k).stem == Path(n).stem for k, n in zip(copies["key"], copies["nn_key"]))
    assert Image.open(out / "closest_pairs.png").size[0] > 400 and (out / "privacy_histogram.png").exists()


def test_privacy_counts_rotated_copies_the_keypoints_verify(privacy_sets, tmp_path):
    """Copies rotated by 20 degrees and cropped to hide the corners: the embedding alone sees them as far from every
    training image; the keypoint verification confirms them, so they are near-copies and the set memorises."""
    from medisyn_cli.evaluate.privacy import PrivacyConfig, run_privacy

    rotated = tmp_path / "rotated"
    for path in TRAIN_IMAGES:
        (rotated / path.parent.name).mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("RGB").rotate(20, Image.Resampling.BICUBIC)
        image.crop((7, 7, 57, 57)).resize((64, 64), Image.Resampling.BICUBIC).save(
            rotated / path.parent.name / path.name
        )
    sets = ((str(FIXTURES / "images"),), (str(privacy_sets / "heldout"),), (str(rotated),))
    data = run_privacy(PrivacyConfig(*sets, pairs=0, out=str(tmp_path / "out")))
    assert data["near_copy_rate"]["synthetic"] >= 0.9 and data["near_copy_rate"]["heldout"] == 0.0
    assert data["memorises"] is True and "near_copies" in data["flagged_by"]
    rows = pd.read_csv(tmp_path / "out" / "privacy.csv")
    verified = rows[(rows["set"] == "synthetic") & rows["near_copy"]]
    assert len(verified) >= 11 and (verified["nn_similarity"] == 1.0).all()  # a verified copy counts as 1.0


def test_privacy_does_not_flag_images_as_far_from_training_as_held_out_ones(privacy_sets, tmp_path):
    """12 synthetic images against 12 held-out and 12 training images: not flagged, and too few to decide (the
    reference is too small for any synthetic sample to reach the power target)."""
    from medisyn_cli.evaluate.privacy import PrivacyConfig, run_privacy

    data = run_privacy(
        PrivacyConfig(
            (str(FIXTURES / "images"),),
            (str(privacy_sets / "heldout"),),
            (str(privacy_sets / "heldout_like"),),
            pairs=0,
            out=str(tmp_path),
        )
    )
    assert data["memorises"] is None and data["verdict"].startswith("undecidable at this sample size")
    assert (
        "more held-out images are needed" in data["verdict"]
        and data["power"]["synthetic_images_needed"] is None
    )
    assert data["reference"] == {
        **data["reference"],
        "source": "heldout+train_self",
        "heldout": 12,
        "train_self": 12,
    }
    assert data["heldout_near_copies"]["count"] == 0 and data["heldout_near_copies"]["warning"] is None
    assert set(data["per_class"]) == {"cell", "xray"} and not any(
        r["memorises"] for r in data["per_class"].values()
    )
    assert sum(r["synthetic"] for r in data["per_class"].values()) == data["images"]["synthetic"]
    assert data["share_above_heldout_p95"] <= 0.1 and data["mannwhitney_p"] > 0.2
    assert data["near_copy_rate"]["synthetic"] == 0.0
    assert not (tmp_path / "closest_pairs.png").exists()


def simulated_similarities(
    rng, copies: float, heldout_duplicates: float, synthetic_far: bool, threshold: float = 0.97
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-training cosine similarity of 200 synthetic and 300 held-out vectors (16-d, 400 training vectors
    around 40 centres). `copies`: share of synthetic vectors that are noisy copies of training vectors (similarity
    0.97-0.995); `heldout_duplicates`: the same for held-out and for the other synthetic vectors (the data set's
    natural near-duplicates of training images); `synthetic_far`: the novel synthetic vectors are further from
    training than held-out ones (the README's situation)."""
    centres = rng.normal(size=(40, 16))

    def draw(n: int, spread: float = 0.6) -> np.ndarray:
        return centres[rng.integers(0, 40, n)] + spread * rng.normal(size=(n, 16))

    def noisy_copies(n: int) -> np.ndarray:
        source = train[rng.integers(0, len(train), n)]
        noise = rng.normal(size=source.shape)
        noise -= (noise * source).sum(1, keepdims=True) * source  # orthogonal to the source
        angle = np.arccos(rng.uniform(threshold, 0.995, n))[:, None]
        return np.cos(angle) * source + np.sin(angle) * noise / np.linalg.norm(noise, axis=1, keepdims=True)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train = unit(draw(400))
    k, d, natural = round(200 * copies), round(300 * heldout_duplicates), round(200 * heldout_duplicates)
    novel = draw(200 - k - natural, 1.2 if synthetic_far else 0.6)
    synthetic = unit(np.concatenate([novel, noisy_copies(k + natural)]))
    heldout = unit(np.concatenate([draw(300 - d), noisy_copies(d)]))
    return (synthetic @ train.T).max(1), (heldout @ train.T).max(1)


@pytest.mark.parametrize("heldout_duplicates, synthetic_far", [(0.0, False), (0.2, False), (0.0, True)])
def test_privacy_verdict_flags_5_percent_noisy_copies_and_rarely_flags_none(
    heldout_duplicates, synthetic_far
):
    """Planted copies, 200 simulated runs each: >= 95% flagged with 5% noisy copies, <= 5% with none; also when
    synthetic images are further away. When 20% of both sets are natural near-duplicates of training images, the
    natural duplicates alone are flagged <= 5% of the time, and 5% copies on top are never cleared (memorises
    false): 200 images cannot tell 24% from 20%, so the verdict is undecidable."""
    from medisyn_cli.evaluate.privacy import memorisation_tests

    rng = np.random.default_rng(7)
    flagged, cleared = {}, {}
    for copies in (0.0, 0.05):
        runs = [
            memorisation_tests(*simulated_similarities(rng, copies, heldout_duplicates, synthetic_far), 0.97)
            for _ in range(200)
        ]
        flagged[copies] = np.mean([run["memorises"] is True for run in runs])
        cleared[copies] = np.mean([run["memorises"] is False for run in runs])
    assert flagged[0.0] <= 0.05, flagged
    if heldout_duplicates:
        assert cleared[0.05] <= 0.05, cleared
    else:
        assert flagged[0.05] >= 0.95 and cleared[0.0] >= 0.9, (flagged, cleared)


def test_privacy_keeps_held_out_near_copies_in_the_reference_and_warns(privacy_sets, tmp_path):
    """A leaky split: half the held-out images are copies of training images. They are reported and kept in the
    reference (a fresh image has them at that rate); the synthetic set, all copies, is still flagged, and its
    near-copies are a finding of their own."""
    from medisyn_cli.evaluate.privacy import PrivacyConfig, run_privacy

    leaky = tmp_path / "leaky"
    for source in (privacy_sets / "heldout", privacy_sets / "copies"):
        for path in source.rglob("*.png"):
            (leaky / path.parent.name).mkdir(parents=True, exist_ok=True)
            Image.open(path).save(leaky / path.parent.name / f"{source.name}_{path.name}")
    data = run_privacy(
        PrivacyConfig(
            (str(FIXTURES / "images"),),
            (str(leaky),),
            (str(privacy_sets / "copies"),),
            pairs=0,
            out=str(tmp_path / "out"),
        )
    )
    leaks = data["heldout_near_copies"]
    assert leaks["count"] == 12 and leaks["share"] == 0.5 and len(leaks["examples"]) == 10
    assert "near-copies of training images" in leaks["warning"] and "split leaks" in leaks["warning"]
    copies = data["synthetic_near_copies"]
    assert copies["count"] == 12 and data["warnings"][:2] == [copies["warning"], leaks["warning"]]
    assert data["warnings"][2].startswith("--heldout: 24 images; below 200") and len(data["warnings"]) == 3
    assert {label: row["near_copies"] for label, row in leaks["per_class"].items()} == {
        "cell": 0,
        "xray": 0,
        "images": 12,
    }
    assert data["reference"]["source"] == "heldout"  # the training images' own neighbours disagree: left out
    assert data["reference_images"] == 24 and data["memorises"] and "near_copies" in data["flagged_by"]
    assert data["near_copy_rate"] == {"synthetic": 1.0, "heldout": 0.5, "reference": 0.5}


def test_privacy_rejects_a_threshold_outside_0_1_with_exit_2(privacy_sets, tmp_path):
    result = invoke(
        "evaluate",
        "privacy",
        "--real-train",
        FIXTURES / "images",
        "--real-heldout",
        privacy_sets / "heldout",
        "--synthetic",
        privacy_sets / "copies",
        "--threshold",
        "1.5",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 2 and "threshold 1.5 is outside (0, 1]" in result.output


# --- fidelity -------------------------------------------------------------------------------------------


def test_fidelity_identical_sets_give_fid_near_zero_and_name_the_features(sets, tmp_path):
    result = invoke(
        "evaluate",
        "fidelity",
        "--real",
        sets / "train",
        "--synthetic",
        sets / "train",
        "--features",
        "pixel",
        "--per-class",
        "--kid-subsets",
        "5",
        "--out",
        tmp_path / "same",
    )
    assert result.exit_code == 0, result.output
    assert "features: pixel" in result.output
    same = json.loads((tmp_path / "same" / "fidelity.json").read_text())
    assert same["features"].startswith("pixel") and "not comparable" in same["note"]
    assert (
        same["overall"]["fid"] < 1e-6 and same["overall"]["precision"] == same["overall"]["coverage"] == 1.0
    )
    assert set(same["per_class"]) == {"cell", "xray"} and same["per_class"]["cell"]["fid"] < 1e-6
    invoke(
        "evaluate",
        "fidelity",
        "--real",
        sets / "train",
        "--synthetic",
        sets / "test",
        "--features",
        "pixel",
        "--kid-subsets",
        "5",
        "--out",
        tmp_path / "other",
    )
    other = json.loads((tmp_path / "other" / "fidelity.json").read_text())
    assert other["overall"]["fid"] > 0.1 and other["overall"]["coverage"] < 1.0
    assert len(pd.read_csv(tmp_path / "same" / "fidelity.csv")) == 3


def test_fidelity_default_cnn_features_are_trained_on_the_real_labels(sets, tmp_path):
    from medisyn_cli.evaluate.fidelity import FidelityConfig, run_fidelity

    config = dict(kid_subsets=5, cnn_epochs=2, batch_size=16, out=str(tmp_path))
    same = run_fidelity(FidelityConfig((str(sets / "train"),), (str(sets / "train"),), **config))
    assert same["features"].startswith("cnn (small CNN penultimate layer") and same["overall"]["fid"] < 1e-6
    assert same["overall"]["real_diversity_within_class"] > 0
    one_class = label_folders(tmp_path / "cells", [p for p in TRAIN_IMAGES if kind(p) == "cell"], ["id"])
    with pytest.raises(MedisynError, match=r"the real set has one class \(cell\)"):
        run_fidelity(FidelityConfig((str(one_class),), (str(sets / "train"),), **config))


def test_fidelity_inception_from_a_missing_file_is_one_clear_error(sets, tmp_path):
    result = invoke(
        "evaluate",
        "fidelity",
        "--real",
        sets / "train",
        "--synthetic",
        sets / "train",
        "--features",
        f"inception:{tmp_path / 'pt_inception.pth'}",
    )
    assert result.exit_code == 2
    assert "pt_inception.pth: no such file" in result.output and "nothing is downloaded" in result.output


def test_fidelity_inception_loads_the_pytorch_fid_layout_from_a_local_file(tmp_path):
    import torch
    from torchvision.models.inception import Inception3

    from medisyn_cli.evaluate.inception import _use_fid_blocks, inception_features, load_inception

    torch.manual_seed(0)
    reference = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    _use_fid_blocks(reference)
    torch.save(reference.state_dict(), tmp_path / "pt_inception.pth")
    model, variant = load_inception(tmp_path / "pt_inception.pth", "cpu")
    assert variant.startswith("pytorch-fid")
    assert (
        type(model.Mixed_7c).__name__ == "FIDInceptionE2" and type(model.Mixed_5b).__name__ == "FIDInceptionA"
    )
    features = inception_features(model, [Image.open(p) for p in TRAIN_IMAGES[:2]], "cpu")
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(MedisynError, match="not an Inception v3 state dict"):
        load_inception(tmp_path / "other.pth", "cpu")


# --- report ---------------------------------------------------------------------------------------------


@pytest.fixture
def generated(tmp_path) -> Path:
    """A screened generate output folder: parquet/, rejected.parquet, run.json with its index, evaluate/ JSON."""
    from medisyn_cli.screening.build import build_index

    out = tmp_path / "synth"
    (out / "parquet").mkdir(parents=True)
    (out / ".medisyn").write_text('{"tool": "medisyn", "command": "generate", "run_id": "r1"}')
    build_index([FIXTURES / "images"], tmp_path / "index", show_progress=False)
    rows = [
        {
            "image": {"bytes": path.read_bytes(), "path": f"{kind(path)}-{i}.png"},
            "id": f"{kind(path)}-{i}",
            "label": kind(path),
            "nn_id": i,
            "nn_similarity": 0.5 + i / 30,
        }
        for i, path in enumerate(TRAIN_IMAGES)
    ]
    pq.write_table(pa.Table.from_pylist(rows), out / "parquet" / "part-00000.parquet")
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "id": "cell-99",
                    "label": "cell",
                    "attempt": 0,
                    "nn_id": 0,
                    "nn_key": str(TRAIN_IMAGES[0]),
                    "nn_similarity": 0.99,
                    "view": "hflip",
                }
            ]
        ),
        out / "rejected.parquet",
    )
    run = {
        "model": {"name": "medisyn-mini (bundled)"},
        "sampling": {"steps": 20},
        "classes": {
            "cell": {"planned": 6, "written": 6, "regenerated": 0, "rejected": 1, "ended": None},
            "xray": {"planned": 6, "written": 6, "regenerated": 0, "rejected": 0, "ended": None},
        },
        "screening": {
            "index": str(tmp_path / "index"),
            "embedder": {"spec": "pixel"},
            "threshold": 0.97,
            "rejected": 1,
        },
    }
    (out / "run.json").write_text(json.dumps(run))
    (out / "evaluate").mkdir()
    (out / "evaluate" / "fidelity.json").write_text(
        json.dumps(
            {
                "evaluation": "fidelity",
                "features": "pixel (1024-d)",
                "note": "not comparable",
                "overall": {"real_images": 5, "synthetic_images": 5, "fid": 1.25},
                "per_class": {},
            }
        )
    )
    return out


def test_report_is_one_offline_page_with_samples_counts_rejections_similarities_and_metrics(generated):
    result = invoke("report", generated)
    assert result.exit_code == 0, result.output
    page = (generated / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # two class strips, histogram, closest pairs
    assert "<h3>cell</h3>" in page and "<h3>xray</h3>" in page
    assert "rejected near-copies" in page and "hflip" in page and "similarity to training" in page
    assert "closest kept images" in page and "features: <b>pixel (1024-d)</b>" in page and "1.25" in page
    assert "http://" not in page and "https://" not in page and 'src="data:' in page


def test_report_omits_missing_parts_with_a_note_instead_of_failing(tmp_path):
    out = label_folders(tmp_path / "bare" / "imagefolder", TRAIN_IMAGES[:4], ["id"]).parent
    (out / ".medisyn").write_text('{"tool": "medisyn", "command": "generate", "run_id": "r1"}')
    result = invoke("report", out)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "no readable run.json" in page and "no rejected.parquet" in page and "no evaluate JSON" in page
    assert "<h3>cell</h3>" in page and "omitted:" in result.output
    missing = invoke("report", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "no such folder" in missing.output


@pytest.mark.parametrize(
    "name",
    [
        "identity",
        "hflip",
        "rot90+vflip",
        "rot270+hflip+invert",
        "box(0.05,0.00,1.05,1.00)",
        "rot3+box(-0.05,-0.05,1.06,1.06)",
    ],
)
def test_privacy_reads_back_the_view_a_screen_result_names(name):
    from medisyn_cli.evaluate.privacy import view_from_name

    assert view_from_name(name).name == name


def test_leakage_finds_test_images_that_copy_training_images_per_class(privacy_sets, tmp_path):
    leaky = tmp_path / "test"
    for source in (privacy_sets / "heldout", privacy_sets / "copies"):
        for path in source.rglob("*.png"):
            label = "cell" if "blood" in path.name or "platelet" in path.name else "xray"
            (leaky / label).mkdir(parents=True, exist_ok=True)
            Image.open(path).save(leaky / label / f"{source.name}_{path.name}")
    result = invoke(
        "evaluate",
        "leakage",
        "--real-train",
        FIXTURES / "images",
        "--real-test",
        leaky,
        "--pairs",
        "4",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "12 of 24 images (50.0%)" in " ".join(result.output.split())
    data = json.loads((tmp_path / "out" / "leakage.json").read_text())
    copies = {
        label: sum(1 for p in (privacy_sets / "copies").rglob("*.png") if kind(p) == label)
        for label in ("cell", "xray")
    }
    assert {label: row["near_copies"] for label, row in data["per_class"].items()} == copies
    assert all(e["key"].split("/")[-1].startswith("copies_") for e in data["examples"])
    rows = pd.read_csv(tmp_path / "out" / "leakage.csv")
    assert rows["near_copy"].sum() == 12 and rows[rows["near_copy"]]["key"].str.contains("copies_").all()
    assert (tmp_path / "out" / "leakage_pairs.png").exists()


def test_fidelity_inception_fid_matches_torch_fidelity_on_the_same_weights(tmp_path):
    """Same random-weight FID Inception file, same images: features and FID equal torch-fidelity's (1e-4 relative)."""
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity_inception  # the test extra
    from torchvision.models.inception import Inception3

    from medisyn_cli.evaluate.inception import _use_fid_blocks, inception_features, load_inception

    torch.manual_seed(0)
    reference = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    _use_fid_blocks(reference)
    for module in reference.modules():  # non-trivial batch-norm statistics, so every layer matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "pt_inception.pth")
    theirs = fidelity_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp_path / "pt_inception.pth")
    )
    ours, _ = load_inception(tmp_path / "pt_inception.pth", "cpu")
    real = [Image.open(p).convert("RGB") for p in TRAIN_IMAGES[:6]]
    fake = [Image.open(p).convert("RGB") for p in OTHER_IMAGES[:6]]

    def torch_fidelity_features(images):
        batch = torch.stack(
            [torch.from_numpy(np.asarray(i, np.uint8).copy()).permute(2, 0, 1) for i in images]
        )
        with torch.no_grad():
            return theirs.eval()(batch)[0].double().numpy()

    a, b = inception_features(ours, real, "cpu"), inception_features(ours, fake, "cpu")
    ta, tb = torch_fidelity_features(real), torch_fidelity_features(fake)
    assert np.abs(a - ta).max() <= 1e-5 * np.abs(ta).max()
    assert fid(a, b) == pytest.approx(fid(ta, tb), rel=1e-4) and fid(a, b) > 0


def test_fidelity_bootstrap_intervals_hold_the_estimates_and_small_sets_are_warned(sets, tmp_path):
    from medisyn_cli.evaluate.fidelity import FidelityConfig, run_fidelity

    data = run_fidelity(
        FidelityConfig(
            (str(sets / "train"),),
            (str(sets / "test"),),
            "pixel",
            kid_subsets=5,
            bootstrap=200,
            out=str(tmp_path),
        )
    )
    overall = data["overall"]
    for name in ("fid", "precision", "recall", "density", "coverage"):
        low, high = overall["ci95"][name]
        assert low <= overall[name] <= high and (low < high or overall[name] in (0.0, 1.0)), name
    assert overall["ci95"]["fid"][0] < overall["ci95"]["fid"][1]
    assert "FID is biased upward at small n" in overall["note"]
    rows = pd.read_csv(tmp_path / "fidelity.csv")
    assert rows.loc[0, "fid_ci95_low"] == pytest.approx(overall["ci95"]["fid"][0])


def test_fidelity_neural_features_are_raw_not_l2_normalised(sets, tmp_path, monkeypatch):
    """clip:/hf: FD uses the encoder's raw features (torch-fidelity's CLIP / DINOv2 FD), not unit vectors."""
    import torch

    import medisyn_cli.evaluate.fidelity as fidelity
    from medisyn_cli.evaluate.fidelity import FidelityConfig, make_extractor
    from medisyn_cli.screening.embed import TorchEmbedder

    class Scaled(TorchEmbedder):
        name, dim = "hf:fake", 3

        def _forward(self, images):
            return torch.tensor([[10.0 * (i + 1), 0.0, 5.0] for i in range(len(images))])

    monkeypatch.setattr(fidelity, "get_embedder", lambda spec: Scaled())
    images = [Image.open(p) for p in TRAIN_IMAGES[:2]]
    extractor = make_extractor("hf:fake", [], FidelityConfig((), ()), "cpu")
    assert "raw features" in extractor.name
    assert np.allclose(extractor.embed(images), [[10.0, 0.0, 5.0], [20.0, 0.0, 5.0]])


def test_privacy_with_too_few_held_out_images_gives_no_verdict():
    """Two held-out images and one synthetic near-copy: undecidable (null), the near-copy named; one held-out image:
    cannot test."""
    from medisyn_cli.evaluate.privacy import memorisation_tests

    result = memorisation_tests(np.array([0.5, 0.99]), np.array([0.98, 0.6]), 0.97)
    assert result["memorises"] is None and result["verdict"].startswith("undecidable at this sample size")
    assert "1 of 2 synthetic images are near-copies" in result["verdict"] and result["reference_images"] == 2
    result = memorisation_tests(np.array([0.5, 0.99]), np.array([0.98]), 0.97)
    assert result["memorises"] is None and result["verdict"].startswith("cannot test: 1 held-out images")
    assert result["near_copy_rate"]["synthetic"] == 0.5 and np.isnan(result["p_values"]["tail_p95"])


def test_utility_trains_a_random_init_torchvision_resnet18_with_classifier_resnet18(sets, tmp_path):
    import torchvision

    from medisyn_cli.judge.classifier import build_network

    network = build_network("resnet18", 2)
    assert isinstance(network[0], torchvision.models.ResNet)
    result = invoke(
        "evaluate",
        "utility",
        "--real-train",
        sets / "train",
        "--real-test",
        sets / "test",
        "--synthetic",
        sets / "synthetic",
        "--classifier",
        "resnet18",
        "--size",
        "32",
        "--steps",
        "3",
        "--fractions",
        "1",
        "--seeds",
        "1",
        "--batch-size",
        "8",
        "--bootstrap",
        "10",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "utility.json").read_text())
    assert data["classifier"]["arch"] == "resnet18" and data["classifier"]["weights"] is None
    assert [row["steps"] for row in data["rows"]] == [3, 3, 3]
