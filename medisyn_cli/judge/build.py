"""`medisyn judge build`: train a label classifier on real labelled images, measure it on held-out images, save it.

The images are split per class by a hash of their key (deterministic, independent of order): `holdout` of each
class (at least one image when the class has two or more) is held out. The saved judge is the one trained on the
rest, so the accuracy and calibration in judge.json are those of the judge `generate --judge` uses.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from medisyn_cli.core.datasets import Record, iter_images, read_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import write_json
from medisyn_cli.core.ownership import (
    Owned,
    claim,
    refuse_foreign,
    remove_temp,
    replace_in_place,
)
from medisyn_cli.core.progress import Task, current, reporting
from medisyn_cli.judge.classifier import TrainSettings, predict, train_classifier
from medisyn_cli.judge.features import feature_names, get_features
from medisyn_cli.judge.metrics import calibration, confusion, pass_rates
from medisyn_cli.judge.model import (
    CLASSIFIERS,
    JUDGE_FILE,
    VERSION,
    cnn_arrays,
    embed_images,
    fit_linear,
    knn_scores,
    linear_scores,
    model_file,
)
from medisyn_cli.pipeline.load import file_sha256


@dataclass(frozen=True)
class JudgeConfig:
    """Options of `medisyn judge build` (defaults shared by the CLI and the API)."""

    real: tuple[str, ...] = field(
        metadata={
            "help": "Real labelled images: label folders, ImageFolders with metadata.csv, Parquet (the inputs "
            "of `index build`)."
        }
    )
    out: str = field(metadata={"help": "Judge folder to write (judge.json + weights)."})
    classifier: str = field(
        default="knn",
        metadata={
            "help": "knn | linear | cnn (the evaluations' small CNN at 32 px, trained for --steps: the slowest "
            "to build on CPU)."
        },
    )
    embedder: str = field(
        default="thumb",
        metadata={  # features.py; cnn: its own
            "help": f"Features of knn / linear: {', '.join(feature_names())} (default thumb)."
        },
    )
    holdout: float = field(
        default=0.2, metadata={"help": "Share of each class held out to measure accuracy and calibration."}
    )
    k: int = field(
        default=10,
        metadata={  # at most the smallest class's training images
            "help": "Neighbours of the knn judge."
        },
    )
    steps: int = field(
        default=600,
        metadata={  # 32 px
            "help": "Optimiser steps of the cnn judge (batch 64)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the cnn's training."})
    max_per_class: int | None = field(
        default=None, metadata={"help": "Use at most this many images a class."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing judge folder."})


def check_config(config: JudgeConfig) -> None:
    """One-line errors for bad options, before any image is read."""
    if config.classifier not in CLASSIFIERS:
        raise MedisynError(
            f"--classifier: unknown classifier '{config.classifier}' (valid: {', '.join(CLASSIFIERS)})"
        )
    if not 0.0 < config.holdout < 1.0:
        raise MedisynError(
            f"--holdout: must be between 0 and 1 (a share of each class), got {config.holdout}"
        )
    for name in ("k", "steps"):
        if getattr(config, name) < 1:
            raise MedisynError(f"--{name}: must be at least 1, got {getattr(config, name)}")
    if config.max_per_class is not None and config.max_per_class < 2:
        raise MedisynError(f"--max-per-class: must be at least 2, got {config.max_per_class}")
    out = Path(config.out)
    refuse_foreign(out, "judge build", _legacy_judge_files)
    _check_replace(out, config.overwrite)
    if config.classifier != "cnn":
        if get_features(config.embedder).binary:
            raise MedisynError(
                f"--embedder {config.embedder}: a hash has no vector space for a classifier; use "
                f"pixel, clip:<model> or hf:<model>"
            )


def split(
    records: list[Record], holdout: float, max_per_class: int | None = None
) -> tuple[list[int], list[int]]:
    """(train, held-out) positions: per class in key-hash order, `holdout` of it held out (at least 1 of 2+)."""
    by_class: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_class.setdefault(record.label, []).append(i)
    train, held = [], []
    for _label, members in sorted(by_class.items()):
        members.sort(key=lambda i: hashlib.sha1(records[i].key.encode()).hexdigest())
        members = members[:max_per_class] if max_per_class else members
        n_held = min(len(members) - 1, max(1, round(holdout * len(members)))) if len(members) > 1 else 0
        held += members[:n_held]
        train += members[n_held:]
    return sorted(train), sorted(held)


def read_labelled(paths: tuple[str, ...]) -> tuple[list[Record], list, list[dict]]:
    """Labelled, readable records and their images; unreadable files listed, unlabelled ones refused."""
    records, images, skipped = [], [], []
    listed = read_records(list(paths))
    task = Task(current(), "judge: reading images", len(listed))
    for record, image, error in iter_images(listed):
        task.advance(1)
        if record.label is None:
            raise MedisynError(
                f"{record.key}: no label (the judge learns from labelled images: label folders, "
                f"metadata.csv with a label column or Parquet with a label column)"
            )
        if error:
            skipped.append({"key": record.key, "reason": error[:300]})
            continue
        records.append(record)
        images.append(image)
    labels = sorted({r.label for r in records})
    if len(labels) < 2:
        raise MedisynError(
            f"{', '.join(paths)}: {len(records)} readable images of {len(labels)} class(es); the judge "
            f"needs at least two classes"
        )
    return records, images, skipped


def build_judge(config: JudgeConfig, show_progress: bool = True) -> dict:
    """Train, measure and save a judge (see module docstring); returns judge.json's content."""
    with reporting(show_progress):
        return _build_judge(config)


def _build_judge(config: JudgeConfig) -> dict:
    clock = time.time()
    # 1. check options, read the images and split them
    check_config(config)
    records, images, skipped = read_labelled(config.real)
    classes = sorted({r.label for r in records})
    y = np.array([classes.index(r.label) for r in records], np.int64)
    train, held = split(records, config.holdout, config.max_per_class)
    config = replace(config, k=min(config.k, int(np.bincount(y[train], minlength=len(classes)).min()) or 1))
    if not held:
        raise MedisynError(
            f"{', '.join(config.real)}: no class has two images, so nothing can be held out to "
            f"measure the judge"
        )
    # 2. train on the training part, score the held-out part
    with claim(config.out, "judge build", fallback=_legacy_judge_files, adopt=True) as owner:
        _check_replace(owner.path, config.overwrite)  # again under the lock
        owner.check_free([JUDGE_FILE, model_file(config.classifier)])
        return _train_and_save(config, owner, records, images, skipped, classes, y, train, held, clock)


def _legacy_judge_files(folder: Path) -> set[str]:
    """The files an older `judge build` wrote (a folder with judge.json and no record of its files)."""
    names = {JUDGE_FILE, model_file("cnn"), model_file("knn")}
    return {n for n in names if (folder / n).is_file()} if (folder / JUDGE_FILE).is_file() else set()


def _check_replace(out: Path, overwrite: bool) -> None:
    if (out / JUDGE_FILE).is_file() and not overwrite:
        raise MedisynError(
            f"--out {out}: holds a judge; add --overwrite to replace it (the old one is kept until the new one "
            f"is complete), or choose another --out"
        )


def _train_and_save(config, owner: Owned, records, images, skipped, classes, y, train, held, clock) -> dict:
    """Fit and measure the judge in a temp folder of this run, then publish it over the old one."""
    staging = owner.temp("new")
    staging.mkdir()
    try:
        features, probs = _fit(
            config,
            [images[i] for i in train],
            y[train],
            [images[i] for i in held],
            len(classes),
            staging / model_file(config.classifier),
        )
        # 3. measure and record: accuracy, per-class, calibration, pass rates of the label score
        meta = _record(
            config,
            classes,
            records,
            y,
            train,
            held,
            probs,
            features,
            skipped,
            file_sha256(staging / model_file(config.classifier)),
            time.time() - clock,
        )
        write_json(staging / JUDGE_FILE, meta)
        replace_in_place(owner, staging, sorted(p.name for p in staging.iterdir() if p.is_file()))
    finally:
        remove_temp(staging)
    return meta


def _fit(
    config: JudgeConfig,
    train_images: list,
    train_y: np.ndarray,
    held_images: list,
    classes: int,
    weights: Path,
) -> tuple[dict, np.ndarray]:
    """Fit the classifier, save its weights to `weights`; returns (features record, held-out probabilities)."""
    if config.classifier == "cnn":
        import torch

        device = torch.device("cpu")
        settings = TrainSettings(arch="small-cnn", steps=config.steps, batch_size=64, lr=2e-3)
        task = Task(current(), "judge: training the cnn", config.steps, "step")
        network = train_classifier(
            cnn_arrays(train_images),
            train_y,
            classes,
            settings,
            config.seed,
            device,
            lambda *_: task.advance(1),
        )
        torch.save(network.state_dict(), weights)
        features = {
            "network": "small-cnn (medisyn_cli.judge.classifier)",
            "size": 32,
            "steps": config.steps,
        }
        return features, predict(network, cnn_arrays(held_images), device, False)
    embedder = get_features(config.embedder)
    x, x_held = embed_images(embedder, train_images), embed_images(embedder, held_images)
    features = {"embedder": config.embedder, "embedder_settings": embedder.settings(), "dim": int(x.shape[1])}
    if config.classifier == "knn":
        np.savez(weights, vectors=x, labels=train_y)
        return features, knn_scores(x, train_y, x_held, classes, config.k)
    arrays = fit_linear(x, train_y, classes)
    np.savez(weights, **arrays)
    return features, linear_scores(arrays, x_held)


def _record(
    config: JudgeConfig,
    classes: list[str],
    records: list[Record],
    y: np.ndarray,
    train: list[int],
    held: list[int],
    probs: np.ndarray,
    features: dict,
    skipped: list[dict],
    fingerprint: str,
    seconds: float,
) -> dict:
    truth = y[held]
    predicted = probs.argmax(1)
    own = probs[np.arange(len(held)), truth]
    per_class = {
        name: {
            "train": int(np.sum(y[train] == c)),
            "heldout": int(np.sum(truth == c)),
            "accuracy": float(np.mean(predicted[truth == c] == c)) if np.any(truth == c) else None,
        }
        for c, name in enumerate(classes)
    }
    return {
        "kind": "medisyn-judge",
        "version": VERSION,
        "classifier": config.classifier,
        "classes": classes,
        "features": features,
        "settings": {
            "k": config.k,
            "steps": config.steps,
            "seed": config.seed,
            "holdout": config.holdout,
            "max_per_class": config.max_per_class,
        },
        "sources": [str(Path(p).resolve()) for p in config.real],
        "images": len(records),
        "train": len(train),
        "heldout": len(held),
        "skipped": skipped,
        "heldout_accuracy": float(np.mean(predicted == truth)),
        "heldout_balanced_accuracy": float(
            np.mean([v["accuracy"] for v in per_class.values() if v["accuracy"] is not None])
        ),
        "per_class": per_class,
        "confusion": confusion(truth, predicted, len(classes)),
        "calibration": calibration(probs, truth),
        "label_score_pass_rate": pass_rates(own),
        "fingerprint": fingerprint,
        "model_file": model_file(config.classifier),
        "config": asdict(config),
        "seconds": round(seconds, 1),
    }
