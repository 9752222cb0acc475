"""Are the bundled model's images recognisably of their class?

For each data set of ../shared/data, train the product's classifier (`medisyn evaluate utility`'s small CNN
and training loop, imported from medisyn_cli.judge.classifier) on (a) synthetic images made by
`medisyn generate` with the bundled model and (b) as many real training images, then report macro AUROC on
real images the model never saw (its hold-out split, listed in the model's holdout.csv).

    python benchmarks/utility_mini.py --per-class 100 --seeds 3 --out benchmarks/results/utility_mini

Prints one row per data set: real AUROC (baseline), synthetic AUROC (candidate), their difference and ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = {
    "isic2017_dermoscopy": "mini_dermoscopy",
    "kermany_pediatric_cxr": "mini_chest_xray",
    "brain_tumor_mri": "mini_brain_mri",
    "busi_breast_ultrasound": "mini_breast_ultrasound",
    "mednist_radiology": "mini_radiology",
    "bccd_blood_smear": "mini_blood_smear",
}


def real_split(dataset: str, model: Path) -> tuple[list, list]:
    """(train, test) lists of (path, label): test is the model's hold-out of this data set."""
    held = {Path(row["key"]).parts[-3:] for row in csv.DictReader(open(model / "holdout.csv"))}
    folder = DATA / dataset
    rows = [(folder / r["file_name"], r["label"]) for r in csv.DictReader(open(folder / "metadata.csv"))]
    return [r for r in rows if r[0].parts[-3:] not in held], [r for r in rows if r[0].parts[-3:] in held]


def load(paths: list[Path], size: int) -> np.ndarray:
    """Images as uint8 (N, 3, size, size), as `medisyn evaluate utility` holds them."""
    from PIL import Image

    from medisyn_cli.core.images import to_rgb_array

    return np.stack([to_rgb_array(Image.open(p), size) for p in paths])


def train_and_score(x_train, y_train, x_test, y_test, classes: int, seed: int, epochs: int) -> float:
    """Train the product's classifier (`medisyn evaluate utility --arch small-cnn`: network and training loop)
    and return macro one-vs-rest AUROC on the test set."""
    import torch
    from sklearn.metrics import roc_auc_score

    from medisyn_cli.judge.classifier import TrainSettings, predict, train_classifier

    device = torch.device("cpu")
    settings = TrainSettings(arch="small-cnn", epochs=epochs, batch_size=64, lr=2e-3)
    model = train_classifier(x_train, y_train, classes, settings, seed, device)
    probs = predict(model, x_test, device, multi_label=False)
    if classes == 2:
        return float(roc_auc_score(y_test, probs[:, 1]))
    return float(roc_auc_score(y_test, probs, multi_class="ovr", average="macro"))


def synthetic(
    manifest: Path,
    per_class: int,
    out: Path,
    model: str | None,
    steps: int,
    guidance: float | None,
    seed: int = 0,
) -> list:
    """Generate per_class images per class with medisyn (or reuse those in OUT made with the same options);
    returns (path, label)."""
    from medisyn_cli.dataset.manifest import load_manifest
    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate

    wanted = {
        "n": per_class * len(load_manifest(manifest).labels),
        "model": model,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
    }
    run = out / "run.json"
    if not (
        run.exists() and all(json.loads(run.read_text())["options"].get(k) == v for k, v in wanted.items())
    ):
        run_generate(
            GenerateConfig(
                manifest=str(manifest),
                out=str(out),
                **wanted,
                batch_size=64,
                formats=("imagefolder",),
                overwrite=True,
            )
        )
    rows = csv.DictReader(open(out / "imagefolder" / "metadata.csv"))
    return [(out / "imagefolder" / r["file_name"], r["label"]) for r in rows]


def balanced_sample(rows: list, per_class: int, seed: int) -> list:
    """At most per_class rows of each label, chosen reproducibly."""
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({label for _, label in rows}):
        items = [r for r in rows if r[1] == label]
        out += [items[i] for i in rng.permutation(len(items))[:per_class]]
    return out


def comparison_grid(rows: list, path: Path) -> None:
    """One row per class: four real training images, then four synthetic ones."""
    from PIL import Image

    from medisyn_cli.core.images import image_grid

    images, labels = [], []
    for label, real, synth in rows:
        images += [Image.open(p).convert("RGB") for p in (real + synth)]
        labels.append(label)
    image_grid(
        images, rows=len(rows), path=path, labels=[f"{l}: real | synthetic" for l in labels], label_width=260
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--size", type=int, default=32, help="classifier input size (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sets", default=",".join(SETS), help="comma list of data sets")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--generate-seed", type=int, default=0, help="base seed of the synthetic images")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's recommended one")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "utility_mini")
    args = parser.parse_args()

    import torch

    from medisyn_cli.pipeline.load import BUNDLED_MODEL

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else BUNDLED_MODEL
    results, grid_rows = [], []
    for dataset, manifest in ((d, SETS[d]) for d in args.sets.split(",")):
        started = time.time()
        train_real, test = real_split(dataset, model_dir)
        synth = synthetic(
            REPO / "prompts" / f"{manifest}.csv",
            args.per_class,
            args.out / dataset,
            args.model,
            args.steps,
            args.guidance,
            args.generate_seed,
        )
        labels = sorted({label for _, label in test})
        index = {label: i for i, label in enumerate(labels)}
        x_test, y_test = load([p for p, _ in test], args.size), np.array([index[l] for _, l in test])
        scores = {"real": [], "synthetic": []}
        for seed in range(args.seeds):
            for name, rows in (
                ("real", balanced_sample(train_real, args.per_class, seed)),
                ("synthetic", synth),
            ):
                x = load([p for p, _ in rows], args.size)
                y = np.array([index[l] for _, l in rows])
                scores[name].append(train_and_score(x, y, x_test, y_test, len(labels), seed, args.epochs))
        row = {
            "dataset": dataset,
            "classes": len(labels),
            "test_images": len(test),
            "real_train_per_class": min(
                args.per_class, min(sum(1 for _, l in train_real if l == c) for c in labels)
            ),
            "synthetic_per_class": args.per_class,
            "real_auroc": float(np.mean(scores["real"])),
            "real_std": float(np.std(scores["real"])),
            "synthetic_auroc": float(np.mean(scores["synthetic"])),
            "synthetic_std": float(np.std(scores["synthetic"])),
            "seconds": round(time.time() - started, 1),
        }
        row["difference"] = row["synthetic_auroc"] - row["real_auroc"]
        row["ratio"] = row["synthetic_auroc"] / row["real_auroc"]
        results.append(row)
        grid_rows += [
            (
                label,
                [p for p, l in balanced_sample(train_real, 4, 0) if l == label],
                [p for p, l in synth if l == label][:4],
            )
            for label in labels
        ]
        print(
            f"{dataset:24s} real {row['real_auroc']:.3f}±{row['real_std']:.3f}  synthetic "
            f"{row['synthetic_auroc']:.3f}±{row['synthetic_std']:.3f}  diff {row['difference']:+.3f}  "
            f"ratio {row['ratio']:.3f}  ({row['test_images']} test images)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
    )
    comparison_grid(grid_rows, args.out / "real_vs_synthetic.png")
    mean_real = np.mean([r["real_auroc"] for r in results])
    mean_syn = np.mean([r["synthetic_auroc"] for r in results])
    print(f"{'mean':24s} real {mean_real:.3f}  synthetic {mean_syn:.3f}  diff {mean_syn - mean_real:+.3f}")


if __name__ == "__main__":
    main()
