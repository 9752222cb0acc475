"""Reader-study statistics as plain functions: Wilson intervals, binomial test, Fleiss' and Cohen's kappa, bootstrap."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Sequence

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (nan, nan) when n is 0."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, n: int) -> dict:
    """{k, n, value, low, high}: a proportion with its 95% Wilson interval (value nan when n is 0)."""
    low, high = wilson(successes, n)
    return {"k": successes, "n": n, "value": successes / n if n else math.nan, "low": low, "high": high}


def binomial_greater(successes: int, n: int, chance: float) -> float:
    """One-sided exact binomial p-value that the success rate exceeds `chance` (nan when n is 0)."""
    if n <= 0:
        return math.nan
    from scipy.stats import binomtest

    return float(binomtest(successes, n, chance, alternative="greater").pvalue)


def fleiss_kappa(ratings: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa of items rated by the same number (>= 2) of raters; one sequence of category labels per item."""
    if not ratings:
        return math.nan
    raters = len(ratings[0])
    if raters < 2 or any(len(item) != raters for item in ratings):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    totals: Counter = Counter()
    agreement = 0.0
    for item in ratings:
        counts = Counter(item)
        totals.update(counts)
        agreement += (sum(c * c for c in counts.values()) - raters) / (raters * (raters - 1))
    observed = agreement / len(ratings)
    expected = sum((c / (len(ratings) * raters)) ** 2 for c in totals.values())
    return math.nan if expected >= 1.0 else (observed - expected) / (1 - expected)


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels for the same items (nan when chance agreement is 1)."""
    if len(first) != len(second):
        raise ValueError(
            f"Cohen's kappa needs two equally long rating lists, got {len(first)} and {len(second)}"
        )
    if not first:
        return math.nan
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    a_counts, b_counts = Counter(first), Counter(second)
    expected = sum(a_counts[c] * b_counts[c] for c in a_counts) / (n * n)
    return math.nan if expected >= 1.0 else (observed - expected) / (1 - expected)


def bootstrap_pooled(
    groups: Sequence[tuple[int, int]], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of a pooled proportion sum(k)/sum(n), resampling whole groups (readers)."""
    groups = [g for g in groups if g[1] > 0]
    if len(groups) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        draw = [groups[rng.randrange(len(groups))] for _ in groups]
        values.append(sum(k for k, _ in draw) / sum(n for _, n in draw))
    values.sort()
    return values[int(0.025 * (resamples - 1))], values[int(math.ceil(0.975 * (resamples - 1)))]
