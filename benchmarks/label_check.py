"""Label check (#18): how often do the bundled model's images show their class, and does filtering help?

For each data set of ../shared/data (the bundled model's training split; its hold-out, listed in the model's
holdout.csv, is the test set the model never saw):
1. a judge (`medisyn judge build` defaults: knn on `thumb` features) trained on the real training images;
2. a pool of unjudged synthetic images per class in plan order (by default the pool evaluate_mini.py /
   utility_mini.py made: runs/evaluate_mini/<set>/synthetic, 100 a class, 20 steps, guidance 3.0, seed 0;
   made here with the same settings when absent), every image scored once by the judge;
3. GAN-test accuracy of the pool (the share the judge classifies as its own class), per class, against the
   judge's accuracy on real held-out images (its ceiling);
4. the same budget of --per-class images a class for every condition: "no judge" takes each class's first
   images, "judge >= t" the first ones whose own-label score is at least t -- what `generate --judge
   --min-label-score t` keeps, with the replacements drawn from the next images of the pool instead of new
   seeds of the same image (the same distribution). Yield = kept / images examined. Utility: the same small CNN
   (medisyn_cli.judge.classifier, 32 px, the same optimiser steps for every condition) trained on each set,
   macro AUROC on the real hold-out, mean over --seeds; coverage (Naeem et al. 2020, k=5, thumb features) of the
   real hold-out by each set (same size for every condition);
5. --product-set: real `medisyn generate` runs without and with `--judge` (same n, steps, batch size and
   threads), timed: the generation time ratio and yield of the product itself.

    nice -n 10 python benchmarks/label_check.py --per-class 30 --thresholds 0.3,0.5,0.7 --seeds 2 \
        --product-set busi_breast_ultrasound --results benchmarks/results/label_check

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


def generate(
    manifest: Path,
    out: Path,
    n: int,
    steps: int | None,
    guidance: float | None,
    judge: Path | None = None,
    threshold: float | None = None,
    batch_size: int = 16,
    threads: int | None = None,
    seed: int = 0,
    model: Path = MODEL,
) -> dict:
    """One `medisyn generate` run (optionally judged), timed; returns seconds, kept, generated and its rows."""
    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate

    clock = time.time()
    summary = run_generate(
        GenerateConfig(
            manifest=str(manifest),
            n=n,
            out=str(out),
            steps=steps,
            guidance=guidance,
            batch_size=batch_size,
            threads=threads,
            seed=seed,
            model=str(model),
            formats=("imagefolder",),
            overwrite=True,
            max_attempts=50,
            judge=str(judge) if judge else None,
            min_label_score=threshold,
        ),
        show_progress=False,
    )
    seconds = time.time() - clock
    kept = sum(c.written for c in summary.counts.values())
    generated = kept + sum(c.label_rejected + c.rejected for c in summary.counts.values())
    return {
        "seconds": round(seconds, 1),
        "kept": kept,
        "generated": generated,
        "yield": round(kept / generated, 4),
        "ended": summary.ended,
        "rows": folder_rows(out),
    }


def folder_rows(out: Path) -> list:
    """(path, label) of a medisyn output's ImageFolder, in plan order."""
    return [
        (out / "imagefolder" / r["file_name"], r["label"])
        for r in csv.DictReader(open(out / "imagefolder" / "metadata.csv"))
    ]


def images(rows: list) -> list:
    from PIL import Image

    return [Image.open(path).copy() for path, _ in rows]


def pool(dataset: str, args, work: Path) -> tuple[list, dict]:
    """The unjudged pool of a data set, --pool-per-class images a class: evaluate_mini's run (seed 0, else made
    here alike), topped up by a run with seed 1 (other image seeds, same settings) when it holds fewer."""
    from collections import Counter

    from medisyn_cli.dataset.manifest import load_manifest

    manifest = REPO / "prompts" / f"{SETS[dataset]}.csv"
    classes = len(load_manifest(manifest).labels)
    runs = [args.pool_root / dataset / "synthetic"]
    if not (runs[0] / "run.json").exists():
        runs[0] = work / dataset / "pool"
        made_pool(manifest, runs[0], args.pool_per_class * classes, 0, args.model)
    rows = folder_rows(runs[0])
    have = min(Counter(label for _, label in rows).values())
    if have < args.pool_per_class:
        runs.append(work / dataset / "pool-extra")
        made_pool(manifest, runs[1], (args.pool_per_class - have) * classes, 1, args.model)
        rows += folder_rows(runs[1])
    made = [json.loads((run / "run.json").read_text())["options"] for run in runs]
    return rows, {
        "n": len(rows),
        "runs": [{k: o[k] for k in ("n", "steps", "guidance", "seed")} for o in made],
        "folders": [str(run) for run in runs],
    }


def made_pool(manifest: Path, out: Path, n: int, seed: int, model: Path) -> None:
    """An unjudged pool run (20 steps, guidance 3.0), reused when `out` already holds one with this n and seed."""
    if (out / "run.json").exists():
        options = json.loads((out / "run.json").read_text())["options"]
        if (options["n"], options["seed"]) == (n, seed):
            return
    generate(manifest, out, n, 20, 3.0, batch_size=64, seed=seed, model=model)


def utility(train_rows: list, test_x: np.ndarray, test_y: np.ndarray, classes: list[str], args) -> dict:
    """Macro AUROC on the real test set of the small CNN trained on `train_rows` (same steps for every set)."""
    import torch

    from medisyn_cli.judge.classifier import TrainSettings, macro_auroc, predict, train_classifier
    from medisyn_cli.judge.model import cnn_arrays

    x = cnn_arrays(images(train_rows))
    y = np.array([classes.index(label) for _, label in train_rows])
    scores = []
    for seed in range(args.seeds):
        model = train_classifier(
            x,
            y,
            len(classes),
            TrainSettings(steps=args.classifier_steps, batch_size=32),
            seed,
            torch.device("cpu"),
        )
        value, _ = macro_auroc(test_y, predict(model, test_x, torch.device("cpu"), False), classes, False)
        scores.append(value)
    return {"auroc": round(float(np.mean(scores)), 4), "auroc_seeds": [round(float(v), 4) for v in scores]}


def select(rows: list, scores: np.ndarray, per_class: int, threshold: float | None) -> tuple[list, int]:
    """Each class's first `per_class` images (scoring at least `threshold`); returns them and how many were examined."""
    chosen, examined = [], 0
    for label in sorted({label for _, label in rows}):
        taken = 0
        for row, score in ((r, sc) for r, sc in zip(rows, scores) if r[1] == label):
            if taken == per_class:
                break
            examined += 1
            if threshold is None or score >= threshold:
                chosen.append(row)
                taken += 1
    return chosen, examined


def run_set(dataset: str, args, work: Path) -> dict:
    from medisyn_cli.evaluate.metrics import prdc
    from medisyn_cli.judge.build import JudgeConfig, build_judge
    from medisyn_cli.judge.features import ThumbFeatures
    from medisyn_cli.judge.model import cnn_arrays, load_judge

    # 1. judge on the real training split; the real hold-out as test set
    train, test = real_split(dataset, args.model)
    classes = sorted({label for _, label in train})
    meta = build_judge(
        JudgeConfig(
            real=(str(split_folder(train, work / dataset / "real-train")),),
            out=str(work / dataset / "judge"),
            classifier=args.classifier,
            overwrite=True,
        )
    )
    judge = load_judge(work / dataset / "judge")
    test_images = images(test)
    test_x, test_y = cnn_arrays(test_images), np.array([classes.index(label) for _, label in test])
    real_features = ThumbFeatures().embed(test_images)
    # 2. the pool, scored once; GAN-test accuracy against the judge's real held-out accuracy
    rows, made = pool(dataset, args, work)
    labels = [label for _, label in rows]
    clock = time.time()
    scores, judged = judge.label_scores(images(rows), labels)
    judge_seconds = time.time() - clock
    hits = np.array([a == b for a, b in zip(judged, labels)])
    result = {
        "dataset": dataset,
        "classes": classes,
        "test_images": len(test),
        "pool": made,
        "judge": {
            "heldout_accuracy": round(meta["heldout_accuracy"], 4),
            "ece": meta["calibration"]["ece"],
            "per_class": {c: v["accuracy"] for c, v in meta["per_class"].items()},
            "pass_rate": meta["label_score_pass_rate"],
            "seconds_per_image": round(judge_seconds / len(rows), 5),
        },
        "gan_test": {
            "accuracy": round(float(hits.mean()), 4),
            "per_class": {c: round(float(hits[[l == c for l in labels]].mean()), 4) for c in classes},
        },
        "conditions": [],
    }
    print(
        f"{dataset:24s} GAN-test {result['gan_test']['accuracy']:.3f} of {len(rows)} (judge on real held-out "
        f"{result['judge']['heldout_accuracy']:.3f})",
        flush=True,
    )
    # 3. the same budget per class for every condition: utility, coverage, yield
    for threshold in [None] + args.thresholds:
        chosen, examined = select(rows, scores, args.per_class, threshold)
        row = {
            "condition": "no judge" if threshold is None else f"judge >= {threshold:g}",
            "threshold": threshold,
            "kept": len(chosen),
            "examined": examined,
            "yield": round(len(chosen) / examined, 4),
        }
        if len(chosen) < args.per_class * len(classes):
            row["short"] = (
                f"the pool holds only {len(chosen)} images passing (budget {args.per_class} a class)"
            )
        else:
            row["coverage"] = round(
                prdc(real_features, ThumbFeatures().embed(images(chosen)), k=5)["coverage"], 4
            )
            if dataset in args.utility_sets.split(","):
                row.update(utility(chosen, test_x, test_y, classes, args))
        result["conditions"].append(row)
        print(line(dataset, row, result["conditions"][0]), flush=True)
    return result


def line(dataset: str, row: dict, base: dict) -> str:
    if "coverage" not in row:
        return f"{dataset:24s} {row['condition']:12s} yield {row['yield']:.2f}  {row.get('short', '')}"
    auroc = (
        f"AUROC {row['auroc']:.3f} ({row['auroc'] - base['auroc']:+.3f})"
        if "auroc" in row
        else "AUROC not measured"
    )
    return (
        f"{dataset:24s} {row['condition']:12s} {auroc}  "
        f"coverage {row['coverage']:.3f} ({row['coverage'] - base['coverage']:+.3f})  yield {row['yield']:.2f} "
        f"({1 / row['yield']:.2f} images made per image kept)"
    )


def product(dataset: str, args, work: Path) -> dict:
    """Real generate runs, unjudged and with --judge at each threshold: seconds, time ratio and yield."""
    from medisyn_cli.dataset.manifest import load_manifest

    manifest = REPO / "prompts" / f"{SETS[dataset]}.csv"
    n = args.product_per_class * len(load_manifest(manifest).labels)
    generate(
        manifest,
        work / dataset / "warm-up",
        len(load_manifest(manifest).labels),
        args.product_steps,
        3.0,
        threads=2,
        model=args.model,
    )  # page in the model once
    runs = []
    for threshold in [None] + args.product_thresholds:
        made = generate(
            manifest,
            work / dataset / f"product-{threshold}",
            n,
            args.product_steps,
            3.0,
            None if threshold is None else work / dataset / "judge",
            threshold,
            threads=2,
            model=args.model,
        )
        made.pop("rows")
        runs.append(
            {
                "condition": "no judge" if threshold is None else f"judge >= {threshold:g}",
                **made,
                "time_ratio": round(made["seconds"] / (runs[0]["seconds"] if runs else made["seconds"]), 3),
            }
        )
        print(
            f"{dataset:24s} product {runs[-1]['condition']:12s} {made['seconds']:.0f} s "
            f"({runs[-1]['time_ratio']:.2f}x), yield {made['yield']:.2f}",
            flush=True,
        )
    return {"dataset": dataset, "n": n, "steps": args.product_steps, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--model", type=Path, default=MODEL, help="model folder (with holdout.csv)")
    parser.add_argument("--per-class", type=int, default=30, help="images a class in every condition")
    parser.add_argument(
        "--utility-sets",
        default=",".join(SETS),
        help="sets whose conditions get the utility "
        "measurement (the small CNN; the rest get GAN-test, yield and coverage only)",
    )
    parser.add_argument("--thresholds", default="0.3,0.5,0.7")
    parser.add_argument("--classifier", default="knn", help="the judge's classifier (knn, linear, cnn)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--classifier-steps", type=int, default=200)
    parser.add_argument("--pool-root", type=Path, default=REPO / "runs" / "evaluate_mini")
    parser.add_argument("--pool-per-class", type=int, default=100)
    parser.add_argument("--product-set", default="", help="data set for timed generate runs (none: skipped)")
    parser.add_argument("--product-per-class", type=int, default=10)
    parser.add_argument("--product-steps", type=int, default=10)
    parser.add_argument("--product-thresholds", default="0.5")
    parser.add_argument("--out", type=Path, default=Path("/tmp/label_check"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "label_check")
    args = parser.parse_args()
    args.thresholds = [float(t) for t in args.thresholds.split(",") if t]
    args.product_thresholds = [float(t) for t in args.product_thresholds.split(",") if t]
    args.results.mkdir(parents=True, exist_ok=True)
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sets": [],
    }
    clock = time.time()
    for dataset in [d for d in args.sets.split(",") if d]:
        results["sets"].append(run_set(dataset, args, args.out))
        save(results, args, clock)
    if args.product_set:
        results["product"] = product(args.product_set, args, args.out)
        save(results, args, clock)
    print(f"done in {time.time() - clock:.0f} s", flush=True)


def save(results: dict, args, clock: float) -> None:
    """results.json and results.txt, rewritten after every data set."""
    results["seconds"] = round(time.time() - clock, 1)
    (args.results / "results.json").write_text(json.dumps(results, indent=2))
    text = [
        f"{s['dataset']:24s} GAN-test {s['gan_test']['accuracy']:.3f} of {s['pool']['n']} (judge on real "
        f"held-out {s['judge']['heldout_accuracy']:.3f})"
        for s in results["sets"]
    ]
    text += [line(s["dataset"], r, s["conditions"][0]) for s in results["sets"] for r in s["conditions"]]
    if "product" in results:
        text += [
            f"{results['product']['dataset']:24s} product {r['condition']:12s} {r['seconds']:.0f} s "
            f"({r['time_ratio']:.2f}x), yield {r['yield']:.2f}"
            for r in results["product"]["runs"]
        ]
    (args.results / "results.txt").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
