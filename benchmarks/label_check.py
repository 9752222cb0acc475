"""Label check (#18): does filtering generated images with a judge trained on real images help?

For each data set of ../shared/data (the bundled model's training split; its hold-out, listed in the model's
holdout.csv, is the test set the model never saw):
1. `medisyn judge build` on the real training images (knn on `thumb` features, the default judge);
2. `medisyn generate` of --per-class images per class without a judge, then with `--judge` at each threshold
   (same manifest, seed, steps and batch size for every condition), timed;
3. GAN-test accuracy of the unjudged images (share the judge classifies as their own class, per class) against
   the judge's accuracy on real held-out images (its ceiling);
4. utility: the same small CNN (medisyn_cli.evaluate.classifier, 32 px, the same number of optimiser steps for
   every condition) trained on each synthetic set, macro AUROC on the real hold-out, mean over --seeds;
   coverage (Naeem et al. 2020, k=5, in thumb feature space) of the real hold-out by each synthetic set;
   yield (kept / generated) and generation time relative to the unjudged run.

    nice -n 10 python benchmarks/label_check.py --per-class 20 --steps 10 --thresholds 0.3,0.5 \
        --out /tmp/label_check --results benchmarks/results/label_check

Results are written after every data set (results.json, results.txt), so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from evaluate_mini import split_folder  # noqa: E402
from utility_mini import SETS, real_split  # noqa: E402

MODEL = REPO / "medisyn_cli" / "bundled" / "mini"


def generate(manifest: Path, out: Path, per_class: int, steps: int, judge: Path | None, threshold: float | None,
             max_attempts: int) -> dict:
    """One `generate` run (optionally judged); returns seconds, kept, generated and the kept (path, label) rows."""
    from medisyn_cli.config import GenerateConfig
    from medisyn_cli.manifest import load_manifest
    from medisyn_cli.runner import run_generate

    n = per_class * len(load_manifest(manifest).labels)
    clock = time.time()
    summary = run_generate(GenerateConfig(manifest=str(manifest), n=n, out=str(out), steps=steps, batch_size=16,
                                          formats=("imagefolder",), overwrite=True, max_attempts=max_attempts,
                                          judge=str(judge) if judge else None, min_label_score=threshold),
                           show_progress=False)
    seconds = time.time() - clock
    rejected = sum(c.label_rejected + c.rejected for c in summary.counts.values())
    kept = sum(c.written for c in summary.counts.values())
    rows = [(out / "imagefolder" / r["file_name"], r["label"])
            for r in csv.DictReader(open(out / "imagefolder" / "metadata.csv"))]
    return {"seconds": round(seconds, 1), "kept": kept, "generated": kept + rejected,
            "yield": round(kept / (kept + rejected), 4), "ended": summary.ended, "rows": rows}


def images(rows: list) -> list:
    from PIL import Image

    return [Image.open(path).copy() for path, _ in rows]


def gan_test(judge, rows: list) -> dict:
    """Share of synthetic images the judge classifies as their own class, overall and per class."""
    labels = [label for _, label in rows]
    _, judged = judge.label_scores(images(rows), labels)
    hits = np.array([a == b for a, b in zip(judged, labels)])
    per_class = {c: round(float(hits[[l == c for l in labels]].mean()), 4) for c in sorted(set(labels))}
    return {"accuracy": round(float(hits.mean()), 4), "per_class": per_class}


def utility(train_rows: list, test_x: np.ndarray, test_y: np.ndarray, classes: list[str], seeds: int,
            steps: int) -> dict:
    """Macro AUROC on the real test set of the small CNN trained on `train_rows` (same steps for every set)."""
    import torch

    from medisyn_cli.evaluate.classifier import TrainSettings, macro_auroc, predict, train_classifier
    from medisyn_cli.judge.model import cnn_arrays

    x = cnn_arrays(images(train_rows))
    y = np.array([classes.index(label) for _, label in train_rows])
    scores = []
    for seed in range(seeds):
        model = train_classifier(x, y, len(classes), TrainSettings(steps=steps, batch_size=32), seed,
                                 torch.device("cpu"))
        value, _ = macro_auroc(test_y, predict(model, test_x, torch.device("cpu"), False), classes, False)
        scores.append(value)
    return {"auroc": round(float(np.mean(scores)), 4), "auroc_seeds": [round(float(s), 4) for s in scores]}


def coverage(real_features: np.ndarray, rows: list) -> float:
    from medisyn_cli.evaluate.metrics import prdc
    from medisyn_cli.judge.features import ThumbFeatures

    return round(prdc(real_features, ThumbFeatures().embed(images(rows)), k=5)["coverage"], 4)


def run_set(dataset: str, args, work: Path) -> dict:
    from medisyn_cli.judge import JudgeConfig, build_judge, load_judge
    from medisyn_cli.judge.features import ThumbFeatures

    train, test = real_split(dataset, MODEL)
    classes = sorted({label for _, label in train})
    folder = split_folder(train, work / dataset / "real-train")
    meta = build_judge(JudgeConfig(real=(str(folder),), out=str(work / dataset / "judge"), overwrite=True))
    judge = load_judge(work / dataset / "judge")
    test_images = images(test)
    test_x = __import__("medisyn_cli.judge.model", fromlist=["cnn_arrays"]).cnn_arrays(test_images)
    test_y = np.array([classes.index(label) for _, label in test])
    real_features = ThumbFeatures().embed(test_images)
    manifest = REPO / "prompts" / f"{SETS[dataset]}.csv"
    result = {"dataset": dataset, "classes": classes, "test_images": len(test),
              "judge": {"heldout_accuracy": round(meta["heldout_accuracy"], 4),
                        "per_class": {c: v["accuracy"] for c, v in meta["per_class"].items()},
                        "ece": meta["calibration"]["ece"], "pass_rate": meta["label_score_pass_rate"]},
              "conditions": []}
    generate(manifest, work / dataset / "warm-up", 1, args.steps, None, None, args.max_attempts)  # load caches
    for threshold in [None] + args.thresholds:
        name = "no judge" if threshold is None else f"judge >= {threshold:g}"
        made = generate(manifest, work / dataset / name.replace(" ", "").replace(">=", "-"), args.per_class,
                        args.steps, None if threshold is None else work / dataset / "judge", threshold,
                        args.max_attempts)
        row = {"condition": name, **{k: v for k, v in made.items() if k != "rows"},
               "gan_test": gan_test(judge, made["rows"]), "coverage": coverage(real_features, made["rows"]),
               **utility(made["rows"], test_x, test_y, classes, args.seeds, args.classifier_steps)}
        base = result["conditions"][0] if result["conditions"] else row
        row["time_ratio"] = round(row["seconds"] / base["seconds"], 3)
        row["auroc_gain"] = round(row["auroc"] - base["auroc"], 4)
        row["coverage_change"] = round(row["coverage"] - base["coverage"], 4)
        result["conditions"].append(row)
        print(line(dataset, row), flush=True)
    return result


def line(dataset: str, row: dict) -> str:
    return (f"{dataset:24s} {row['condition']:12s} AUROC {row['auroc']:.3f} ({row['auroc_gain']:+.3f})  GAN-test "
            f"{row['gan_test']['accuracy']:.3f}  coverage {row['coverage']:.3f} ({row['coverage_change']:+.3f})  "
            f"yield {row['yield']:.2f}  time {row['seconds']:.0f} s ({row['time_ratio']:.2f}x)"
            + (f"  ENDED {list(row['ended'])}" if row["ended"] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="isic2017_dermoscopy,busi_breast_ultrasound,brain_tumor_mri")
    parser.add_argument("--gan-only-sets", default="kermany_pediatric_cxr,bccd_blood_smear,mednist_radiology",
                        help="sets measured for GAN-test accuracy only (unjudged images), after --sets")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (the same for every condition)")
    parser.add_argument("--thresholds", default="0.3,0.5")
    parser.add_argument("--max-attempts", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classifier-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("/tmp/label_check"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "label_check")
    args = parser.parse_args()
    args.thresholds = [float(t) for t in args.thresholds.split(",") if t]
    args.results.mkdir(parents=True, exist_ok=True)
    results = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "sets": []}
    clock = time.time()
    for dataset in args.sets.split(","):
        results["sets"].append(run_set(dataset, args, args.out))
        save(results, args, clock)
    for dataset in [d for d in args.gan_only_sets.split(",") if d]:
        results.setdefault("gan_test_only", []).append(gan_only(dataset, args, args.out))
        save(results, args, clock)
    print(f"done in {time.time() - clock:.0f} s", flush=True)


def gan_only(dataset: str, args, work: Path) -> dict:
    """GAN-test accuracy of unjudged images only (no utility, no judged runs)."""
    from medisyn_cli.judge import JudgeConfig, build_judge, load_judge

    train, _ = real_split(dataset, MODEL)
    folder = split_folder(train, work / dataset / "real-train")
    meta = build_judge(JudgeConfig(real=(str(folder),), out=str(work / dataset / "judge"), overwrite=True))
    manifest = REPO / "prompts" / f"{SETS[dataset]}.csv"
    made = generate(manifest, work / dataset / "nojudge", args.per_class, args.steps, None, None, args.max_attempts)
    row = {"dataset": dataset, "judge_heldout_accuracy": round(meta["heldout_accuracy"], 4),
           "judge_per_class": {c: v["accuracy"] for c, v in meta["per_class"].items()},
           "gan_test": gan_test(load_judge(work / dataset / "judge"), made["rows"]), "seconds": made["seconds"]}
    print(f"{dataset:24s} GAN-test {row['gan_test']['accuracy']:.3f} (judge on real held-out "
          f"{row['judge_heldout_accuracy']:.3f})", flush=True)
    return row


def save(results: dict, args, clock: float) -> None:
    """results.json and results.txt, rewritten after every data set."""
    results["seconds"] = round(time.time() - clock, 1)
    (args.results / "results.json").write_text(json.dumps(results, indent=2))
    text = [line(s["dataset"], r) for s in results["sets"] for r in s["conditions"]]
    text += [f"{s['dataset']:24s} judge held-out accuracy {s['judge']['heldout_accuracy']:.3f} (GAN-test ceiling)"
             for s in results["sets"]]
    text += [f"{r['dataset']:24s} GAN-test {r['gan_test']['accuracy']:.3f} (judge on real held-out "
             f"{r['judge_heldout_accuracy']:.3f})" for r in results.get("gan_test_only", [])]
    (args.results / "results.txt").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
