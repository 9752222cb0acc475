"""Probe for issue #16's blend target: is a 70/30 blend better told from a real non-copy by how well TWO training
images explain it than by its nearest one?

For each data set of ../shared/data: 800 shuffled images (seed 0), half indexed (pixel embedder, identity view
only: no query views, no tiles, to isolate the score), 150 blends `Image.blend(indexed, other, 0.3)` whose
partner is any image of the set (indexed or not), and the other half as negatives, minus those the default rule
already flags (nearest similarity >= 0.97: the sets' own duplicates, same patient or slice).
Scores per query q (unit vector):
  s1  the cosine similarity of its nearest indexed vector a (what the screen uses today);
  s2  the norm of q's projection on span(a, c), c the best of the 3 nearest indexed vectors to q's residual
      q - (q.a) a, with a's coefficient at least c's (the copied patient dominates the mix).
Reported: each score's threshold at 1% false positives on the negatives, the share of blends at or above it, and
both at the default 0.97.

    python benchmarks/blend_probe.py > benchmarks/results/blend_probe/output.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
SETS = (
    "isic2017_dermoscopy",
    "kermany_pediatric_cxr",
    "brain_tumor_mri",
    "busi_breast_ultrasound",
    "mednist_radiology",
    "bccd_blood_smear",
)


def two_image_score(q: np.ndarray, vectors: np.ndarray, nearest: int) -> float:
    """Norm of q's projection on span(a, c) over the 3 nearest vectors c to q's residual after a (a dominant)."""
    a = vectors[nearest]
    residual = q - (q @ a) * a
    residual /= np.linalg.norm(residual) + 1e-12
    best = 0.0
    for c in np.argsort(-(vectors @ residual))[:4]:
        if c == nearest:
            continue
        basis = np.stack([a, vectors[c]], 1)
        coef, *_ = np.linalg.lstsq(basis, q, rcond=None)
        if coef[0] >= coef[1]:
            best = max(best, float(np.linalg.norm(basis @ coef)))
    return best


def scores(queries: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s1, s2) of every query."""
    sims = queries @ vectors.T
    nearest = sims.argmax(1)
    return sims.max(1), np.array([two_image_score(q, vectors, n) for q, n in zip(queries, nearest)])


def main() -> None:
    from PIL import Image

    from medisyn_cli.screening.embed import PIXEL_THRESHOLD, get_embedder

    embedder, rng = get_embedder("pixel"), np.random.default_rng(0)
    print(f"{'data set':24s} {'score':5s} {'neg p99':>8s} {'blends @1% FP':>14s} {'blends/neg @0.97':>17s}")
    for dataset in SETS:
        paths = sorted((DATA / dataset / "images").glob("*.png"))
        rng.shuffle(paths)
        images = [Image.open(p).convert("L") for p in paths[:800]]
        half = len(images) // 2
        vectors = embedder.embed(images[:half])
        sources = rng.choice(half, 150, replace=False)
        blends = [Image.blend(images[i], images[rng.integers(0, len(images))], 0.3) for i in sources]
        b1, b2 = scores(embedder.embed(blends), vectors)
        n1, n2 = scores(embedder.embed(images[half:]), vectors)
        keep = n1 < PIXEL_THRESHOLD
        for name, blend, negative in (("s1", b1, n1[keep]), ("s2", b2, n2[keep])):
            limit = np.quantile(negative, 0.99)
            print(
                f"{dataset:24s} {name:5s} {limit:8.3f} {np.mean(blend > limit):14.2f} "
                f"{np.mean(blend >= 0.97):8.2f}/{np.mean(negative >= 0.97):.3f}   ({keep.sum()} negatives)",
                flush=True,
            )


if __name__ == "__main__":
    main()
