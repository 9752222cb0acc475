"""`medisyn evaluate alignment`: do synthetic images show their class? GAN-test accuracy (Shmelkov et al.
2018).

A judge trained on real images (`--judge`, or built here from `--real-train`) classifies every synthetic
image. Per class: the share classified as its own class (GAN-test accuracy), the share whose own-label score
reaches --min-label-score (what `generate --judge` would keep), the mean score and the row of the confusion
matrix. The judge's accuracy on real held-out images is the ceiling: synthetic images cannot be recognised
more reliably than real ones. Written to OUT (default SYNTHETIC/evaluate): alignment.json (last),
alignment.csv (per class), confusion.csv and alignment_images.csv (per image: key, label, judged label,
score).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.imagesets import ImageSet, iter_batches, open_sources
from medisyn_cli.core.progress import reporting
from medisyn_cli.core.results import claim_results_folder, default_out, write_csv, write_json
from medisyn_cli.dataset.card import write_run_card
from medisyn_cli.judge.build import JudgeConfig, build_judge
from medisyn_cli.judge.metrics import confusion
from medisyn_cli.judge.model import load_judge


@dataclass(frozen=True)
class AlignmentConfig:
    """Options of `medisyn evaluate alignment`."""

    synthetic: tuple[str, ...] = field(
        metadata={
            "help": "Synthetic labelled images (a medisyn output, ImageFolder, Parquet or label folders)."
        }
    )
    judge: str | None = field(default=None, metadata={"help": "Judge folder (medisyn judge build)."})
    real_train: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Instead of --judge: real labelled images to build a default judge from (into OUT/judge)."
        },
    )
    out: str | None = field(
        default=None, metadata={"help": "Folder for alignment.json/.csv (default SYNTHETIC/evaluate)."}
    )
    min_label_score: float = field(
        default=0.5, metadata={"help": "Score counted as 'recognised' (what generate --judge keeps)."}
    )
    batch_size: int = 128


def _judge_of(config: AlignmentConfig, out: Path):
    """The judge given, or a default knn judge built from --real-train into OUT/judge."""
    if (config.judge is None) == (not config.real_train):
        raise MedisynError(
            "give exactly one of --judge (a judge folder) or --real-train (real labelled images)"
        )
    if config.judge is not None:
        return load_judge(config.judge)
    claim_results_folder(out)  # OUT is evaluate's before the judge is built inside it
    build_judge(JudgeConfig(real=tuple(config.real_train), out=str(out / "judge"), overwrite=True))
    return load_judge(out / "judge")


def _score(config: AlignmentConfig, judge) -> tuple[list[str], list[str | None], np.ndarray, list[dict]]:
    """Keys, labels and judge probabilities of every readable synthetic image; unreadable ones listed."""
    image_set, chunks = ImageSet("synthetic"), []
    sources = open_sources(config.synthetic, "--synthetic")
    for _, images in iter_batches(sources, config.batch_size, image_set):
        chunks.append(judge.scores(images))
    if not chunks:
        raise MedisynError(f"--synthetic {', '.join(config.synthetic)}: no readable images")
    unknown = sorted({str(label) for label in image_set.labels if label not in judge.classes})
    if unknown:
        raise MedisynError(
            f"--synthetic: label(s) {', '.join(unknown[:6])} are not classes of the judge "
            f"({', '.join(judge.classes)})"
        )
    return image_set.keys, image_set.labels, np.concatenate(chunks), image_set.skipped


def run_alignment(config: AlignmentConfig, show_progress: bool = True) -> dict:
    """GAN-test accuracy per class and the confusion matrix of synthetic images; results written under OUT."""
    with reporting(show_progress):
        return _run_alignment(config)


def _run_alignment(config: AlignmentConfig) -> dict:
    clock = time.time()
    if not 0.0 <= config.min_label_score <= 1.0:
        raise MedisynError(f"--min-label-score: {config.min_label_score} is outside [0, 1]")
    out = Path(config.out) if config.out else default_out(config.synthetic[0] if config.synthetic else None)
    judge = _judge_of(config, out)
    keys, labels, probs, skipped = _score(config, judge)
    truth = np.array([judge.classes.index(label) for label in labels])
    predicted, own = probs.argmax(1), probs[np.arange(len(truth)), truth]
    ceiling = judge.meta.get("per_class", {})
    per_class = []
    for c, name in enumerate(judge.classes):
        mine = truth == c
        if not mine.any():
            continue
        per_class.append(
            {
                "label": name,
                "images": int(mine.sum()),
                "gan_test_accuracy": round(float(np.mean(predicted[mine] == c)), 4),
                "recognised_share": round(float(np.mean(own[mine] >= config.min_label_score)), 4),
                "mean_label_score": round(float(own[mine].mean()), 4),
                "real_heldout_accuracy": (ceiling.get(name) or {}).get("accuracy"),
            }
        )
    result = {
        "evaluation": "alignment",
        "synthetic": list(config.synthetic),
        "judge": str(judge.path),
        "judge_fingerprint": judge.fingerprint,
        "classifier": judge.classifier,
        "images": len(keys),
        "skipped": skipped,
        "min_label_score": config.min_label_score,
        "gan_test_accuracy": round(float(np.mean(predicted == truth)), 4),
        "gan_test_balanced_accuracy": round(float(np.mean([r["gan_test_accuracy"] for r in per_class])), 4),
        "recognised_share": round(float(np.mean(own >= config.min_label_score)), 4),
        "ceiling_real_heldout_accuracy": judge.meta.get("heldout_accuracy"),
        "per_class": per_class,
        "classes": judge.classes,
        "confusion": confusion(truth, predicted, len(judge.classes)),
        "seconds": round(time.time() - clock, 1),
    }
    write_csv(out / "alignment.csv", per_class)
    write_csv(
        out / "confusion.csv",
        [
            {"label": name, **{f"judged {other}": n for other, n in zip(judge.classes, row, strict=True)}}
            for name, row in zip(judge.classes, result["confusion"], strict=True)
        ],
    )
    write_csv(
        out / "alignment_images.csv",
        [
            {
                "key": key,
                "label": label,
                "judged_label": judge.classes[p],
                "label_score": round(float(score), 4),
            }
            for key, label, p, score in zip(keys, labels, predicted, own, strict=True)
        ],
    )
    write_json(out / "alignment.json", result)
    result["out"] = str(out)
    result["card"] = _update_card(config.synthetic, result)
    return result


def _update_card(synthetic: tuple[str, ...], result: dict) -> str | None:
    """For one medisyn output folder: its dataset card rewritten with a 'Label alignment' section (run.json
    as is)."""
    import json

    folder = Path(synthetic[0]) if len(synthetic) == 1 else None
    if folder is None or not (folder / "run.json").is_file():
        return None
    run = json.loads((folder / "run.json").read_text())
    keep = (
        "judge",
        "classifier",
        "images",
        "min_label_score",
        "gan_test_accuracy",
        "ceiling_real_heldout_accuracy",
        "per_class",
    )
    return str(write_run_card(folder, {**run, "alignment": {k: result[k] for k in keep}}))
