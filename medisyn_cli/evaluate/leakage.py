"""Leakage audit: test images that are near-copies of training images, per class.

A classifier scored on test images that also sit (flipped, shifted, re-encoded) in its training set is scored
partly on memory, so utility numbers on a leaky split overstate generalisation; a held-out set that leaks makes
the privacy reference blind (see privacy.py). Each test image is screened against an exact in-memory index of
the training images with the `Screener` of `generate --index` (embedder default `pixel`, with views); near-copy
= similarity at or above the threshold. Writes leakage.json (last), leakage.csv (one row per test image) and
leakage_pairs.png (the closest test / training pairs).

    from medisyn_cli.evaluate.leakage import LeakageConfig, run_leakage
    result = run_leakage(LeakageConfig(train=("data/train",), test=("data/test",)), show_progress=False)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medisyn_cli.core.imagesets import open_sources
from medisyn_cli.core.progress import reporting
from medisyn_cli.core.results import write_csv, write_json
from medisyn_cli.evaluate.privacy import (
    closest_pairs_figure,
    near_copies,
    nearest,
    nearest_rows,
    training_index,
)
from medisyn_cli.screening.embed import embedder_names, get_embedder
from medisyn_cli.screening.screener import Screener


@dataclass(frozen=True)
class LeakageConfig:
    """Options of `medisyn evaluate leakage`."""

    train: tuple[str, ...] = field(
        metadata={
            "help": "Training images: image folder (labels from folder names), ImageFolder with metadata.csv, "
            "Parquet, or medisyn output."
        }
    )
    test: tuple[str, ...] = field(metadata={"help": "Test (or held-out) images to audit."})
    embedder: str = field(
        default="pixel", metadata={"help": f"Embedder (default pixel): {', '.join(embedder_names())}."}
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": "Near-copy similarity threshold (default: the embedder's calibrated one)."},
    )
    views: bool = field(default=True, metadata={"help": "Search flips, shifts and crops, as screening does."})
    pairs: int = field(default=16, metadata={"help": "Closest test / training pairs in leakage_pairs.png."})
    examples: int = 20
    batch_size: int = field(default=64, metadata={"help": "Images embedded at a time."})
    out: str = field(default="evaluate", metadata={"help": "Folder for leakage.json/.csv/_pairs.png."})


def run_leakage(config: LeakageConfig, show_progress: bool = True) -> dict:
    """Screen every test image against the training images; counts and shares per class, examples, files."""
    with reporting(show_progress):
        return _run_leakage(config)


def _run_leakage(config: LeakageConfig) -> dict:
    # 1. inputs, embedder, threshold
    train_sources, test_sources = (
        open_sources(config.train, "--real-train"),
        open_sources(config.test, "--real-test"),
    )
    embedder = get_embedder(config.embedder)
    threshold = embedder.valid_threshold(
        embedder.default_threshold if config.threshold is None else config.threshold
    )
    started = time.time()
    # 2. index of the training images, nearest training image of each test image
    train = training_index(train_sources, embedder, "--real-train", config.batch_size)
    found = nearest(
        test_sources,
        Screener(train.index, threshold, views=config.views),
        train,
        "--real-test",
        config.batch_size,
    )
    # 3. summary and files
    leaks = near_copies(found, train, threshold, config.examples)
    result = {
        "evaluation": "leakage",
        "embedder": embedder.name,
        "views": config.views,
        "images": {"train": len(train.image_set), "test": len(found.image_set)},
        **leaks,
        "skipped": {s.name: s.skipped for s in (train.image_set, found.image_set) if s.skipped},
        "seconds": round(time.time() - started, 1),
        "config": asdict(config),
    }
    out = Path(config.out)
    files = {"json": out / "leakage.json", "csv": out / "leakage.csv"}
    write_csv(files["csv"], nearest_rows(found, train.image_set, threshold))
    pairs = closest_pairs_figure(
        found, test_sources, train.image_set, train_sources, config.pairs, out / "leakage_pairs.png"
    )
    if pairs is not None:
        files["pairs"] = pairs
    write_json(files["json"], result | {"files": {k: p.name for k, p in files.items()}})
    return result
