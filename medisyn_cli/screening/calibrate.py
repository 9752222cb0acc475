"""Self-calibrated threshold: plant changed copies of a sample of the index's own images and pick the
threshold that keeps false positives on the other images at the target rate."""

from __future__ import annotations

import math
import time

import numpy as np

from medisyn_cli.screening.index import TARGET_FPR, TrainingIndex
from medisyn_cli.screening.screener import Screener
from medisyn_cli.screening.verify import VERIFY_CAP, VERIFY_FLOOR

CALIBRATION_SAMPLE, CALIBRATION_MIN = 200, 50  # images planted as copies; fewer images keep the default
THRESHOLD_RANGE = (0.90, 0.995)
PARTIAL_MARGIN = 0.01
# verify threshold bounds (inliers): the calibrated value stays within VERIFY_FLOOR..VERIFY_CAP. A calibration negative
# verified (dense check passed) with VERIFY_DUPLICATE inliers or more is one the screen calls a copy at any
# calibrated threshold: the training set's own duplicate (on six data sets every such pair was the same cell, frame
# or slice; no two distinct patients' images passed the dense check with more than 23), not a chance match
VERIFY_DUPLICATE = VERIFY_CAP
# the partial-similarity threshold is at least PARTIAL_MARGIN above the whole-image one


CURVE = tuple(round(0.9 + 0.005 * i, 3) for i in range(20))


def copy_augment(image, rng: np.random.Generator):
    """A random copy-style change of an image (crop 85-95%, rotation 2-8 degrees, JPEG, blur, contrast, flip)."""
    import io

    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    image = image.convert("RGB") if image.mode not in ("L", "RGB") else image
    kind = rng.integers(6)
    w, h = image.size
    if kind == 0:
        side = rng.uniform(0.85, 0.95)
        x, y = rng.uniform(0, 1 - side, 2)
        return image.crop((x * w, y * h, (x + side) * w, (y + side) * h)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
    if kind == 1:
        return image.rotate(float(rng.uniform(2, 8) * rng.choice([-1, 1])), Image.Resampling.BICUBIC)
    if kind == 2:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=int(rng.integers(40, 80)))
        return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode)
    if kind == 3:
        return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    if kind == 4:
        return ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageOps.mirror(image) if rng.random() < 0.5 else ImageOps.flip(image)


def calibrate(
    index: TrainingIndex, sample: list[tuple[int, object]], target_fpr: float = TARGET_FPR, seed: int = 0
) -> dict:
    """Pick the threshold giving `target_fpr` on the index's own images: each sampled (id, image) and a copy-style
    change of it are screened against the *other* training images (negatives: its own duplicates excluded), and
    the changed copy against all (positives, for the curve). Returns the threshold, the measured curve and counts.

    The training set's own near-duplicates are told apart by the embedder's default threshold, so below it the
    negatives cannot separate a chance match from a duplicate: the calibrated threshold never goes below a
    default that was itself calibrated on data split by patient (pixel, phash; benchmarks/screen_quality.py),
    and rises above it where this data or the views make chance matches more similar."""
    clock = time.time()
    rng = np.random.default_rng(seed)
    screener = Screener(index, threshold=1.0, measure_partial=True, measure_verify=True)
    ids = [i for i, _ in sample]
    changed = [copy_augment(image, rng) for _, image in sample]
    banned = _duplicates_of(screener, [image for _, image in sample], ids)
    found = screener.check([im for _, im in sample] + changed, exclude=banned + banned)
    negatives = np.array([r.nn_similarity for r in found], np.float64)
    copies = screener.check(changed)
    positives = np.array([r.nn_similarity if r.nn_id in banned[j] else -np.inf for j, r in enumerate(copies)])
    floor = index.embedder.default_threshold if index.embedder.calibrated_default else THRESHOLD_RANGE[0]
    threshold = max(floor, _threshold_for(negatives[np.isfinite(negatives)], target_fpr))
    partial = np.array([-np.inf if r.partial_similarity is None else r.partial_similarity for r in found])
    partly = _partial_threshold(negatives, partial, threshold) if screener.partial else {}
    flagged = (negatives >= threshold) | (partial >= partly.get("partial_threshold", np.inf))
    inliers = np.array([r.inliers or 0 for r in found])
    verified = np.array([r.inliers or 0 for r in copies])
    return {
        "threshold": threshold,
        **partly,
        **(
            _verify_threshold(flagged, inliers, verified, index.local.thumbs is not None, target_fpr)
            if screener.verifier is not None
            else {}
        ),
        "target_fpr": target_fpr,
        "view_set": screener.view_set,
        "floor": floor,
        "sample": len(sample),
        "negatives": int(np.isfinite(negatives).sum()),
        "duplicates_excluded": int(sum(len(b) - 1 for b in banned)),
        "fpr_at_threshold": round(float(np.mean(negatives >= threshold)), 4),
        "tpr_at_threshold": round(float(np.mean(positives >= threshold)), 4),
        "negative_percentiles": {
            f"p{q}": round(float(np.percentile(negatives[np.isfinite(negatives)], q)), 4)
            for q in (50, 90, 99, 99.5, 100)
        },
        "curve": [
            {
                "threshold": t,
                "fpr": round(float(np.mean(negatives >= t)), 4),
                "tpr": round(float(np.mean(positives >= t)), 4),
            }
            for t in CURVE
        ],
        "seconds": round(time.time() - clock, 1),
    }


def _duplicates_of(screener: Screener, images: list, ids: list[int]) -> list[set]:
    """Per image: its own id and the training ids it duplicates: at or above the embedder's default threshold
    (calibrated on data split by patient) under a turn, flip, inversion or the tuned shifts and crops -- the
    training set's own near-duplicates (same patient, re-windowed, shifted or flipped), copies, not negatives."""
    embedder = screener.embedder
    general, tuned = embedder.default_views("general"), embedder.default_views("tuned")
    views = tuple(dict.fromkeys(general[:16] + tuned)) if screener.view_set == "general" else tuned
    vectors = embedder.embed_views(images, views)
    k = min(20, len(screener.index))
    sims, found = screener.index.search(vectors.reshape(len(images) * len(views), -1), k=k)
    penalty = np.repeat([view.penalty for view in views], k).astype(np.float32)
    sims, found = sims.reshape(len(images), -1) - penalty, found.reshape(len(images), -1)
    limit = embedder.default_threshold
    banned = [{own} | {int(i) for i in row[s >= limit] if i >= 0} for own, s, row in zip(ids, sims, found)]
    tuned_screener = Screener(screener.index, threshold=limit, view_set="tuned")
    for _ in range(3):  # the refined tuned match too: shifted frames of one scan match only after refinement
        results = tuned_screener.check(images, exclude=banned)
        if not any(r.near_copy for r in results):
            break
        banned = [b | {r.nn_id} if r.near_copy else b for b, r in zip(banned, results)]
    return banned


def _partial_threshold(negatives: np.ndarray, partial: np.ndarray, threshold: float) -> dict:
    """The partial-similarity threshold: just above the highest partial similarity of the negatives the whole-image
    threshold lets through (the partial rule adds no false positive on the index's own images: a few hundred
    negatives cannot measure a 0.5% tail of a second rule), and at least PARTIAL_MARGIN above `threshold` (the
    best half of any pair agrees better than the whole)."""
    flagged = negatives >= threshold
    kept = partial[~flagged & np.isfinite(partial)]
    above = math.floor(float(kept.max()) * 1000) / 1000 + 0.001 if len(kept) else -1.0
    value = round(min(max(threshold + PARTIAL_MARGIN, above), 1.0), 3)
    return {
        "partial_threshold": value,
        "partial_fpr_at_threshold": round(float(np.mean(flagged | (partial >= value))), 4),
    }


def _verify_threshold(
    flagged: np.ndarray,
    inliers: np.ndarray,
    copies: np.ndarray,
    dense: bool = True,
    target_fpr: float = TARGET_FPR,
) -> dict:
    """The verification threshold (affine inliers of a candidate that passed the dense check). With the dense check
    (verify.AGREEMENT): the fewest inliers at which at most `target_fpr` of the negatives the other rules let
    through are verified, within VERIFY_FLOOR..VERIFY_CAP. Look-alike anatomy (hand radiographs of different
    children at 64 px) passes the dense check with 12-20 inliers, so the floor alone flags them; a negative verified
    with VERIFY_DUPLICATE inliers or more is the training set's own duplicate the embedding missed (the same cell
    cropped again, the next frame, the next slice), not a chance match, and is left out, and VERIFY_CAP keeps a
    data set whose duplicates are many from raising the threshold above what copies reach. Without the dense check (an index from before): one above
    the most inliers of any negative the other rules let through, at least VERIFY_FLOOR."""
    kept = np.sort(inliers[~flagged])[::-1]
    if dense:
        chance = kept[kept < VERIFY_DUPLICATE]
        allowed = int(np.floor(target_fpr * len(inliers)))
        value = int(np.clip(chance[allowed] + 1 if allowed < len(chance) else 0, VERIFY_FLOOR, VERIFY_CAP))
    else:
        value = int(max(VERIFY_FLOOR, kept[0] + 1 if len(kept) else 0))
    return {
        "verify_threshold": value,
        "verify_fpr_at_threshold": round(float(np.mean(flagged | (inliers >= value))), 4),
        # the same without the negatives verified as the training set's own duplicates (VERIFY_DUPLICATE inliers)
        "verify_fpr_without_duplicates": round(
            float(np.mean((flagged | (inliers >= value))[inliers < VERIFY_DUPLICATE])) if dense else np.nan, 4
        ),
        "verify_tpr_at_threshold": round(float(np.mean(copies >= value)), 4),
        "verify_negative_inliers": {f"p{q}": float(np.percentile(inliers, q)) for q in (50, 99, 100)},
    }


def _threshold_for(negatives: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold (3 decimals, within THRESHOLD_RANGE) at which at most `target_fpr` of negatives pass."""
    ordered = np.sort(negatives)[::-1]
    allowed = int(np.floor(target_fpr * len(ordered)))
    above = ordered[allowed] if allowed < len(ordered) else -1.0
    threshold = (
        math.floor(above * 1000) / 1000 + 0.001
    )  # strictly above the first negative that must not pass
    return round(float(min(max(threshold, THRESHOLD_RANGE[0]), THRESHOLD_RANGE[1])), 3)
