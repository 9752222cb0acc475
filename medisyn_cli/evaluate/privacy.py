"""Privacy / memorisation: distance to the closest training record (DCR) of synthetic vs held-out real images.

A model that memorises puts its images closer to its training images than unseen real images are. For each
synthetic image and each held-out real image we find the nearest training image with the same `Screener`
that `generate --index` uses: the embedder (default `pixel`) under its query views (flips, shifts, crops), so
a flipped or shifted copy counts as close. Similarity is cosine (1 = identical); DCR = 1 - similarity. Both
sets go through the same views, so the comparison is fair; the views raise every similarity a little.

Reported: percentiles of both similarity distributions; the share of synthetic images more similar to
training than the held-out 95th percentile (5% expected without memorisation); the near-copy rate at the
screening threshold for both sets; P(a synthetic image is closer than a held-out one) with a one-sided
Mann-Whitney test and a two-sample KS test. Verdict `memorises` when the share exceeds FLAG_RATIO x 5% and the
Mann-Whitney p-value is below ALPHA. Training vectors are held in memory (4 KB an image for `pixel`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MedisynError
from .common import (ImageSet, default_out, fetch_images, iter_batches, new_figure, open_sources, save_figure,
                     write_csv, write_json)

EXPECTED_SHARE, FLAG_RATIO, ALPHA = 0.05, 2.0, 0.05
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass(frozen=True)
class PrivacyConfig:
    """Options of `medisyn evaluate privacy`."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    synthetic: tuple[str, ...]
    embedder: str = "pixel"
    threshold: float | None = None   # near-copy threshold; None: the embedder's calibrated default
    views: bool = True               # search flips / shifts / crops, as screening does
    pairs: int = 16                  # closest synthetic-training pairs in the figure
    batch_size: int = 64
    out: str | None = None


@dataclass
class Nearest:
    """The nearest training image of every image of one set."""

    image_set: ImageSet
    similarity: list[float] = field(default_factory=list)
    nn_id: list[int] = field(default_factory=list)
    view: list[str] = field(default_factory=list)


def run_privacy(config: PrivacyConfig) -> dict:
    """Nearest training image of every synthetic and held-out image; statistics, figures, privacy.json / .csv."""
    from ..embed import get_embedder
    from ..index import TrainingIndex
    from ..screen import Screener

    # 1. inputs, embedder, threshold
    sources = {name: open_sources(paths, option) for name, paths, option in
               (("train", config.train, "--train"), ("heldout", config.heldout, "--heldout"),
                ("synthetic", config.synthetic, "--synthetic"))}
    embedder = get_embedder(config.embedder)
    threshold = embedder.valid_threshold(embedder.default_threshold if config.threshold is None else config.threshold)
    started = time.time()
    # 2. the training set as an in-memory exact index
    vectors, train = embed_set(sources["train"], embedder, "--train", config.batch_size)
    index = TrainingIndex.from_vectors(vectors, train.keys, embedder, "flat", train.labels)
    screener = Screener(index, threshold, views=config.views)
    # 3. nearest training image of each held-out and synthetic image
    heldout = nearest(sources["heldout"], screener, "--heldout", config.batch_size)
    synthetic = nearest(sources["synthetic"], screener, "--synthetic", config.batch_size)
    # 4. statistics, files
    stats = compare_distributions(np.array(synthetic.similarity), np.array(heldout.similarity), threshold)
    result = {"evaluation": "privacy", "embedder": embedder.name, "views": config.views, "threshold": threshold,
              "similarity": "cosine (1 = identical); DCR = 1 - similarity",
              "images": {"train": len(train), "heldout": len(heldout.image_set), "synthetic": len(synthetic.image_set)},
              **stats,
              "skipped": {s.name: s.skipped for s in (train, heldout.image_set, synthetic.image_set) if s.skipped},
              "seconds": round(time.time() - started, 1), "config": asdict(config)}
    out = Path(config.out) if config.out else default_out(config.synthetic[0])
    pairs = closest_pairs_figure(synthetic, sources["synthetic"], train, sources["train"], config.pairs,
                                 out / "closest_pairs.png")
    write_privacy(result, out, heldout, synthetic, train, index, pairs)
    return result


def embed_set(sources: list, embedder, name: str, batch_size: int) -> tuple[np.ndarray, ImageSet]:
    """Plain (identity-view) embeddings of every readable image, batch by batch."""
    image_set, chunks = ImageSet(name), []
    for _, images in iter_batches(sources, batch_size, image_set):
        chunks.append(embedder.embed(images))
    if not chunks:
        raise MedisynError(f"{name}: no readable images ({len(image_set.skipped)} unreadable)")
    return np.concatenate(chunks), image_set


def nearest(sources: list, screener, name: str, batch_size: int) -> Nearest:
    """Screen every readable image of a set against the training index."""
    found = Nearest(ImageSet(name))
    for _, images in iter_batches(sources, batch_size, found.image_set):
        for result in screener.check(images):
            found.similarity.append(result.nn_similarity)
            found.nn_id.append(result.nn_id)
            found.view.append(result.view)
    if not found.similarity:
        raise MedisynError(f"{name}: no readable images ({len(found.image_set.skipped)} unreadable)")
    return found


def compare_distributions(synthetic: np.ndarray, heldout: np.ndarray, threshold: float) -> dict:
    """Percentiles, share above the held-out 95th percentile, near-copy rates, tests, and the verdict."""
    from scipy.stats import ks_2samp, mannwhitneyu

    cut = float(np.percentile(heldout, 100 * (1 - EXPECTED_SHARE)))
    share = float(np.mean(synthetic > cut))
    test = mannwhitneyu(synthetic, heldout, alternative="greater")
    ks = ks_2samp(synthetic, heldout)
    memorises = share > FLAG_RATIO * EXPECTED_SHARE and float(test.pvalue) < ALPHA
    return {
        "percentiles": {name: {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
                        for name, values in (("synthetic", synthetic), ("heldout", heldout))},
        "heldout_p95_similarity": cut,
        "share_above_heldout_p95": share, "expected_share": EXPECTED_SHARE,
        "share_ratio": share / EXPECTED_SHARE,
        "near_copy_rate": {"synthetic": float(np.mean(synthetic >= threshold)),
                           "heldout": float(np.mean(heldout >= threshold))},
        "p_synthetic_closer": float(test.statistic / (len(synthetic) * len(heldout))),
        "mannwhitney_p": float(test.pvalue), "ks_statistic": float(ks.statistic), "ks_p": float(ks.pvalue),
        "memorises": bool(memorises),
        "verdict": (f"memorises: {share:.1%} of synthetic images are closer to training than the held-out 95th "
                    f"percentile (expected {EXPECTED_SHARE:.0%}), Mann-Whitney p = {test.pvalue:.2g}")
                   if memorises else
                   f"no shift towards training: {share:.1%} above the held-out 95th percentile (expected "
                   f"{EXPECTED_SHARE:.0%}, flagged above {FLAG_RATIO * EXPECTED_SHARE:.0%} with p < {ALPHA})",
    }


def write_privacy(result: dict, out: Path, heldout: Nearest, synthetic: Nearest, train: ImageSet,
                  index, pairs: Path | None = None) -> dict[str, Path]:
    """privacy.json (last), privacy.csv (one row per synthetic and held-out image) and privacy_histogram.png."""
    rows = [{"set": name, "key": key, "label": label, "nn_key": index.key([i])[0], "nn_label": train.labels[i],
             "nn_similarity": sim, "dcr": 1.0 - sim, "view": view}
            for name, found in (("synthetic", synthetic), ("heldout", heldout))
            for key, label, sim, i, view in zip(found.image_set.keys, found.image_set.labels, found.similarity,
                                                found.nn_id, found.view)]
    files = {"json": out / "privacy.json", "csv": out / "privacy.csv", "histogram": out / "privacy_histogram.png"}
    if pairs is not None:
        files["pairs"] = pairs
    write_csv(files["csv"], rows)
    similarity_histogram(np.array(synthetic.similarity), np.array(heldout.similarity), result, files["histogram"])
    write_json(files["json"], result | {"files": {k: p.name for k, p in files.items()}})
    return files


def similarity_histogram(synthetic: np.ndarray, heldout: np.ndarray, result: dict, path: Path) -> Path:
    """Overlaid histograms of nearest-training similarity, with the held-out p95 and the near-copy threshold."""
    figure, axes = new_figure()
    low = float(min(synthetic.min(), heldout.min()))
    bins = np.linspace(low, 1.0, 40)
    axes.hist(heldout, bins=bins, alpha=0.55, density=True, label=f"held-out real ({len(heldout)})")
    axes.hist(synthetic, bins=bins, alpha=0.55, density=True, label=f"synthetic ({len(synthetic)})")
    axes.axvline(result["heldout_p95_similarity"], color="black", linestyle=":", label="held-out 95th percentile")
    axes.axvline(result["threshold"], color="red", linestyle="--", label=f"near-copy threshold {result['threshold']:g}")
    axes.set_xlabel(f"similarity to the nearest training image ({result['embedder']})")
    axes.set_ylabel("density")
    axes.set_title("memorisation: " + ("FLAGGED" if result["memorises"] else "no shift towards training"))
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def closest_pairs_figure(synthetic: Nearest, synthetic_sources: list, train: ImageSet, train_sources: list,
                         count: int, path: Path) -> Path | None:
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
        for offset, image in ((0, query.get(synthetic.image_set.positions[i])),
                              (side + 4, sources.get(train.positions[synthetic.nn_id[i]]))):
            if image is not None:
                grid.paste(_thumbnail(image, side), (x + offset, y))
        draw.text((x + 2, y + side + 2), f"{synthetic.similarity[i]:.3f} {synthetic.view[i]}"[:30], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    grid.save(tmp)
    tmp.replace(path)
    return path


def _thumbnail(image, side: int):
    from PIL import Image

    from ..embed import to_8bit

    return to_8bit(image).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
