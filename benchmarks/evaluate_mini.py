"""`medisyn evaluate` on the bundled model: utility, privacy and fidelity per data set of ../shared/data.

For each data set: generate --per-class images per class with the bundled model (`medisyn generate`, the
mini_<x>.csv manifest), split the real images into the model's training images and its hold-out (holdout.csv,
images it never saw; see utility_mini.py real_split), then
- utility: the classifier trained on real (at each --fractions), synthetic, and real + synthetic images, macro
  AUROC on the hold-out, every condition for the same number of optimiser steps (--classifier-steps, default
  --epochs over the largest condition). Baseline: real at each fraction; candidates: synthetic only and
  real + synthetic. Mean, sample std and 95% interval over --seeds.
- privacy: similarity of each synthetic and each hold-out image to its nearest training image (pixel embedder
  with views); hold-out near-copies of training images screened out of the reference; the three-test verdict.
- fidelity (unless --skip-fidelity): FID / precision / recall / density / coverage with --features (default
  cnn), with bootstrap intervals. Baseline: hold-out real images vs the training images (the floor a perfect
  generator reaches); candidate: synthetic vs training images.
Writes every evaluate output under WORK/<data set>/synthetic/evaluate/ (then `medisyn report` of that folder) and
the summary to --results (results.json, output.txt).

    python benchmarks/evaluate_mini.py --per-class 100 --seeds 3 --work runs/evaluate_mini
    nice -n 10 python benchmarks/evaluate_mini.py --sets busi_breast_ultrasound,kermany_pediatric_cxr,\
        isic2017_dermoscopy,brain_tumor_mri --seeds 2 --fractions 0.1,1 --classifier-steps 100 --skip-fidelity \
        --threads 1                                  # the reduced run of the README (a shared 2-core machine)
    python benchmarks/evaluate_mini.py --leakage-only  # hold-out images that copy training images, per class
    python benchmarks/evaluate_mini.py --sets bccd_blood_smear --per-class 4 --seeds 1 --fractions 1 --epochs 2 \
        --steps 8 --work /tmp/evaluate_tiny --results /tmp/evaluate_tiny/results        # a smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utility_mini import REPO, SETS, real_split, synthetic  # noqa: E402


def split_folder(rows: list, folder: Path) -> Path:
    """An ImageFolder (metadata.csv only, file names relative to it) listing (path, label) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".metadata.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"])
        writer.writerows([os.path.relpath(path, folder), label] for path, label in rows)
    tmp.replace(folder / "metadata.csv")
    return folder


def leakage_set(dataset: str, args, model_dir: Path) -> dict:
    """`medisyn evaluate leakage` of the model's hold-out (the utility test set) against its training images."""
    from medisyn_cli.evaluate.leakage import LeakageConfig, run_leakage

    work = args.work / dataset
    train_rows, test_rows = real_split(dataset, model_dir)
    train, heldout = (
        split_folder(train_rows, work / "real_train"),
        split_folder(test_rows, work / "real_heldout"),
    )
    result = run_leakage(
        LeakageConfig((str(train),), (str(heldout),), examples=5, out=str(args.results / "leakage" / dataset))
    )
    return {
        "dataset": dataset,
        "train": result["images"]["train"],
        "test": result["images"]["test"],
        "near_copies": result["count"],
        "share": result["share"],
        "threshold": result["threshold"],
        "per_class": result["per_class"],
        "examples": result["examples"],
    }


def leakage_line(row: dict) -> str:
    """One printed line per data set: near-copies of training images among its test images, per class."""
    classes = ", ".join(f"{label} {r['near_copies']}/{r['images']}" for label, r in row["per_class"].items())
    return (
        f"{row['dataset']:24s} {row['near_copies']:4d} of {row['test']:4d} test images ({row['share']:.1%}) are "
        f"near-copies of the {row['train']} training images (>= {row['threshold']:g}): {classes}"
    )


def evaluate_set(dataset: str, args, model_dir: Path) -> dict:
    """Generate, split and run the three evaluations for one data set; returns its summary row."""
    from medisyn_cli.evaluate.fidelity import FidelityConfig, run_fidelity
    from medisyn_cli.evaluate.privacy import PrivacyConfig, run_privacy
    from medisyn_cli.evaluate.report import write_report
    from medisyn_cli.evaluate.utility import UtilityConfig, run_utility

    work = args.work / dataset
    train_rows, test_rows = real_split(dataset, model_dir)
    train, heldout = (
        split_folder(train_rows, work / "real_train"),
        split_folder(test_rows, work / "real_heldout"),
    )
    synth_dir = work / "synthetic"
    synthetic(
        REPO / "prompts" / f"{SETS[dataset]}.csv",
        args.per_class,
        synth_dir,
        args.model,
        args.steps,
        args.guidance,
    )
    out = synth_dir / "evaluate"
    utility = run_utility(
        UtilityConfig(
            (str(train),),
            (str(heldout),),
            (str(synth_dir),),
            args.fractions,
            seeds=args.seeds,
            epochs=args.epochs,
            size=args.size,
            out=str(out),
            budget=args.budget,
            steps=args.classifier_steps,
        )
    )
    privacy = run_privacy(PrivacyConfig((str(train),), (str(heldout),), (str(synth_dir),), out=str(out)))
    fidelity = floor = None
    if not args.skip_fidelity:
        fidelity = run_fidelity(
            FidelityConfig(
                (str(train),),
                (str(synth_dir),),
                args.features,
                per_class=True,
                cnn_epochs=args.epochs,
                out=str(out),
            )
        )
        floor = run_fidelity(
            FidelityConfig(
                (str(train),),
                (str(heldout),),
                args.features,
                per_class=True,
                cnn_epochs=args.epochs,
                out=str(out / "baseline_heldout"),
            )
        )
    write_report(synth_dir)
    copy_outputs(out, args.results / dataset)
    return summary_row(dataset, utility, privacy, fidelity, floor)


def copy_outputs(out: Path, results: Path) -> None:
    """The small evaluate outputs of a set (JSON, CSV, figures; not the per-image privacy.csv) into the results."""
    import shutil

    results.mkdir(parents=True, exist_ok=True)
    for name in (
        "utility.json",
        "utility.csv",
        "utility.png",
        "privacy.json",
        "privacy_histogram.png",
        "closest_pairs.png",
        "fidelity.json",
        "fidelity.csv",
    ):
        if (out / name).exists():
            shutil.copy2(out / name, results / name)


def summary_row(
    dataset: str, utility: dict, privacy: dict, fidelity: dict | None, floor: dict | None
) -> dict:
    """Baseline, candidate and ratio of each evaluation."""
    rows = {(r["condition"], r["real_fraction"]): r for r in utility["rows"]}
    full, low = max(f for c, f in rows if c == "real"), min(f for c, f in rows if c == "real")

    def cell(row: dict) -> dict:
        return {
            "auroc": row["auroc_mean"],
            "std": row["auroc_std"],
            "ci95": row["auroc_ci95"],
            "steps": row["steps"],
            "images": row["real_images"] + row["synthetic_images"],
        }

    conditions = {
        "real": cell(rows[("real", full)]),
        "synthetic": cell(rows[("synthetic", None)]),
        "real+synthetic": cell(rows[("real+synthetic", full)]),
        f"real {low:g}": cell(rows[("real", low)]),
        f"real {low:g}+synthetic": cell(rows[("real+synthetic", low)]),
    }
    result = {
        "dataset": dataset,
        "classes": len(utility["classes"]),
        "images": utility["images"],
        "utility": {
            "budget": utility["budget"]["text"],
            "seeds": utility["seeds"],
            "conditions": conditions,
            "synthetic_ratio": conditions["synthetic"]["auroc"] / conditions["real"]["auroc"],
            "low_fraction": low,
            "gain_at_low_fraction": conditions[f"real {low:g}+synthetic"]["auroc"]
            - conditions[f"real {low:g}"]["auroc"],
        },
        "privacy": {
            "heldout_median_similarity": privacy["percentiles"]["heldout"]["p50"],
            "synthetic_median_similarity": privacy["percentiles"]["synthetic"]["p50"],
            "reference_median_similarity": privacy["percentiles"]["reference"]["p50"],
            "heldout_near_copies": {k: privacy["heldout_near_copies"][k] for k in ("count", "share")},
            "share_above_heldout_p95": privacy["share_above_heldout_p95"],
            "share_ratio": privacy["share_ratio"],
            "near_copy_rate": privacy["near_copy_rate"],
            "p_values": privacy["p_values"],
            "flagged_by": privacy["flagged_by"],
            "memorises": privacy["memorises"],
            "classes_flagged": [c for c, r in privacy["per_class"].items() if r.get("memorises")],
            "pixel_distance_median": {k: v["p50"] for k, v in privacy["pixel_distance_percentiles"].items()},
        },
    }
    if fidelity is not None and floor is not None:
        syn, held = fidelity["overall"], floor["overall"]
        result["fidelity"] = {
            "features": fidelity["features"],
            "heldout_fid": held["fid"],
            "synthetic_fid": syn["fid"],
            "synthetic_fid_ci95": syn.get("ci95", {}).get("fid"),
            "fid_ratio": syn["fid"] / held["fid"] if held["fid"] else None,
            "heldout_precision": held["precision"],
            "synthetic_precision": syn["precision"],
            "heldout_recall": held["recall"],
            "synthetic_recall": syn["recall"],
            "heldout_coverage": held["coverage"],
            "synthetic_coverage": syn["coverage"],
        }
    return result


def line(row: dict) -> str:
    """One printed line per data set: baseline, candidate, ratio for each evaluation."""
    u, p = row["utility"], row["privacy"]
    c, low = u["conditions"], u["low_fraction"]

    def text(name: str) -> str:
        ci = c[name]["ci95"]
        return f"{c[name]['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    out = (
        f"{row['dataset']:24s} AUROC ({c['real']['steps']} steps each) real {text('real')} synth "
        f"{text('synthetic')} (x{u['synthetic_ratio']:.3f}) real+synth {text('real+synthetic')} real {low:g} "
        f"{text(f'real {low:g}')} + synth {text(f'real {low:g}+synthetic')} ({u['gain_at_low_fraction']:+.3f}) | "
        f"held-out near-copies {p['heldout_near_copies']['count']} ({p['heldout_near_copies']['share']:.1%}), "
        f"NN-sim median reference {p['reference_median_similarity']:.3f} synth {p['synthetic_median_similarity']:.3f}"
        f", >p95 {p['share_above_heldout_p95']:.1%} (p {p['p_values']['tail_p95']:.2g}), near-copies "
        f"{p['near_copy_rate']['synthetic']:.1%} (p {p['p_values']['near_copies']:.2g}), distribution p "
        f"{p['p_values']['distribution']:.2g}{' MEMORISES (' + ', '.join(p['flagged_by']) + ')' if p['memorises'] else ''}"
    )
    if "fidelity" in row:
        f = row["fidelity"]
        out += f" | FID held-out {f['heldout_fid']:.3g} synth {f['synthetic_fid']:.3g}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma list of data sets")
    parser.add_argument("--per-class", type=int, default=100, help="synthetic images per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1")
    parser.add_argument("--epochs", type=int, default=25, help="classifier (and cnn feature) training epochs")
    parser.add_argument("--budget", default="steps", help="steps (equal for every condition) or epochs")
    parser.add_argument(
        "--classifier-steps",
        type=int,
        default=None,
        help="optimiser steps of every condition (default: --epochs over the largest condition)",
    )
    parser.add_argument("--size", type=int, default=32, help="classifier input size (px), as utility_mini.py")
    parser.add_argument(
        "--features", default="cnn", help="fidelity features (cnn, pixel, inception:FILE, ...)"
    )
    parser.add_argument("--skip-fidelity", action="store_true", help="utility and privacy only")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of the synthetic images")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "runs" / "evaluate_mini",
        help="synthetic images and evaluate outputs",
    )
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "evaluate_mini")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other data sets' rows already in --results/results.json (same arguments)",
    )
    parser.add_argument(
        "--leakage-only",
        action="store_true",
        help="only `evaluate leakage` of each set's hold-out vs its training images (no generation)",
    )
    args = parser.parse_args()

    import torch

    from medisyn_cli.evaluate.utility import parse_fractions
    from medisyn_cli.pipeline.load import BUNDLED_MODEL

    torch.set_num_threads(args.threads)
    args.fractions = parse_fractions(args.fractions)
    model_dir = Path(args.model) if args.model else BUNDLED_MODEL
    args.results.mkdir(parents=True, exist_ok=True)
    if args.leakage_only:
        return leakage_main(args, model_dir)
    rows = kept_rows(args) if args.merge else []
    lines = [line(row) for row in rows]
    for dataset in args.sets.split(","):
        started = time.time()
        row = evaluate_set(dataset, args, model_dir)
        row["seconds"] = round(time.time() - started, 1)
        row["args"] = {k: str(v) for k, v in vars(args).items()}
        rows.append(row)
        lines.append(line(row))
        print(lines[-1], flush=True)
        (args.results / "results.json").write_text(
            json.dumps(  # after every set: a stopped run keeps its sets
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": rows}, indent=2, default=str
            )
        )
        (args.results / "output.txt").write_text("\n".join(lines) + "\n")


def kept_rows(args) -> list[dict]:
    """With --merge: rows of other data sets from an earlier run into the same --results, if its arguments other
    than --sets, --merge and --threads were the same (else an error: the rows would not be comparable)."""
    path = args.results / "results.json"
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    ignore = {"sets", "merge", "threads"}
    now = {k: str(v) for k, v in vars(args).items() if k not in ignore}
    if {k: v for k, v in earlier["args"].items() if k not in ignore} != now:
        raise SystemExit(
            f"--merge: {path} was made with other arguments; run without --merge or with the same"
        )
    return [row for row in earlier["results"] if row["dataset"] not in args.sets.split(",")]


def leakage_main(args, model_dir: Path) -> None:
    """The leakage audit of every set: results/leakage/<set>/ and results/leakage.{json,txt}."""
    rows = [leakage_set(dataset, args, model_dir) for dataset in args.sets.split(",")]
    lines = [leakage_line(row) for row in rows]
    print("\n".join(lines), flush=True)
    (args.results / "leakage.json").write_text(json.dumps({"results": rows}, indent=2, default=str))
    (args.results / "leakage.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
