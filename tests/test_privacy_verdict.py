"""The memorisation verdict (evaluate/memorisation.py), checked by simulation over many random draws.

Similarities are drawn from quantile tables measured on real 64 px images with the pixel embedder and the
privacy command's Screener (benchmarks/privacy_verdict.py measures the same on fresh splits): dermoscopy (ISIC
2017, ~0.8% natural near-duplicates of training images) and brain MRI (Kaggle compilation: ~31% on a random
split, ~27% among the training images themselves), and planted copies (copy-style change plus noise: ~90% at or
above the threshold). The tests ask what issue #29 asks: copies flagged, natural duplicates alone not flagged,
`memorises` null with an honest sample size where the data cannot tell, and never "no sign" beside near-copies.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.evaluate.memorisation import (
    COPY_SHARE,
    MIN_GROUPS,
    boschloo_greater,
    choose_reference,
    design_effect,
    fisher_greater,
    membership_audit,
    memorisation_tests,
    near_copy_groups,
    near_copy_power,
)

THRESHOLD = 0.97
QUANTILES = (0, 10, 25, 50, 75, 90, 100)
# the 500-image simulations (about a minute in all) run on request, for CI's 20 minutes; the 50-200-image ones
# always run, and benchmarks/privacy_verdict.py covers 500 with the real similarities
ON_REQUEST = pytest.mark.skipif(
    not os.environ.get("MEDISYN_BENCHMARK_TESTS"),
    reason="500-image simulations: set MEDISYN_BENCHMARK_TESTS=1",
)
# similarity to the nearest training image, quantiles below / at-or-above the threshold (measured, see above)
BODY = {
    "dermoscopy": (0.46, 0.644, 0.734, 0.821, 0.886, 0.92, 0.963),
    "brain": (0.613, 0.791, 0.842, 0.888, 0.932, 0.957, 0.969),
}
NEAR = {
    "dermoscopy": (0.9733, 0.978, 0.9827, 0.9904, 0.9982),
    "brain": (0.9705, 0.991, 0.9999, 0.9999, 1.0),
}
COPIES_BELOW, COPIES_NEAR, COPIES_CAUGHT = (
    (0.912, 0.928, 0.945, 0.959, 0.965, 0.967, 0.968),
    (
        0.9731,
        0.9845,
        0.9944,
        0.9981,
        0.9999,
    ),
    0.9,
)
FIXTURES = Path(__file__).parent / "fixtures"


def sample(rng, table: tuple, n: int) -> np.ndarray:
    """n values from a quantile table (piecewise-linear inverse CDF)."""
    return np.interp(rng.random(n), np.linspace(0, 1, len(table)), table)


def fresh(rng, data: str, n: int, rate: float) -> np.ndarray:
    """n real-like images' similarities, a share `rate` of them natural near-copies of training images."""
    near = rng.binomial(n, rate)
    return np.concatenate([sample(rng, NEAR[data], near), sample(rng, BODY[data], n - near)])


def copies(rng, n: int) -> np.ndarray:
    """n planted copies of training images (noisy, transformed): most at or above the threshold."""
    caught = rng.binomial(n, COPIES_CAUGHT)
    return np.concatenate([sample(rng, COPIES_NEAR, caught), sample(rng, COPIES_BELOW, n - caught)])


def run(rng, data, n_s, share, rate_h, rate_s, rate_t, n_h=200, n_t=1000) -> dict:
    """One simulated privacy evaluation: synthetic with round(share * n_s) copies, held-out, training self-reference."""
    k = round(share * n_s)
    synthetic = np.concatenate([fresh(rng, data, n_s - k, rate_s), copies(rng, k)])
    own = fresh(rng, data, n_t, rate_t) if n_t else None
    return memorisation_tests(synthetic, fresh(rng, data, n_h, rate_h), THRESHOLD, train_self=own)


def states(runs: list[dict]) -> dict:
    return {state: np.mean([r["memorises"] is state for r in runs]) for state in (True, False, None)}


@pytest.mark.parametrize(
    "n_s, share",
    [
        (100, 0.10),
        (200, 0.05),
        (200, 0.10),
        pytest.param(500, 0.05, marks=ON_REQUEST),
        pytest.param(500, 0.10, marks=ON_REQUEST),
    ],
)
def test_copies_at_5_and_10_percent_are_flagged_in_95_percent_of_runs(n_s, share):
    rng = np.random.default_rng(n_s + int(100 * share))
    found = states([run(rng, "dermoscopy", n_s, share, 0.008, 0.008, 0.008) for _ in range(150)])
    assert found[True] >= 0.95 and found[False] <= 0.02, found


def test_few_copies_at_100_images_are_mostly_flagged_and_rarely_cleared():
    """5 copies in 100 (a tenth of them below the threshold, as the screen misses them) are flagged in >= 90% of
    runs; 2% copies over a 0.8% natural rate are two images against one natural near-copy expected: even an
    oracle that knows the natural rate flags them in about half the runs at 100 images (it needs 3 near-copies at
    level 0.05), but 500 images mostly do."""
    rng = np.random.default_rng(2)
    five = states([run(rng, "dermoscopy", 100, 0.05, 0.008, 0.008, 0.008) for _ in range(150)])
    two = states([run(rng, "dermoscopy", 100, 0.02, 0.008, 0.008, 0.008) for _ in range(150)])
    large = states([run(rng, "dermoscopy", 500, 0.02, 0.008, 0.008, 0.008) for _ in range(150)])
    assert five[True] >= 0.9 and five[False] <= 0.1, five
    assert two[True] > 0.2 and large[True] >= 0.8, (two, large)


@pytest.mark.parametrize(
    "count, reference_count, images, reference_images",
    [(2, 2, 100, 681), (3, 4, 100, 681), (1, 0, 1, 5), (5, 9, 55, 1119), (0, 3, 40, 200), (12, 3, 300, 900)],
)
def test_the_near_copy_test_is_boschloos_and_never_weaker_than_fishers(
    count, reference_count, images, reference_images
):
    from scipy.stats import boschloo_exact

    table = [[count, reference_count], [images - count, reference_images - reference_count]]
    expected = boschloo_exact(table, alternative="greater", n=64).pvalue
    found = boschloo_greater(count, reference_count, images, reference_images)
    assert found == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert found <= float(fisher_greater(count, reference_count, images, reference_images)) + 1e-12


@pytest.mark.parametrize("n_s", [50, 200, pytest.param(500, marks=ON_REQUEST)])
@pytest.mark.parametrize(
    "rate_h, rate_s, rate_t",
    [
        (
            0.108,
            0.074,
            0.27,
        ),  # the brain MRI split: held-out 10.8%, synthetic 7.4%, training's own 27%
        (0.108, 0.108, 0.27),  # synthetic drawn like held-out
        (0.31, 0.31, 0.31),  # a random split: every set at the data set's natural rate
    ],
)
def test_natural_duplicates_alone_are_flagged_in_at_most_5_percent_of_runs(n_s, rate_h, rate_s, rate_t):
    rng = np.random.default_rng(n_s)
    found = states([run(rng, "brain", n_s, 0.0, rate_h, rate_s, rate_t, n_h=374) for _ in range(150)])
    assert found[True] <= 0.06, found  # the 5% target, with 1 run of Monte-Carlo slack (150 runs: SE 1.8%)


def test_55_synthetic_images_with_3_noisy_copies_are_flagged_and_never_called_clean():
    """The issue's dermoscopy case: 3 copies among 55 images, held-out maximum far below the threshold. Flagged in
    most runs with the training set's own neighbours as reference; never `false`, never "no sign"."""
    rng = np.random.default_rng(55)
    runs = []
    for _ in range(200):
        synthetic = np.concatenate([sample(rng, BODY["dermoscopy"], 52), sample(rng, COPIES_NEAR, 3)])
        heldout = sample(rng, BODY["dermoscopy"], 219)
        own = fresh(rng, "dermoscopy", 900, 0.008)
        runs.append(memorisation_tests(synthetic, heldout, THRESHOLD, train_self=own))
    found = states(runs)
    assert found[True] >= 0.9 and found[False] == 0.0, found
    assert not any("no sign" in r["verdict"] for r in runs)
    assert all("3 of 55 synthetic images are near-copies" in r["verdict"] for r in runs)


def test_without_the_training_reference_a_small_held_out_set_leaves_3_copies_undecidable():
    """The same 55 images against 50 held-out images alone: the test cannot fire, so the verdict is null (not
    false) and names the sample that would decide."""
    rng = np.random.default_rng(5)
    synthetic = np.concatenate([sample(rng, BODY["dermoscopy"], 52), sample(rng, COPIES_NEAR, 3)])
    result = memorisation_tests(synthetic, sample(rng, BODY["dermoscopy"], 50), THRESHOLD)
    assert result["memorises"] is None and result["verdict"].startswith("undecidable at this sample size")
    assert (
        "no sign" not in result["verdict"] and "3 of 55 synthetic images are near-copies" in result["verdict"]
    )
    assert result["power"]["power"] < 0.8


def test_the_sample_size_named_as_deciding_reaches_the_power_target_by_simulation():
    """synthetic_images_needed is computed exactly; drawing that many images with 5% copies over the reference's
    rate, the near-copy test fires in about `power` of the runs."""
    rng = np.random.default_rng(11)
    heldout = fresh(rng, "dermoscopy", 300, 0.01)
    near_ref = int((heldout >= THRESHOLD).sum())
    level = memorisation_tests(np.array([0.5]), heldout, THRESHOLD)["test_level"]
    result = memorisation_tests(fresh(rng, "dermoscopy", 40, 0.01), heldout, THRESHOLD)
    needed = result["power"]["synthetic_images_needed"]
    assert result["memorises"] is None and needed > 40
    expected = near_copy_power(needed, near_ref, 300, level)
    assert expected >= 0.8 and near_copy_power(needed - 1, near_ref, 300, level) < 0.8 + 0.05
    rate = near_ref / 300 + COPY_SHARE * (1 - near_ref / 300)
    fired = [
        memorisation_tests(np.where(rng.random(needed) < rate, 0.99, 0.5), heldout, THRESHOLD)["p_values"][
            "near_copies"
        ]
        < level
        for _ in range(300)
    ]
    assert abs(np.mean(fired) - expected) < 0.08, (np.mean(fired), expected)


def test_a_clean_large_set_is_cleared_with_no_sign_and_its_power():
    rng = np.random.default_rng(3)
    result = run(rng, "dermoscopy", 500, 0.0, 0.0, 0.0, 0.0)
    assert result["memorises"] is False and result["verdict"].startswith("no sign of memorisation")
    assert result["power"]["power"] >= 0.8 and result["power"]["synthetic_images_needed"] == 500


def test_the_verdict_never_says_no_sign_when_near_copies_exist():
    rng = np.random.default_rng(4)
    for n_s, share, rate in [(500, 0.0, 0.008), (200, 0.02, 0.008), (50, 0.04, 0.0), (500, 0.0, 0.3)]:
        for _ in range(30):
            result = run(rng, "dermoscopy" if rate < 0.1 else "brain", n_s, share, rate, rate, rate)
            if result["near_copy_count"]["synthetic"]:
                assert (
                    "no sign" not in result["verdict"]
                    and "near-copies of training images" in result["verdict"]
                )


def test_held_out_near_duplicates_stay_in_the_reference():
    """The issue's first failure: held-out near-duplicates were dropped, so a synthetic set with them at the same
    rate looked closer. Kept, the near-copy rates compare like with like."""
    heldout = np.array([0.99] * 11 + [0.8] * 89)
    synthetic = np.array([0.99] * 8 + [0.8] * 92)
    result = memorisation_tests(synthetic, heldout, THRESHOLD)
    assert result["reference_images"] == 100 and result["near_copy_rate"]["reference"] == 0.11
    assert result["memorises"] is not True and result["p_values"]["near_copies"] > 0.5


def test_the_training_self_reference_joins_only_where_it_agrees_with_held_out():
    rng = np.random.default_rng(9)
    heldout = fresh(rng, "brain", 300, 0.108)
    _, joined = choose_reference(heldout, fresh(rng, "brain", 1000, 0.108), THRESHOLD)
    _, apart = choose_reference(heldout, fresh(rng, "brain", 1000, 0.27), THRESHOLD)
    assert joined["source"] == "heldout+train_self" and joined["train_self"] == 1000
    assert (
        apart["source"] == "heldout"
        and apart["train_self"] == 0
        and apart["agreement_p"]["near_copy_rate"] < 0.01
    )


def test_the_tail_test_reads_the_held_out_tail_even_where_the_self_reference_joins():
    """A self-reference a little further from training than the held-out set (as a split leaves it when more of a
    data set's duplicates fall across it) joins the near-copy count's reference, but a synthetic set drawn like the
    held-out set is not in the pooled reference's tail: the pooled cut gave p = 1.3e-5 here, below 0.0025."""
    rng = np.random.default_rng(1)
    heldout, own = rng.normal(0.80, 0.03, 200), rng.normal(0.785, 0.03, 600)
    result = memorisation_tests(rng.normal(0.80, 0.03, 500), heldout, THRESHOLD, train_self=own)
    assert result["reference"]["source"] == "heldout+train_self"
    assert result["heldout_p95_similarity"] == pytest.approx(np.percentile(heldout, 95))
    assert result["p_values"]["tail_p95"] > 0.01 and result["flagged_by"] == []


def grouped_reference(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """50 held-out images (10 near-copies) and 800 self-reference images whose 160 near-copies come in groups of
    `size` (the rest alone): both at a 20% natural near-copy rate."""
    heldout = np.r_[np.full(10, 0.99), np.linspace(0.6, 0.95, 40)]
    own = np.r_[np.full(160, 0.99), np.linspace(0.6, 0.95, 640)]
    groups = np.r_[np.arange(160) // size, 1000 + np.arange(640)]
    return heldout, own, groups


def test_near_copy_groups_join_pairs_chains_and_images_sharing_a_nearest_training_image():
    ids, nn = np.array([0, 1, 2, 3, 4, 5, 6]), np.array([1, 0, 3, 4, 0, 9, 9])
    groups = near_copy_groups(ids, nn, np.array([0.99, 0.99, 0.98, 0.5, 0.1, 0.975, 0.99]), THRESHOLD)
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[5] == groups[6]
    assert len({groups[0], groups[2], groups[4], groups[5]}) == 4  # 3 -> 4 and 4 -> 0 are below the threshold


def test_design_effect_is_one_for_independent_images_and_near_the_group_size_for_many_duplicate_groups():
    hit = np.r_[np.ones(400, bool), np.zeros(3600, bool)]
    assert design_effect(hit, None) == 1.0 and design_effect(hit, np.arange(4000)) == pytest.approx(1.0)
    pairs = design_effect(hit, np.r_[np.arange(400) // 2, 400 + np.arange(3600)])  # 200 groups of 2
    fours = design_effect(hit, np.r_[np.arange(400) // 4, 400 + np.arange(3600)])  # 100 groups of 4
    # groups of g hits among single misses: g (1 - share) + share (share 0.1)
    assert pairs == pytest.approx(2 * 0.9 + 0.1, rel=0.01) and fours == pytest.approx(4 * 0.9 + 0.1, rel=0.01)
    assert design_effect(np.zeros(10, bool), np.zeros(10)) == 1.0


def test_design_effect_of_a_few_duplicate_pairs_is_not_used():
    """Dermoscopy's case: 2 near-copies among 800 self-reference images, one mutual pair. Its estimate (~2) would
    rest on one group and halve the reference; below MIN_GROUPS groups the images count as independent."""
    hit = np.r_[np.ones(2, bool), np.zeros(798, bool)]
    assert design_effect(hit, np.r_[0, 0, 1 + np.arange(798)]) == 1.0
    many = np.r_[np.ones(2 * MIN_GROUPS, bool), np.zeros(800, bool)]
    assert design_effect(many, np.r_[np.arange(2 * MIN_GROUPS) // 2, 1000 + np.arange(800)]) > 1.8


def test_grouped_duplicates_in_the_self_reference_no_longer_fire_the_near_copy_count():
    """Synthetic images at 25% near-copies against a 20% reference whose self-reference duplicates come in groups
    of 8: counted as 800 independent images the difference is significant; counted by its design effect (the
    same information as ~120 independent images) it is not. The rate is unchanged, only its precision."""
    heldout, own, groups = grouped_reference(8)
    synthetic = np.r_[np.full(125, 0.99), np.linspace(0.6, 0.95, 375)]
    as_images = memorisation_tests(synthetic, heldout, THRESHOLD, train_self=own)
    as_groups = memorisation_tests(synthetic, heldout, THRESHOLD, train_self=own, train_self_groups=groups)
    level = as_images["test_levels"]["near_copies"]
    assert as_images["memorises"] is True and as_images["p_values"]["near_copies"] < level
    assert as_groups["memorises"] is not True and as_groups["p_values"]["near_copies"] > level
    effect = as_groups["reference"]["design_effect"]["near_copies"]
    assert 6 < effect < 8 and as_groups["reference"]["source"] == "heldout+train_self"
    assert as_groups["effective_reference_images"] == 50 + round(800 / effect) < as_groups["reference_images"]
    assert as_groups["near_copy_rate"]["reference"] == as_images["near_copy_rate"]["reference"] == 0.2


def test_copies_of_distinct_training_images_still_fire_against_a_grouped_reference():
    heldout, own, groups = grouped_reference(8)
    synthetic = np.r_[np.full(100, 0.99), np.full(50, 0.995), np.linspace(0.6, 0.95, 350)]  # 10% copies
    result = memorisation_tests(synthetic, heldout, THRESHOLD, train_self=own, train_self_groups=groups)
    assert result["memorises"] is True and "near_copies" in result["flagged_by"]


def test_a_self_reference_of_single_images_is_judged_as_without_groups():
    """Dermoscopy's case (3 near-copy groups in 962 images): no group, no change to any test or to the power."""
    rng = np.random.default_rng(12)
    synthetic, heldout, own = (
        fresh(rng, "dermoscopy", 100, 0.03),
        fresh(rng, "dermoscopy", 200, 0.003),
        fresh(rng, "dermoscopy", 600, 0.003),
    )
    alone = memorisation_tests(
        synthetic, heldout, THRESHOLD, train_self=own, train_self_groups=np.arange(600)
    )
    plain = memorisation_tests(synthetic, heldout, THRESHOLD, train_self=own)
    assert alone["p_values"] == plain["p_values"] and alone["power"] == plain["power"]
    assert alone["effective_reference_images"] == plain["reference_images"] == 800


def test_group_labels_must_match_the_self_reference():
    with pytest.raises(MedisynError, match="3 group labels for 4 train_self images"):
        choose_reference(np.array([0.5, 0.6]), np.array([0.5, 0.6, 0.7, 0.8]), THRESHOLD, np.arange(3))


def test_membership_audit_auc_matches_sklearn_and_its_interval_covers_chance_under_the_null():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    synthetic, heldout = np.round(rng.normal(0.8, 0.05, 120), 2), np.round(rng.normal(0.78, 0.05, 90), 2)
    audit = membership_audit(synthetic, heldout)
    labels = np.r_[np.ones(120), np.zeros(90)]
    assert audit["auc"] == pytest.approx(roc_auc_score(labels, np.r_[synthetic, heldout]))
    assert audit["roc"][0] == [0.0, 0.0] and audit["roc"][-1] == [1.0, 1.0]
    covered = []
    for _ in range(300):
        low, high = membership_audit(rng.normal(0.8, 0.05, 100), rng.normal(0.8, 0.05, 100))["auc_ci95"]
        covered.append(low <= 0.5 <= high)
    assert 0.92 <= np.mean(covered) <= 0.98


@pytest.mark.slow
def test_privacy_on_real_images_names_3_noisy_copies_among_55_and_never_clears_them(tmp_path):
    """Real fixture images: 52 synthetic images made from other patients' images (new crops, turns, contrast) and
    3 noisy JPEG copies of training images; the copies are reported on their own and the verdict is not false."""
    from medisyn_cli.evaluate.privacy import PrivacyConfig, run_privacy

    rng = np.random.default_rng(0)
    others = sorted((FIXTURES / "screen" / "distinct").glob("*.png"))
    train = sorted((FIXTURES / "images" / "images").glob("*.png"))
    synthetic, heldout = tmp_path / "synthetic", tmp_path / "heldout"
    synthetic.mkdir()
    heldout.mkdir()
    for n in range(52):
        image = Image.open(others[n % len(others)]).convert("RGB").rotate(90 * (n // len(others) % 4))
        side = int(image.width * rng.uniform(0.7, 0.8))
        x, y = rng.integers(0, image.width - side, 2)
        image = image.crop((x, y, x + side, y + side)).resize((64, 64))
        ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2)).save(synthetic / f"novel_{n}.png")
    for n, path in enumerate(train[:3]):
        noisy = np.asarray(Image.open(path).convert("RGB"), np.float64) + rng.normal(0, 6, (64, 64, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(synthetic / f"copy_{n}.jpg", quality=85)
    for path in others:
        ImageOps.mirror(Image.open(path)).save(heldout / path.name)
    result = run_privacy(
        PrivacyConfig(
            (str(FIXTURES / "images"),),
            (str(heldout),),
            (str(synthetic),),
            pairs=0,
            out=str(tmp_path / "out"),
        )
    )
    copies = result["synthetic_near_copies"]
    assert copies["count"] >= 3 and {Path(e["nn_key"]).name for e in copies["examples"]} >= {
        p.name for p in train[:3]
    }
    assert result["memorises"] is not False and "no sign" not in result["verdict"]
    assert f"{copies['count']} of 55 synthetic images are near-copies" in result["verdict"]
    assert result["warnings"][0].startswith("--synthetic:") and "privacy finding" in result["warnings"][0]
