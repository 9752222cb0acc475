"""benchmarks/privacy_verdict.py's model of the privacy command's similarities: the pairwise similarity raised to
the Screener's where the Screener's match is in the run's training set, and the Screener's matches themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FIXTURES = Path(__file__).parent / "fixtures"


def benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    import privacy_verdict

    return privacy_verdict


def found_of(
    pairs: list, copies: list, self_ids: list, self_sims: list, copy_ids: list, copy_sims: list
) -> dict:
    return {
        "threshold": 0.97,
        "pairs": np.array(pairs, np.float32),
        "copies": np.array(copies, np.float32),
        "self_ids": np.array(self_ids),
        "self_sims": np.array(self_sims, np.float32),
        "copy_ids": np.array(copy_ids),
        "copy_sims": np.array(copy_sims, np.float32),
    }


def test_the_screeners_match_counts_only_when_it_is_in_the_training_set():
    """Image 0's Screener match is image 2 at 1.0 (a copy only the verification confirms): it counts where 2 is a
    training image, and the pairwise nearest stands where it is not."""
    found = found_of(
        pairs=[[1, 0.90, 0.80, 0.85], [0.9, 1, 0.7, 0.6], [0.8, 0.7, 1, 0.5], [0.85, 0.6, 0.5, 1]],
        copies=np.eye(4).tolist(),
        self_ids=[[2, 3, -1, -1], [0, -1, -1, -1], [0, -1, -1, -1], [0, -1, -1, -1]],
        self_sims=[[1.0, 0.99, -np.inf, -np.inf], [0.9, -np.inf, -np.inf, -np.inf]]
        + [[0.5] + [-np.inf] * 3] * 2,
        copy_ids=[[0] + [-1] * 3, [1] + [-1] * 3, [2] + [-1] * 3, [3] + [-1] * 3],
        copy_sims=[[0.98] + [-np.inf] * 3] * 4,
    )
    nearest = benchmark().nearest
    sims, ids = nearest(found, np.array([0]), np.array([1, 2]))
    assert sims.tolist() == [1.0] and ids.tolist() == [2]
    sims, ids = nearest(found, np.array([0]), np.array([1, 3]))  # 2 held out: the next match, 3 at 0.99
    assert np.allclose(sims, [0.99]) and ids.tolist() == [3]
    sims, ids = nearest(found, np.array([0]), np.array([1]))  # no match in the training set: pairwise 0.90
    assert np.allclose(sims, [0.90]) and ids.tolist() == [1]


def test_a_training_image_never_counts_itself_and_a_copy_keeps_the_higher_similarity():
    found = found_of(
        pairs=[[1, 0.6], [0.6, 1]],
        copies=[[0.95, 0.5], [0.5, 0.99]],
        self_ids=[[-1] * 4] * 2,
        self_sims=[[-np.inf] * 4] * 2,
        copy_ids=[[0] + [-1] * 3, [1] + [-1] * 3],
        copy_sims=[[0.975] + [-np.inf] * 3, [0.9] + [-np.inf] * 3],
    )
    nearest = benchmark().nearest
    sims, ids = nearest(found, np.array([0, 1]), np.array([0, 1]), own=True)
    assert np.allclose(sims, [0.6, 0.6]) and ids.tolist() == [1, 0]
    sims, _ = nearest(found, np.array([0, 1]), np.array([0, 1]), copies=True)
    assert np.allclose(sims, [0.975, 0.99])  # the Screener's refinement for 0, the pairwise view for 1


def test_the_screeners_matches_find_each_duplicate_in_turn_and_stop_at_the_first_non_copy():
    """Real fixture images, one of them twice (a duplicate pair): each copy is matched to its source; the duplicate's
    other half is found first, and the search goes on once, past the pair, to a non-copy."""
    verdict = benchmark()
    paths = sorted((FIXTURES / "images" / "images").glob("*.png"))[:12]
    images = [Image.open(path).convert("RGB") for path in paths]
    images.append(images[0].copy())
    screener = verdict.privacy_screener(images)
    ids, sims = verdict.matches(screener, images, [{i} for i in range(len(images))])
    assert ids[0, 0] == len(images) - 1 and ids[-1, 0] == 0 and sims[0, 0] >= screener.threshold
    assert ids[0, 1] >= 0 and sims[0, 1] < screener.threshold and ids[0, 2] == -1
    assert all(ids[i, 1] == -1 for i in range(1, len(images) - 1) if sims[i, 0] < screener.threshold)
    copies = [Image.fromarray(np.asarray(image)).rotate(3) for image in images[1:5]]
    copy_ids, _ = verdict.matches(screener, copies, [set() for _ in copies])
    assert copy_ids[:, 0].tolist() == [1, 2, 3, 4]


def test_a_held_out_set_below_200_images_is_warned_about():
    from medisyn_cli.evaluate.memorisation import SMALL_HELDOUT, heldout_size_warning

    assert heldout_size_warning(SMALL_HELDOUT) is None and heldout_size_warning(5000) is None
    text = heldout_size_warning(50)
    assert text.startswith("--heldout: 50 images; below 200") and "hold out 200 or more" in text
