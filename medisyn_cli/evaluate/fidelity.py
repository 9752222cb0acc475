"""Fidelity and diversity: FID, KID, precision/recall, density/coverage, within-class diversity.

Every number depends on the feature extractor, and numbers from different extractors are not comparable
(the extractor is named in every table and in the JSON `features` field). `--features`:

    cnn            default, offline: penultimate layer (128-d) of the small CNN trained on the real set's labels
                   (seed 0, 64 px, 15 epochs); meaningful for telling classes apart, not a standard FID
    inception:FILE the standard FID network from a local file (pytorch-fid's pt_inception-2015-12-05 weights,
                   or torchvision's inception_v3_google) with TF-compatible preprocessing; the only choice whose
                   FID compares with papers (equal to torch-fidelity's on the same weights)
    pixel          medisyn's pixel embedder (band-passed grey 32x32 thumbnails, L2-normalised); no weights
    clip:<model>   open_clip image tower; hf:<model> a transformers vision encoder (see medisyn_cli.screening.embed); raw,
                   unnormalised features (as torch-fidelity's CLIP / DINOv2 FD), not screening's unit vectors
    any other      a registered embedder (plug-ins too): its `Embedder.features`; hashes (phash) are refused

Every FID and precision/recall/density/coverage comes with a 95% bootstrap interval (`bootstrap` rounds), and a
warning where a side has fewer than SMALL_N images: FID is biased upward at small n, so compare FIDs only at
equal n.

Features are computed in batches; only the features are kept (the `cnn` extractor holds the real set at 64 px
in memory to train on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import to_rgb_array
from medisyn_cli.core.imagesets import (
    ImageSet,
    iter_batches,
    label_vocabulary,
    load_arrays,
    open_sources,
    require_labels,
    targets,
)
from medisyn_cli.core.progress import Task, current, reporting
from medisyn_cli.core.results import default_out, write_csv, write_json
from medisyn_cli.evaluate.inception import inception_features, load_inception
from medisyn_cli.evaluate.metrics import bootstrap_intervals, diversity, fid, kid, prdc
from medisyn_cli.judge.classifier import TrainSettings, features, train_classifier
from medisyn_cli.pipeline.load import resolve_device
from medisyn_cli.screening.embed import embedder_names, find_embedder, get_embedder

NOT_COMPARABLE = "numbers computed with different features are not comparable"
SMALL_N = 500


@dataclass(frozen=True)
class FidelityConfig:
    """Options of `medisyn evaluate fidelity`."""

    real: tuple[str, ...] = field(
        metadata={
            "help": "Real images: image folder (labels from folder names), ImageFolder with metadata.csv, "
            "Parquet, or medisyn output."
        }
    )
    synthetic: tuple[str, ...] = field(metadata={"help": "Synthetic images."})
    features: str = field(
        default="cnn",
        metadata={
            "help": "cnn (default: small CNN trained on the real labels), inception:FILE, or an embedder: "
            f"{', '.join(embedder_names())} (its features: raw for clip: / hf:)."
        },
    )
    per_class: bool = field(default=False, metadata={"help": "Also FID/KID/PRDC per class."})
    k: int = field(default=5, metadata={"help": "Nearest neighbours for precision/recall/density/coverage."})
    kid_subsets: int = field(default=100, metadata={"help": "Random subsets the KID is averaged over."})
    kid_subset_size: int = field(
        default=1000, metadata={"help": "Images per KID subset (at most the smaller set)."}
    )
    cnn_epochs: int = field(default=15, metadata={"help": "Training epochs of the cnn feature extractor."})
    batch_size: int = field(
        default=64, metadata={"help": "Images per batch (feature extraction and the cnn's training)."}
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, mps."})
    out: str | None = field(default=None, metadata={"help": "Folder for fidelity.json/.csv."})
    bootstrap: int = field(default=100, metadata={"help": "Rounds of the 95% bootstrap intervals (0: none)."})


@dataclass
class Extractor:
    """A feature extractor: its description (for tables and JSON) and PIL images -> (N, d) float32."""

    name: str
    embed: Callable[[list], np.ndarray]


OWN = ("cnn", "inception:FILE")  # fidelity's own extractors, layered on the embedder registry


def feature_names() -> tuple[str, ...]:
    """Every --features value: cnn, inception:FILE, then the registered embedders (hashes are refused on use)."""
    return OWN + embedder_names()


def make_extractor(spec: str, real_sources: list, config: FidelityConfig, device) -> Extractor:
    """The extractor named by `spec`: cnn, inception:FILE, or a registered embedder's `features`."""
    spec = spec.strip()
    if spec == "cnn":
        return _cnn_extractor(real_sources, config, device)
    if spec.startswith("inception:"):
        model, variant = load_inception(spec[len("inception:") :], device)
        return Extractor(
            f"{spec} ({variant} Inception v3 pool3, 2048-d)",
            lambda images: inception_features(model, images, device),
        )
    if find_embedder(spec) is None:
        raise MedisynError(f"--features: unknown extractor '{spec}' (valid: {', '.join(feature_names())})")
    embedder = get_embedder(spec)
    if embedder.binary:
        raise MedisynError(
            f"--features {spec}: binary hashes have no mean or covariance; use cnn, inception:FILE or a "
            f"real-valued embedder"
        )
    kind = "L2-normalised" if embedder.features_normalised else "raw features, not normalised"
    return Extractor(f"{embedder.name} ({embedder.dim}-d, {kind})", embedder.features)


def _cnn_extractor(real_sources: list, config: FidelityConfig, device) -> Extractor:
    """Penultimate features of the small CNN trained on the real set's labels."""
    size = 64
    x, real = load_arrays(real_sources, size, "--real")
    require_labels(real, False)
    classes = label_vocabulary(real, False)
    if len(classes) < 2:
        raise MedisynError(
            f"--features cnn: the real set has one class ({', '.join(classes)}); the CNN needs two "
            f"or more to learn features; use --features pixel or inception:FILE"
        )
    settings = TrainSettings("small-cnn", config.cnn_epochs, config.batch_size)
    task = Task(current(), "fidelity: training the cnn features", settings.steps_for(len(x)), "step")
    model = train_classifier(
        x, targets(real, classes, False), len(classes), settings, 0, device, lambda *_: task.advance(1)
    )
    del x
    name = (
        f"cnn (small CNN penultimate layer, 128-d, trained on the real set: {len(real)} images, "
        f"{len(classes)} classes, {config.cnn_epochs} epochs, {size} px, seed 0)"
    )
    return Extractor(
        name, lambda images: features(model, np.stack([to_rgb_array(i, size) for i in images]), device)
    )


def extract(sources: list, extractor: Extractor, name: str, batch_size: int) -> tuple[np.ndarray, ImageSet]:
    """Features of every readable image of a set, batch by batch, with the set's keys and labels."""
    image_set, chunks = ImageSet(name), []
    for _, images in iter_batches(sources, batch_size, image_set):
        chunks.append(np.asarray(extractor.embed(images), dtype=np.float32))
    if not chunks:
        raise MedisynError(f"{name}: no readable images ({len(image_set.skipped)} unreadable)")
    return np.concatenate(chunks), image_set


def compare(
    real: np.ndarray, fake: np.ndarray, config: FidelityConfig, on_round: Callable[[], None] | None = None
) -> dict:
    """FID, KID and PRDC of two feature sets; metrics the sample sizes do not allow are None, with a note.
    `on_round()` after each bootstrap round (progress)."""
    row: dict = {"real_images": len(real), "synthetic_images": len(fake)}
    notes = []
    try:
        row["fid"] = fid(real, fake)
        row["kid"], row["kid_std"] = kid(real, fake, config.kid_subsets, config.kid_subset_size)
    except MedisynError as exc:
        row.update(fid=None, kid=None, kid_std=None)
        notes.append(str(exc))
    try:
        row.update(prdc(real, fake, config.k))
    except MedisynError as exc:
        row.update(precision=None, recall=None, density=None, coverage=None)
        notes.append(str(exc))
    row["ci95"] = bootstrap_intervals(real, fake, config.k, config.bootstrap, on_round=on_round)
    row["real_diversity"], row["synthetic_diversity"] = diversity(real), diversity(fake)
    if min(len(real), len(fake)) < SMALL_N:
        notes.append(
            f"{min(len(real), len(fake))} images on one side (< {SMALL_N}): FID is biased upward at "
            f"small n; compare FIDs only at equal n"
        )
    if notes:
        row["note"] = "; ".join(notes)
    return row


def run_fidelity(config: FidelityConfig, show_progress: bool = True) -> dict:
    """Extract features of both sets and compare them overall and per class; write fidelity.json / .csv."""
    with reporting(show_progress) as progress:
        return _run_fidelity(config, progress)


def _run_fidelity(config: FidelityConfig, progress) -> dict:
    # 1. inputs and extractor
    device = resolve_device(config.device)
    if config.k < 1:
        raise MedisynError("--k must be at least 1")
    real_sources, synthetic_sources = (
        open_sources(config.real, "--real"),
        open_sources(config.synthetic, "--synthetic"),
    )
    started = time.time()
    extractor = make_extractor(config.features, real_sources, config, device)
    # 2. features, batch by batch
    real, real_set = extract(real_sources, extractor, "--real", config.batch_size)
    fake, fake_set = extract(synthetic_sources, extractor, "--synthetic", config.batch_size)
    # 3. metrics: overall, per class, within-class diversity
    classes = sorted(
        {l for l in real_set.labels if l is not None} & {l for l in fake_set.labels if l is not None}
    )
    scopes = 1 + (len(classes) if config.per_class else 0)
    rounds = Task(progress, "fidelity: bootstrap FID", config.bootstrap * scopes, "round")
    overall = compare(real, fake, config, rounds.advance)
    per_class = {
        label: _class_row(real, real_set, fake, fake_set, label, config, rounds.advance) for label in classes
    }
    if classes:
        overall["real_diversity_within_class"] = _mean([r["real_diversity"] for r in per_class.values()])
        overall["synthetic_diversity_within_class"] = _mean(
            [r["synthetic_diversity"] for r in per_class.values()]
        )
    result = {
        "evaluation": "fidelity",
        "features": extractor.name,
        "features_spec": config.features,
        "note": NOT_COMPARABLE,
        "k": config.k,
        "overall": overall,
        "per_class": per_class,
        "unmatched_labels": sorted(
            ({l for l in real_set.labels + fake_set.labels if l is not None}) - set(classes)
        ),
        "skipped": {s.name: s.skipped for s in (real_set, fake_set) if s.skipped},
        "seconds": round(time.time() - started, 1),
        "config": asdict(config),
    }
    write_fidelity(result, Path(config.out) if config.out else default_out(config.synthetic[0]))
    return result


def _class_row(
    real: np.ndarray,
    real_set: ImageSet,
    fake: np.ndarray,
    fake_set: ImageSet,
    label: str,
    config: FidelityConfig,
    on_round: Callable[[], None] | None = None,
) -> dict:
    """Metrics of one class: full comparison with --per-class, else its diversity only."""
    r = real[np.array([l == label for l in real_set.labels])]
    f = fake[np.array([l == label for l in fake_set.labels])]
    if config.per_class:
        return compare(r, f, config, on_round)
    return {
        "real_images": len(r),
        "synthetic_images": len(f),
        "real_diversity": diversity(r),
        "synthetic_diversity": diversity(f),
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def _flat(row: dict) -> dict:
    """A metrics row with its ci95 dict as <metric>_ci95_low / _high columns."""
    flat = {k: v for k, v in row.items() if k != "ci95"}
    for name, (low, high) in row.get("ci95", {}).items():
        flat[f"{name}_ci95_low"], flat[f"{name}_ci95_high"] = low, high
    return flat


def write_fidelity(result: dict, out: Path) -> dict[str, Path]:
    """fidelity.json and fidelity.csv (one row overall, one per class) under `out`."""
    rows = [{"scope": "all", **_flat(result["overall"])}]
    rows += [{"scope": label, **_flat(row)} for label, row in result["per_class"].items()]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    rows = [{c: row.get(c) for c in columns} | {"features": result["features"]} for row in rows]
    files = {"json": out / "fidelity.json", "csv": out / "fidelity.csv"}
    write_csv(files["csv"], rows)
    write_json(files["json"], result | {"files": {k: p.name for k, p in files.items()}})
    return files
