"""Privacy / memorisation: distance to the closest training record (DCR) of synthetic vs held-out real images.

A model that memorises puts its images closer to its training images than fresh real images from the same
distribution are, duplicates and all. For each synthetic image and each held-out real image we find the nearest
training image with the same `Screener` that `generate --index` uses: the embedder (default `pixel`) under its
query views (flips, shifts, crops), so a flipped or shifted copy counts as close. Similarity is cosine
(1 = identical); DCR = 1 - similarity. Both sets go through the same views, so the comparison is fair. The
training images' keypoints are kept too (screening.verify), and an image whose candidate the keypoint verification
confirms -- a copy rotated, sheared, cropped, mirrored or pasted into another image, which the embedding does not
see as close -- counts at similarity 1.0, in every set alike (a held-out image verified against a training image
is a cross-split duplicate like any other).

Held-out images at or above the near-copy threshold are the data set's own cross-split duplicates: they are
reported (`heldout_near_copies`: count, share, examples; a warning above 5%) and kept in the reference, since a
fresh image from the same distribution has them at the same rate. A sample of `--train-reference` training
images, each screened against the other training images, adds the training set's own nearest-neighbour
distribution where it agrees with the held-out set (memorisation.py: the reference, the four tests, the
three-state verdict with its power, the membership-style ROC audit).

Near-copies among the synthetic images are reported on their own (`synthetic_near_copies`: count, share,
per class, highest similarity, every pair), a privacy finding whatever the statistics say.

privacy.json fields (besides the inputs): `memorises` true / false / null (undecidable at this sample size) and
`verdict` (one sentence); `power` (the near-copy test's power to flag 5% copies, `synthetic_images_needed`, the
smallest synthetic sample that would decide); `reference` (heldout or heldout+train_self, the agreement tests,
the self-reference's near-copy groups and design effect; `effective_reference_images`: the near-copy test's n);
`p_values` (tail_p95, near_copies, beyond_reference, distribution), `flagged_by`, `test_levels` (`test_level`:
the near-copy test's); `near_copy_rate`, `near_copy_count`, `beyond_reference` (synthetic images closer than
every held-out image), `heldout_max_similarity`; `percentiles` (synthetic, heldout, reference, train_self);
`membership_audit` (ROC, AUC with its DeLong interval, TPR at 1% / 10% FPR); `heldout_near_copies`,
`synthetic_near_copies` (count, share, highest similarity, per class, the pairs); `per_class` (the same tests).

Figure 4b of the MediSyn paper: each synthetic (and held-out) image's pixel-space normalised Euclidean distance
to its nearest training image (RMS difference of 64x64 RGB in [0, 1]; 0 = identical; the query under the view
that matched, so a flipped copy is compared unflipped), beside the embedding similarity. Training vectors and
64 px thumbnails are held in memory (12 KB an image).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import save_png, thumbnail, to_rgb_array
from medisyn_cli.core.imagesets import ImageSet, fetch_images, iter_batches, open_sources
from medisyn_cli.core.progress import reporting
from medisyn_cli.core.results import default_out, save_figure, write_csv, write_json
from medisyn_cli.evaluate.memorisation import (  # noqa: F401 (ALPHA, EXPECTED_SHARE, TESTS importable here)
    ALPHA,
    EXPECTED_SHARE,
    TESTS,
    heldout_size_warning,
    memorisation_tests,
    near_copy_groups,
    percentiles,
)
from medisyn_cli.screening.embed import View, apply_view, embedder_names, get_embedder
from medisyn_cli.screening.index import TrainingIndex
from medisyn_cli.screening.screener import Screener
from medisyn_cli.screening.verify import LocalFeatures, stored_features

LEAK_WARNING = 0.05  # warn when a larger share of held-out images are near-copies of training images
PIXEL_SIDE = 64  # thumbnails for the pixel-space distance
MAX_PAIRS = 200  # synthetic near-copy pairs listed in privacy.json (all of them are in privacy.csv)
TRAIN_REFERENCE = 2000  # training images screened against the others (a larger one narrows the natural rate)


@dataclass(frozen=True)
class PrivacyConfig:
    """Options of `medisyn evaluate privacy`."""

    train: tuple[str, ...] = field(
        metadata={
            "help": "The model's training images: image folder (labels from folder names), ImageFolder with "
            "metadata.csv, Parquet, or medisyn output."
        }
    )
    heldout: tuple[str, ...] = field(metadata={"help": "Real images of the same kind the model never saw."})
    synthetic: tuple[str, ...] = field(metadata={"help": "Synthetic images."})
    embedder: str = field(
        default="pixel", metadata={"help": f"Embedder (default pixel): {', '.join(embedder_names())}."}
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": "Near-copy similarity threshold (default: the embedder's calibrated one)."},
    )
    views: bool = field(default=True, metadata={"help": "Search flips, shifts and crops, as screening does."})
    pairs: int = field(
        default=16, metadata={"help": "Closest synthetic / training pairs in closest_pairs.png."}
    )
    batch_size: int = field(default=64, metadata={"help": "Images embedded at a time."})
    out: str | None = field(default=None, metadata={"help": "Folder for privacy.json/.csv and figures."})
    train_reference: int = field(
        default=TRAIN_REFERENCE,
        metadata={
            "help": "Training images (a random sample) screened against the other training images: the "
            "training set's own nearest-neighbour distribution, joined to the held-out reference where the two "
            "agree (0: held-out only)."
        },
    )


@dataclass
class Nearest:
    """The nearest training image of every image of one set."""

    image_set: ImageSet
    similarity: list[float] = field(default_factory=list)
    nn_id: list[int] = field(default_factory=list)
    view: list[str] = field(default_factory=list)
    pixel_distance: list[float] = field(default_factory=list)  # to that training image (Figure 4b)


@dataclass
class Training:
    """The training set as an exact in-memory index, with 64 px thumbnails for pixel distances."""

    image_set: ImageSet
    index: object
    thumbnails: np.ndarray


def run_privacy(config: PrivacyConfig, show_progress: bool = True) -> dict:
    """Nearest training image of every synthetic and held-out image; statistics, figures, privacy.json / .csv."""
    with reporting(show_progress):
        return _run_privacy(config)


def _run_privacy(config: PrivacyConfig) -> dict:
    # 1. inputs, embedder, threshold
    sources = {
        name: open_sources(paths, option)
        for name, paths, option in (
            ("train", config.train, "--real-train"),
            ("heldout", config.heldout, "--real-heldout"),
            ("synthetic", config.synthetic, "--synthetic"),
        )
    }
    embedder = get_embedder(config.embedder)
    threshold = embedder.valid_threshold(
        embedder.default_threshold if config.threshold is None else config.threshold
    )
    started = time.time()
    # 2. the training set as an in-memory exact index
    train = training_index(sources["train"], embedder, "--real-train", config.batch_size)
    screener = Screener(train.index, threshold, views=config.views)
    # 3. nearest training image of each held-out and synthetic image, and of a sample of training images
    heldout = nearest(sources["heldout"], screener, train, "--real-heldout", config.batch_size)
    synthetic = nearest(sources["synthetic"], screener, train, "--synthetic", config.batch_size)
    own = self_reference(sources["train"], screener, train, config.train_reference, config.batch_size)
    leaks = near_copies(heldout, train, threshold)
    copies = near_copies(
        synthetic,
        train,
        threshold,
        MAX_PAIRS,
        0.0,
        "a privacy finding whatever the statistics say: review them (closest_pairs.png, privacy.csv)",
    )
    # 4. statistics, files
    stats = memorisation_tests(
        np.array(synthetic.similarity),
        np.array(heldout.similarity),
        threshold,
        train_self=own.similarity,
        train_self_groups=own.groups,
    )
    stats["percentiles"]["train_self"] = percentiles(own.similarity)
    result = {
        "evaluation": "privacy",
        "embedder": embedder.name,
        "views": config.views,
        "threshold": threshold,
        "similarity": "cosine (1 = identical); DCR = 1 - similarity",
        "pixel_distance": f"RMS difference of {PIXEL_SIDE}x{PIXEL_SIDE} RGB in [0, 1] to the nearest "
        "training image (MediSyn Figure 4b; 0 = identical)",
        "images": {
            "train": len(train.image_set),
            "heldout": len(heldout.image_set),
            "synthetic": len(synthetic.image_set),
            "train_self": len(own.similarity),
        },
        "heldout_near_copies": leaks,
        "synthetic_near_copies": copies,
        **stats,
        "pixel_distance_percentiles": {
            name: percentiles(np.array(found.pixel_distance))
            for name, found in (("synthetic", synthetic), ("heldout", heldout))
        },
        "per_class": per_class_tests(synthetic, heldout, threshold, own),
        "skipped": {
            s.name: s.skipped for s in (train.image_set, heldout.image_set, synthetic.image_set) if s.skipped
        },
        "seconds": round(time.time() - started, 1),
        "config": asdict(config),
    }
    small = heldout_size_warning(len(heldout.image_set))
    warnings = [warning for warning in (copies["warning"], leaks["warning"], small) if warning]
    if warnings:
        result["warnings"] = warnings
    out = Path(config.out) if config.out else default_out(config.synthetic[0])
    pairs = closest_pairs_figure(
        synthetic,
        sources["synthetic"],
        train.image_set,
        sources["train"],
        config.pairs,
        out / "closest_pairs.png",
    )
    write_privacy(result, out, heldout, synthetic, train.image_set, pairs)
    return result


def training_index(sources: list, embedder, name: str, batch_size: int) -> Training:
    """Plain (identity-view) embeddings and 64 px thumbnails of every readable image, as an exact index."""
    image_set, chunks, thumbs, keypoints = ImageSet(name), [], [], []
    for _, images in iter_batches(sources, batch_size, image_set):
        chunks.append(embedder.embed(images))
        thumbs.extend(to_rgb_array(image, PIXEL_SIDE) for image in images)
        keypoints.extend(map(stored_features, images))
    if not chunks:
        raise MedisynError(f"{name}: no readable images ({len(image_set.skipped)} unreadable)")
    index = TrainingIndex.from_vectors(
        np.concatenate(chunks),
        image_set.keys,
        embedder,
        "flat",
        image_set.labels,
        local=LocalFeatures.from_parts(keypoints),
    )
    return Training(image_set, index, np.stack(thumbs))


def nearest(sources: list, screener, train: Training, name: str, batch_size: int) -> Nearest:
    """Screen every readable image of a set against the training index; pixel distance to the match."""
    found = Nearest(ImageSet(name))
    for _, images in iter_batches(sources, batch_size, found.image_set):
        for image, result in zip(images, screener.check(images)):
            found.similarity.append(closeness(result, screener))
            found.nn_id.append(result.nn_id)
            found.view.append(result.view)
            aligned = apply_view(image, view_from_name(result.view))  # a flipped copy compared unflipped
            found.pixel_distance.append(
                pixel_distance(to_rgb_array(aligned, PIXEL_SIDE), train.thumbnails[result.nn_id])
            )
    if not found.similarity:
        raise MedisynError(f"{name}: no readable images ({len(found.image_set.skipped)} unreadable)")
    return found


@dataclass
class SelfReference:
    """A sample of training images, each with its nearest *other* training image's similarity and its near-copy
    group (the images joined to their nearest one at or above the threshold: a mutual pair is one group)."""

    similarity: np.ndarray
    labels: list[str | None]
    groups: np.ndarray | None = None


def self_reference(
    sources: list, screener, train: Training, count: int, batch_size: int, seed: int = 0
) -> SelfReference:
    """Screen a random sample of `count` training images against the training index, each image itself excluded
    (its duplicates kept): the training set's own nearest-neighbour distribution, with its near-copy groups."""
    total = len(train.image_set)
    if count < 1 or total < 3:
        return SelfReference(np.zeros(0), [], np.zeros(0, np.int64))
    ids = np.sort(np.random.default_rng(seed).choice(total, min(count, total), replace=False))
    positions = [train.image_set.positions[i] for i in ids]
    images = fetch_images(sources, positions)
    similarity, nn_ids = [], []
    for start in range(0, len(ids), batch_size):
        part = [int(i) for i in ids[start : start + batch_size]]
        batch = [images[train.image_set.positions[i]] for i in part]
        for result in screener.check(batch, exclude=[{i} for i in part]):
            similarity.append(closeness(result, screener))
            nn_ids.append(result.nn_id)
    similarity = np.array(similarity, np.float64)
    groups = near_copy_groups(ids, np.array(nn_ids), similarity, screener.threshold)
    return SelfReference(similarity, [train.image_set.labels[i] for i in ids], groups)


def closeness(result, screener: Screener) -> float:
    """The similarity the tests use: the embedding's, or 1.0 for a copy only the keypoint verification confirms."""
    verified = result.near_copy and not result.nn_similarity >= screener.threshold
    return 1.0 if verified else float(result.nn_similarity)


def view_from_name(name: str):
    """The View a ScreenResult names ('identity', 'hflip', 'rot90+vflip', 'invert', 'box(l,t,r,b)', joined by +)."""
    fields: dict = {}
    for part in name.split("+"):
        if part.endswith("flip"):
            fields["flip"] = part[0]
        elif part == "invert":
            fields["invert"] = True
        elif part.startswith("box("):
            fields["box"] = tuple(float(v) for v in part[4:-1].split(","))
        elif part.startswith("rot"):
            degrees = float(part[3:])
            if degrees % 90 == 0:
                fields["turn"] = int(degrees // 90) % 4
            else:
                fields["angle"] = degrees
    return View(**fields)


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised Euclidean distance of two uint8 images of one shape: RMS difference in [0, 1]."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    return float(np.sqrt(np.mean(diff * diff)))


def near_copies(
    found: Nearest,
    train: Training,
    threshold: float,
    examples: int = 10,
    warn_above: float = LEAK_WARNING,
    finding: str = "the split leaks (the data set's own cross-split duplicates)",
) -> dict:
    """Images of a set at or above the threshold: count, share, per class, the closest examples (the pairs) and a
    warning naming `finding` when their share exceeds `warn_above`."""
    sim = np.array(found.similarity)
    hit = sim >= threshold
    labels = [label or "" for label in found.image_set.labels]
    per_class = {
        label: {
            "images": int(sum(1 for l in labels if l == label)),
            "near_copies": int(sum(1 for l, h in zip(labels, hit) if l == label and h)),
        }
        for label in sorted(set(labels))
    }
    for row in per_class.values():
        row["share"] = row["near_copies"] / row["images"] if row["images"] else float("nan")
    order = [int(i) for i in np.argsort(-sim, kind="stable") if hit[i]][:examples]
    share = float(hit.mean()) if len(hit) else 0.0
    warning = (
        f"{found.image_set.name}: {int(hit.sum())} of {len(hit)} images ({share:.1%}) are near-copies of "
        f"training images (similarity >= {threshold:g}, highest {float(sim.max()):.3f}); {finding}"
        if share > warn_above
        else None
    )
    return {
        "count": int(hit.sum()),
        "share": share,
        "threshold": threshold,
        "highest_similarity": float(sim.max()) if len(sim) else float("nan"),
        "per_class": per_class,
        "examples": [
            {
                "key": found.image_set.keys[i],
                "label": found.image_set.labels[i],
                "nn_key": train.image_set.keys[found.nn_id[i]],
                "similarity": float(sim[i]),
                "pixel_distance": found.pixel_distance[i] if found.pixel_distance else None,
                "view": found.view[i],
            }
            for i in order
        ],
        "warning": warning,
    }


def per_class_tests(
    synthetic: Nearest, heldout: Nearest, threshold: float, own: SelfReference | None = None
) -> dict:
    """memorisation_tests per label present in both sets (each class's synthetic vs its held-out images and its
    training images' self-reference)."""
    rows = {}
    own = own or SelfReference(np.zeros(0), [])
    own_labels = np.array(own.labels, object)
    s_labels, h_labels = (
        np.array(synthetic.image_set.labels, object),
        np.array(heldout.image_set.labels, object),
    )
    for label in sorted({l for l in s_labels if l is not None} & {l for l in h_labels if l is not None}):
        s = np.array(synthetic.similarity)[s_labels == label]
        h = np.array(heldout.similarity)[h_labels == label]
        try:
            mine = own_labels == label
            groups = None if own.groups is None else own.groups[mine]
            tests = memorisation_tests(
                s, h, threshold, train_self=own.similarity[mine], train_self_groups=groups
            )
        except MedisynError as exc:
            rows[label] = {"synthetic": len(s), "heldout": len(h), "note": str(exc)}
            continue
        rows[label] = {
            "synthetic": len(s),
            "heldout": len(h),
            "reference": tests["reference_images"],
            "reference_source": tests["reference"]["source"],
            "share_above_heldout_p95": tests["share_above_heldout_p95"],
            "near_copy_rate": tests["near_copy_rate"],
            "p_values": tests["p_values"],
            "memorises": tests["memorises"],
            "power": tests["power"],
            "median_similarity": {"synthetic": float(np.median(s)), "heldout": float(np.median(h))},
        }
    return rows


def compare_distributions(synthetic: np.ndarray, heldout: np.ndarray, threshold: float) -> dict:
    """Kept name for callers: memorisation_tests."""
    return memorisation_tests(synthetic, heldout, threshold)


def write_privacy(
    result: dict,
    out: Path,
    heldout: Nearest,
    synthetic: Nearest,
    train: ImageSet,
    pairs: Path | None = None,
) -> dict[str, Path]:
    """privacy.json (last), privacy.csv (one row per synthetic and held-out image) and privacy_histogram.png."""
    rows = [
        {"set": name, **row}
        for name, found in (("synthetic", synthetic), ("heldout", heldout))
        for row in nearest_rows(found, train, result["threshold"], dcr=True)
    ]
    files = {
        "json": out / "privacy.json",
        "csv": out / "privacy.csv",
        "histogram": out / "privacy_histogram.png",
    }
    if pairs is not None:
        files["pairs"] = pairs
    write_csv(files["csv"], rows)
    similarity_histogram(synthetic, heldout, result, files["histogram"])
    write_json(files["json"], result | {"files": {k: p.name for k, p in files.items()}})
    return files


def nearest_rows(found: Nearest, train: ImageSet, threshold: float, dcr: bool = False) -> list[dict]:
    """One CSV row per image of `found`: key, label, its nearest training image, similarity (and DCR), pixel
    distance, view, near-copy or not."""
    rows = []
    for key, label, sim, i, view, dist in zip(
        found.image_set.keys,
        found.image_set.labels,
        found.similarity,
        found.nn_id,
        found.view,
        found.pixel_distance,
    ):
        row = {"key": key, "label": label, "nn_key": train.keys[i], "nn_label": train.labels[i]}
        row["nn_similarity"] = sim
        if dcr:
            row["dcr"] = 1.0 - sim
        rows.append(row | {"pixel_distance": dist, "view": view, "near_copy": sim >= threshold})
    return rows


def similarity_histogram(synthetic: Nearest, heldout: Nearest, result: dict, path: Path) -> Path:
    """Nearest-training similarity with the held-out p95 and the threshold; pixel distance (Fig. 4b); the ROC of
    the membership-style audit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17.0, 4.0))
    sim_s, sim_h = np.array(synthetic.similarity), np.array(heldout.similarity)
    bins = np.linspace(float(min(sim_s.min(), sim_h.min())), 1.0, 40)
    left.hist(sim_h, bins=bins, alpha=0.55, density=True, label=f"held-out real ({len(sim_h)})")
    left.hist(sim_s, bins=bins, alpha=0.55, density=True, label=f"synthetic ({len(sim_s)})")
    if result["heldout_p95_similarity"] == result["heldout_p95_similarity"]:
        left.axvline(
            result["heldout_p95_similarity"],
            color="black",
            linestyle=":",
            label="95th percentile of the held-out images",
        )
    left.axvline(
        result["threshold"], color="red", linestyle="--", label=f"near-copy threshold {result['threshold']:g}"
    )
    left.set_xlabel(f"similarity to the nearest training image ({result['embedder']})")
    left.set_ylabel("density")
    state = {True: "FLAGGED by " + ", ".join(result["flagged_by"]), False: "not flagged"}
    left.set_title("memorisation: " + state.get(result["memorises"], "undecidable at this sample size"))
    left.legend(fontsize=7)
    dist_s, dist_h = np.array(synthetic.pixel_distance), np.array(heldout.pixel_distance)
    bins = np.linspace(0.0, float(max(dist_s.max(), dist_h.max(), 1e-6)), 40)
    middle.hist(dist_h, bins=bins, alpha=0.55, density=True, label="held-out real")
    middle.hist(dist_s, bins=bins, alpha=0.55, density=True, label="synthetic")
    middle.set_xlabel("pixel distance to that training image (RMS in [0, 1], 0 = identical)")
    middle.set_title("Figure 4b: pixel distance to the nearest training image")
    middle.legend(fontsize=7)
    audit = result.get("membership_audit")
    if audit:
        roc = np.array(audit["roc"])
        right.plot(
            roc[:, 0],
            roc[:, 1],
            label=f"AUC {audit['auc']:.3f} ({audit['auc_ci95'][0]:.3f}-{audit['auc_ci95'][1]:.3f})",
        )
        right.plot([0, 1], [0, 1], color="grey", linestyle=":")
        right.set_xlabel("false-positive rate (held-out images)")
        right.set_ylabel("true-positive rate (synthetic images)")
        right.set_title("membership-style audit: similarity as the score")
        right.legend(fontsize=7)
    return save_figure(figure, path)


def closest_pairs_figure(
    synthetic: Nearest, synthetic_sources: list, train: ImageSet, train_sources: list, count: int, path: Path
) -> Path | None:
    """The `count` synthetic images closest to training, each beside its nearest training image (PNG grid)."""
    from PIL import Image, ImageDraw

    if count < 1:
        return None
    order = np.argsort(-np.array(synthetic.similarity), kind="stable")[:count]
    query = fetch_images(synthetic_sources, [synthetic.image_set.positions[i] for i in order])
    sources = fetch_images(train_sources, [train.positions[synthetic.nn_id[i]] for i in order])
    side, cols = 96, 4
    rows = -(-len(order) // cols)
    grid = Image.new("RGB", (cols * (2 * side + 16), rows * (side + 16)), "white")
    draw = ImageDraw.Draw(grid)
    for n, i in enumerate(order):
        x, y = (n % cols) * (2 * side + 16), (n // cols) * (side + 16)
        for offset, image in (
            (0, query.get(synthetic.image_set.positions[i])),
            (side + 4, sources.get(train.positions[synthetic.nn_id[i]])),
        ):
            if image is not None:
                grid.paste(thumbnail(image, side, pixelated=False), (x + offset, y))
        draw.text(
            (x + 2, y + side + 2),
            f"sim {synthetic.similarity[i]:.3f} d {synthetic.pixel_distance[i]:.3f} {synthetic.view[i]}"[:34],
            fill="black",
        )
    return save_png(grid, path)
