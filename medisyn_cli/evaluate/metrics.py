"""Distribution metrics on feature vectors: FID, KID, precision/recall/density/coverage, diversity.

All take float arrays (N, d) of real and synthetic features; none needs images or a network.
- FID (Heusel et al. 2017): |mu_r - mu_s|^2 + Tr(C_r + C_s - 2 (C_r C_s)^1/2); the trace of the root from the
  eigenvalues of C_r^1/2 C_s C_r^1/2 (equal to scipy.linalg.sqrtm's, stable for singular covariances), or, with
  fewer samples than dimensions, as the sum of singular values of A B' (C_r = A'A, C_s = B'B; same value,
  n x n instead of d x d).
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, averaged over
  random subsets; mean and std.
- PRDC (Naeem et al. 2020, k = 5): a sample's k-NN radius is the distance to its k-th nearest neighbour in its
  own set; precision = share of synthetic samples inside some real sample's ball, recall = share of real
  samples inside some synthetic sample's ball, density = mean number of real balls holding a synthetic
  sample / k, coverage = share of real samples whose ball holds a synthetic sample. Distances are computed in
  chunks, so memory is O(chunk x N), not O(N^2).
- diversity: mean pairwise Euclidean distance within a set (at most `limit` samples, seeded).
- bootstrap_intervals: 95% percentile-bootstrap intervals of FID and PRDC.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medisyn_cli.core.errors import MedisynError


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the two feature sets (>= 2 samples each)."""
    _need(real, fake, 2, "FID")
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if max(len(real), len(fake)) < real.shape[1]:  # fewer samples than dimensions: work in sample space
        a = (real - real.mean(0)) / np.sqrt(len(real) - 1)
        b = (fake - fake.mean(0)) / np.sqrt(len(fake) - 1)
        root = np.linalg.svd(a @ b.T, compute_uv=False).sum()  # Tr((C1 C2)^1/2): C1 = a'a, C2 = b'b
        value = np.sum((real.mean(0) - fake.mean(0)) ** 2) + (a * a).sum() + (b * b).sum() - 2 * root
        return max(float(value), 0.0)
    c1, c2 = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    value = (
        np.sum((real.mean(0) - fake.mean(0)) ** 2)
        + np.trace(c1)
        + np.trace(c2)
        - 2 * trace_sqrt_product(c1, c2)
    )
    return max(float(value), 0.0)


def trace_sqrt_product(c1: np.ndarray, c2: np.ndarray) -> float:
    """Tr((C1 C2)^1/2) for covariance matrices, as Tr((C1^1/2 C2 C1^1/2)^1/2): symmetric eigenvalues only, so
    exact for singular covariances (fewer samples than dimensions) where sqrtm of C1 C2 is ill-conditioned."""
    w, v = np.linalg.eigh(c1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root @ c2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())


def kid(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets (size capped by the smaller set)."""
    _need(real, fake, 2, "KID")
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    values = []
    for _ in range(subsets):
        x = np.asarray(real[rng.choice(len(real), m, replace=False)], np.float64)
        y = np.asarray(fake[rng.choice(len(fake), m, replace=False)], np.float64)
        values.append(_mmd2(x, y))
    return float(np.mean(values)), float(np.std(values))


def _mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.mean())


def knn_radii(features: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance of each sample to its k-th nearest other sample in the same set."""
    radii = np.empty(len(features), np.float64)
    for start in range(0, len(features), chunk):
        dist = pairwise_distances(features[start : start + chunk], features)
        radii[start : start + chunk] = np.partition(dist, k, axis=1)[:, k]  # column 0 is the sample itself
    return radii


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int = 1024) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours."""
    per = prdc_per_sample(real, fake, k, chunk)
    return {name: float(values.mean()) for name, values in per.items()}


def prdc_per_sample(
    real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int = 1024
) -> dict[str, np.ndarray]:
    """Per-sample terms whose means are PRDC: precision / density over synthetic samples (inside a real ball;
    real balls holding it / k), recall / coverage over real samples (inside a synthetic ball; its ball holds one)."""
    _need(real, fake, k + 1, f"precision/recall (k={k})")
    real_radii, fake_radii = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    inside, covered = np.zeros(len(fake)), np.zeros(len(real), bool)
    for start in range(0, len(real), chunk):
        dist = pairwise_distances(real[start : start + chunk], fake)  # (chunk, n_fake)
        within = dist < real_radii[start : start + chunk, None]
        inside += within.sum(0)
        covered[start : start + chunk] = dist.min(1) < real_radii[start : start + chunk]
    recalled = np.zeros(len(real), bool)
    for start in range(0, len(fake), chunk):
        dist = pairwise_distances(fake[start : start + chunk], real)  # (chunk, n_real)
        recalled |= (dist < fake_radii[start : start + chunk, None]).any(0)
    return {
        "precision": (inside > 0).astype(np.float64),
        "recall": recalled.astype(np.float64),
        "density": inside / k,
        "coverage": covered.astype(np.float64),
    }


def bootstrap_intervals(
    real: np.ndarray,
    fake: np.ndarray,
    k: int = 5,
    rounds: int = 100,
    seed: int = 0,
    on_round: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """95% bootstrap intervals. FID: both sets resampled with replacement; duplicates bias every resampled FID
    upward, so the percentiles are shifted by that bias (bootstrap mean - estimate), clipped at 0. PRDC: over the
    samples each is a mean of (synthetic for precision / density, real for recall / coverage), the k-NN balls
    fixed (resampling the ball owners would put duplicates at distance 0). `on_round()` after each FID round."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    if rounds < 1:
        return out
    if len(real) >= 2 and len(fake) >= 2:
        values = []
        for _ in range(rounds):
            values.append(
                fid(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
            )
            if on_round is not None:
                on_round()
        values = np.array(values)
        estimate = fid(real, fake)
        shifted = values - (values.mean() - estimate)
        out["fid"] = [max(0.0, float(v)) for v in np.percentile(shifted, [2.5, 97.5])]
    if len(real) > k and len(fake) > k:
        for name, terms in prdc_per_sample(real, fake, k).items():
            means = [terms[rng.integers(0, len(terms), len(terms))].mean() for _ in range(rounds)]
            out[name] = [float(v) for v in np.percentile(means, [2.5, 97.5])]
    return out


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def diversity(features: np.ndarray, limit: int = 2000, seed: int = 0) -> float:
    """Mean pairwise Euclidean distance between distinct samples (a seeded sample of `limit` at most); NaN for < 2."""
    if len(features) < 2:
        return float("nan")
    if len(features) > limit:
        features = features[np.random.default_rng(seed).choice(len(features), limit, replace=False)]
    dist = pairwise_distances(features, features)
    return float(dist.sum() / (len(features) * (len(features) - 1)))


def _need(real: np.ndarray, fake: np.ndarray, count: int, metric: str) -> None:
    if len(real) < count or len(fake) < count:
        raise MedisynError(
            f"{metric} needs at least {count} real and {count} synthetic images "
            f"(got {len(real)} and {len(fake)})"
        )
