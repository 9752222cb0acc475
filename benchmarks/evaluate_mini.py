"""`medisyn evaluate` on the bundled model: utility, privacy and fidelity per data set of ../shared/data.

For each data set: generate --per-class images per class with the bundled model (`medisyn generate`, the
mini_<x>.csv manifest), split the real images into the model's training images and its hold-out (holdout.csv,
images it never saw; see utility_mini.py real_split), then
- utility: the classifier trained on real (at each --fractions), synthetic, and real + synthetic images, macro
  AUROC on the hold-out. Baseline: real at fraction 1; candidates: synthetic only and real + synthetic.
- privacy: similarity of each synthetic and each hold-out image to its nearest training image (pixel embedder
  with views). Baseline: hold-out; candidate: synthetic; share above the hold-out 95th percentile (5% expected).
- fidelity: FID / precision / recall / density / coverage with --features (default cnn). Baseline: hold-out real
  images vs the training images (the floor a perfect generator reaches); candidate: synthetic vs training images.
Writes every evaluate output under WORK/<data set>/synthetic/evaluate/ (then `medisyn report` of that folder) and
the summary to --results (results.json, output.txt).

    python benchmarks/evaluate_mini.py --per-class 100 --seeds 3 --work runs/evaluate_mini
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
    train, heldout = split_folder(train_rows, work / "real_train"), split_folder(test_rows, work / "real_heldout")
    result = run_leakage(LeakageConfig((str(train),), (str(heldout),), examples=5,
                                       out=str(args.results / "leakage" / dataset)))
    return {"dataset": dataset, "train": result["images"]["train"], "test": result["images"]["test"],
            "near_copies": result["count"], "share": result["share"], "threshold": result["threshold"],
            "per_class": result["per_class"], "examples": result["examples"]}


def leakage_line(row: dict) -> str:
    """One printed line per data set: near-copies of training images among its test images, per class."""
    classes = ", ".join(f"{label} {r['near_copies']}/{r['images']}" for label, r in row["per_class"].items())
    return (f"{row['dataset']:24s} {row['near_copies']:4d} of {row['test']:4d} test images ({row['share']:.1%}) are "
            f"near-copies of the {row['train']} training images (>= {row['threshold']:g}): {classes}")


def evaluate_set(dataset: str, args, model_dir: Path) -> dict:
    """Generate, split and run the three evaluations for one data set; returns its summary row."""
    from medisyn_cli.evaluate import (FidelityConfig, PrivacyConfig, UtilityConfig, run_fidelity, run_privacy,
                                      run_utility, write_report)

    work = args.work / dataset
    train_rows, test_rows = real_split(dataset, model_dir)
    train, heldout = split_folder(train_rows, work / "real_train"), split_folder(test_rows, work / "real_heldout")
    synth_dir = work / "synthetic"
    synthetic(REPO / "prompts" / f"{SETS[dataset]}.csv", args.per_class, synth_dir, args.model, args.steps,
              args.guidance)
    out = synth_dir / "evaluate"
    utility = run_utility(UtilityConfig((str(train),), (str(heldout),), (str(synth_dir),), args.fractions,
                                        seeds=args.seeds, epochs=args.epochs, size=args.size, out=str(out)))
    privacy = run_privacy(PrivacyConfig((str(train),), (str(heldout),), (str(synth_dir),), out=str(out)))
    fidelity = run_fidelity(FidelityConfig((str(train),), (str(synth_dir),), args.features, per_class=True,
                                           cnn_epochs=args.epochs, out=str(out)))
    floor = run_fidelity(FidelityConfig((str(train),), (str(heldout),), args.features, per_class=True,
                                        cnn_epochs=args.epochs, out=str(out / "baseline_heldout")))
    write_report(synth_dir)
    return summary_row(dataset, utility, privacy, fidelity, floor)


def summary_row(dataset: str, utility: dict, privacy: dict, fidelity: dict, floor: dict) -> dict:
    """Baseline, candidate and ratio of each evaluation."""
    rows = {(r["condition"], r["real_fraction"]): r for r in utility["rows"]}
    real = rows[("real", max(f for c, f in rows if c == "real"))]
    combined = rows[("real+synthetic", real["real_fraction"])]
    syn, held = fidelity["overall"], floor["overall"]
    return {
        "dataset": dataset, "classes": len(utility["classes"]), "images": utility["images"],
        "utility": {"real_auroc": real["auroc_mean"], "real_std": real["auroc_std"],
                    "synthetic_auroc": rows[("synthetic", None)]["auroc_mean"],
                    "synthetic_std": rows[("synthetic", None)]["auroc_std"],
                    "real_plus_synthetic_auroc": combined["auroc_mean"],
                    "synthetic_ratio": rows[("synthetic", None)]["auroc_mean"] / real["auroc_mean"]},
        "privacy": {"heldout_median_similarity": privacy["percentiles"]["heldout"]["p50"],
                    "synthetic_median_similarity": privacy["percentiles"]["synthetic"]["p50"],
                    "share_above_heldout_p95": privacy["share_above_heldout_p95"],
                    "share_ratio": privacy["share_ratio"], "near_copy_rate": privacy["near_copy_rate"],
                    "memorises": privacy["memorises"]},
        "fidelity": {"features": fidelity["features"], "heldout_fid": held["fid"], "synthetic_fid": syn["fid"],
                     "fid_ratio": syn["fid"] / held["fid"] if held["fid"] else None,
                     "heldout_precision": held["precision"], "synthetic_precision": syn["precision"],
                     "heldout_recall": held["recall"], "synthetic_recall": syn["recall"],
                     "heldout_coverage": held["coverage"], "synthetic_coverage": syn["coverage"]},
    }


def line(row: dict) -> str:
    """One printed line per data set: baseline, candidate, ratio for each evaluation."""
    u, p, f = row["utility"], row["privacy"], row["fidelity"]
    ratio = "-" if f["fid_ratio"] is None else f"{f['fid_ratio']:.2f}"
    return (f"{row['dataset']:24s} AUROC real {u['real_auroc']:.3f} synth {u['synthetic_auroc']:.3f} "
            f"(x{u['synthetic_ratio']:.3f}) real+synth {u['real_plus_synthetic_auroc']:.3f} | "
            f"NN-sim median held-out {p['heldout_median_similarity']:.3f} synth {p['synthetic_median_similarity']:.3f}"
            f", >p95 {p['share_above_heldout_p95']:.1%} (x{p['share_ratio']:.1f})"
            f"{' MEMORISES' if p['memorises'] else ''}"
            f" | FID held-out {f['heldout_fid']:.3g} synth {f['synthetic_fid']:.3g} (x{ratio})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma list of data sets")
    parser.add_argument("--per-class", type=int, default=100, help="synthetic images per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1")
    parser.add_argument("--epochs", type=int, default=25, help="classifier (and cnn feature) training epochs")
    parser.add_argument("--size", type=int, default=32, help="classifier input size (px), as utility_mini.py")
    parser.add_argument("--features", default="cnn", help="fidelity features (cnn, pixel, inception:FILE, ...)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "evaluate_mini",
                        help="synthetic images and evaluate outputs")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "evaluate_mini")
    parser.add_argument("--leakage-only", action="store_true",
                        help="only `evaluate leakage` of each set's hold-out vs its training images (no generation)")
    args = parser.parse_args()

    import torch

    from medisyn_cli.evaluate.utility import parse_fractions
    from medisyn_cli.models import BUNDLED_MODEL

    torch.set_num_threads(args.threads)
    args.fractions = parse_fractions(args.fractions)
    model_dir = Path(args.model) if args.model else BUNDLED_MODEL
    if args.leakage_only:
        return leakage_main(args, model_dir)
    rows, lines = [], []
    for dataset in args.sets.split(","):
        started = time.time()
        row = evaluate_set(dataset, args, model_dir)
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        lines.append(line(row))
        print(lines[-1], flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "results": rows}, indent=2, default=str))
    (args.results / "output.txt").write_text("\n".join(lines) + "\n")


def leakage_main(args, model_dir: Path) -> None:
    """The leakage audit of every set: results/leakage/<set>/ and results/leakage.{json,txt}."""
    rows = [leakage_set(dataset, args, model_dir) for dataset in args.sets.split(",")]
    lines = [leakage_line(row) for row in rows]
    print("\n".join(lines), flush=True)
    (args.results / "leakage.json").write_text(json.dumps({"results": rows}, indent=2, default=str))
    (args.results / "leakage.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
