"""The design of a reader study: which images form which pair and classification item, in which order (seeded)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from medisyn_cli.core.errors import MedisynError

REAL, SYNTHETIC = "real", "synthetic"
PAIR_KINDS = ("real+synthetic", "real+real", "synthetic+synthetic")
PAIR_ANSWERS = ("none", "left", "right", "both")  # which image(s) of a pair the reader thinks are synthetic
CANNOT_TELL = "cannot tell"
DEFAULT_MIX = (
    0.5,
    0.25,
    0.25,
)  # half of the pair images are synthetic: "always none" and guessing both score 0.5


@dataclass(frozen=True)
class Pick:
    """One image chosen for the study: its set, class and key in its dataset (file path or Parquet row)."""

    source: str
    label: str | None
    key: str


def split_counts(total: int, weights: list[float]) -> list[int]:
    """`total` shared by weight, largest remainder first, ties to the earlier entry."""
    if total < 0 or not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise MedisynError(f"cannot share {total} by weights {weights}")
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def parse_mix(text: str) -> tuple[float, float, float]:
    """'0.5,0.25,0.25' -> the shares of real+synthetic, real+real and synthetic+synthetic pairs."""
    try:
        mix = tuple(float(x) for x in text.split(","))
    except ValueError:
        mix = ()
    if len(mix) != 3 or any(x < 0 for x in mix) or sum(mix) <= 0:
        raise MedisynError(
            f"--pair-mix {text!r}: expected three non-negative shares RS,RR,SS such as 0.5,0.25,0.25"
        )
    return mix  # type: ignore[return-value]


def needed(classes: list, pairs: int, classify: int, mix: tuple[float, float, float]) -> Counter:
    """Images needed per (source, class) for a design (pairs take two images of one class)."""
    need: Counter = Counter()
    for kind, count in zip(PAIR_KINDS, split_counts(pairs, list(mix))):
        for label in _cycle(classes, count):
            first, second = _kind_sources(kind)
            need[first, label] += 1
            need[second, label] += 1
    for (source, label), count in _classify_cells(classes, classify).items():
        need[source, label] += count
    return need


def _cycle(classes: list, count: int) -> list:
    return [classes[i % len(classes)] for i in range(count)]


def _kind_sources(kind: str) -> tuple[str, str]:
    return {
        "real+synthetic": (REAL, SYNTHETIC),
        "real+real": (REAL, REAL),
        "synthetic+synthetic": (SYNTHETIC, SYNTHETIC),
    }[kind]


def _classify_cells(classes: list, classify: int) -> dict:
    cells = [(source, label) for label in classes for source in (REAL, SYNTHETIC)]
    return dict(zip(cells, split_counts(classify, [1.0] * len(cells)))) if classify else {}


def check_pools(
    pools: dict, classes: list, pairs: int, classify: int, mix: tuple[float, float, float]
) -> None:
    """MedisynError naming the first (source, class) with fewer images than the design needs."""
    for (source, label), count in sorted(needed(classes, pairs, classify, mix).items(), key=str):
        have = len(pools.get((source, label), []))
        if have < count:
            name = f"class {label!r}" if label is not None else "images"
            raise MedisynError(
                f"{source} {name}: {count} images needed for --pairs {pairs} and --classify "
                f"{classify}, {have} available (lower --pairs/--classify)"
            )


def draw_design(
    pools: dict, classes: list, pairs: int, classify: int, mix: tuple[float, float, float], seed: int
) -> list[dict]:
    """Pair items then classification items, each block shuffled; every image used once; ids in page order."""
    check_pools(pools, classes, pairs, classify, mix)
    rng = random.Random(seed)
    bags = {cell: rng.sample(keys, len(keys)) for cell, keys in sorted(pools.items(), key=str)}
    take = lambda source, label: Pick(source, label, bags[source, label].pop())  # noqa: E731
    pair_items = []
    for kind, count in zip(PAIR_KINDS, split_counts(pairs, list(mix))):
        flips = _balanced_flips(count, rng)
        for i, label in enumerate(_cycle(_shuffled(classes, rng), count)):
            first, second = (take(s, label) for s in _kind_sources(kind))
            left, right = (second, first) if flips[i] else (first, second)
            pair_items.append(
                {
                    "task": "pair",
                    "kind": kind,
                    "label": label,
                    "images": [left, right],
                    "answer": pair_answer(left, right),
                }
            )
    classify_items = [
        {"task": "classify", "label": label, "images": [take(source, label)], "answer": label}
        for (source, label), count in _classify_cells(classes, classify).items()
        for _ in range(count)
    ]
    rng.shuffle(pair_items)
    rng.shuffle(classify_items)
    for prefix, block in (("p", pair_items), ("c", classify_items)):
        for number, item in enumerate(block, 1):
            item["id"] = f"{prefix}{number:03d}"
    return pair_items + classify_items


def _shuffled(values: list, rng: random.Random) -> list:
    return rng.sample(values, len(values))


def _balanced_flips(count: int, rng: random.Random) -> list[bool]:
    """Half True, half False (the odd one random), in random order: which pairs swap their two images."""
    flips = [i < count // 2 for i in range(count)]
    if count % 2:
        flips[-1] = rng.random() < 0.5
    rng.shuffle(flips)
    return flips


def pair_answer(left: Pick, right: Pick) -> str:
    """The correct answer of a pair: none, left, right or both synthetic."""
    return PAIR_ANSWERS[(left.source == SYNTHETIC) + 2 * (right.source == SYNTHETIC)]
