"""`medisyn study score`: detection of synthetic images (per image and per pair), classification of real vs
synthetic images per class, agreement between readers, results by experience, intervals and a binomial test."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.study.answers import Reader, load_key, read_answers
from medisyn_cli.study.design import CANNOT_TELL, SYNTHETIC
from medisyn_cli.study.report import write_score
from medisyn_cli.study.stats import binomial_greater, bootstrap_pooled, cohen_kappa, fleiss_kappa, proportion

METRICS = (
    "detection_accuracy",
    "detection_sensitivity",
    "detection_specificity",
    "pair_accuracy",
    "pair_sensitivity",
    "pair_specificity",
    "classify_real",
    "classify_synthetic",
)


@dataclass
class Judgements:
    """A reader's (or a group's) answers as scored events."""

    images: list  # (is synthetic, flagged as synthetic) per image of a pair item
    pairs: list  # (kind, right answer, answer)
    classify: list  # (source, label, answer)


def judgements(reader: Reader, key: dict) -> Judgements:
    """Score events of one reader's answered items."""
    result = Judgements([], [], [])
    for item in key["items"]:
        answer = reader.answers.get(item["id"])
        if answer is None:
            continue
        if item["task"] == "pair":
            flags = (answer in ("left", "both"), answer in ("right", "both"))
            result.images.extend(
                (image["source"] == SYNTHETIC, flag) for image, flag in zip(item["images"], flags)
            )
            result.pairs.append((item["kind"], item["answer"], answer))
        else:
            result.classify.append((item["images"][0]["source"], item["answer"], answer))
    return result


def merge(parts: list[Judgements]) -> Judgements:
    """Several readers' events together (pooled or one experience group)."""
    return Judgements(
        [x for p in parts for x in p.images],
        [x for p in parts for x in p.pairs],
        [x for p in parts for x in p.classify],
    )


def chance_level(key: dict) -> float:
    """Best per-image detection accuracy without looking: the larger share of real or synthetic pair images."""
    sources = [image["source"] for item in key["items"] if item["task"] == "pair" for image in item["images"]]
    share = sum(s == SYNTHETIC for s in sources) / len(sources) if sources else 0.5
    return max(share, 1 - share)


def metrics(events: Judgements) -> dict:
    """Every metric as {k, n, value, low, high} (Wilson 95%)."""
    hits = lambda rows: proportion(sum(rows), len(rows))  # noqa: E731
    images, pairs, classify = events.images, events.pairs, events.classify
    return {
        "detection_accuracy": hits([truth == flag for truth, flag in images]),
        "detection_sensitivity": hits([flag for truth, flag in images if truth]),
        "detection_specificity": hits([not flag for truth, flag in images if not truth]),
        "pair_accuracy": hits([right == answer for _, right, answer in pairs]),
        "pair_sensitivity": hits([answer != "none" for kind, _, answer in pairs if kind != "real+real"]),
        "pair_specificity": hits([answer == "none" for kind, _, answer in pairs if kind == "real+real"]),
        "classify_real": hits([label == answer for source, label, answer in classify if source != SYNTHETIC]),
        "classify_synthetic": hits(
            [label == answer for source, label, answer in classify if source == SYNTHETIC]
        ),
    }


def per_class(events: Judgements, classes: list[str]) -> list[dict]:
    """Classification accuracy and 'cannot tell' rate per class and source."""
    rows = []
    for label in classes:
        for source in ("real", SYNTHETIC):
            answers = [a for s, truth, a in events.classify if s == source and truth == label]
            if answers:
                rows.append(
                    {
                        "label": label,
                        "source": source,
                        **proportion(sum(a == label for a in answers), len(answers)),
                        "cannot_tell": sum(a == CANNOT_TELL for a in answers) / len(answers),
                    }
                )
    return rows


def chance_test(events: Judgements, chance: float) -> dict:
    """One-sided exact binomial test of per-image detection accuracy against the chance level."""
    correct = sum(truth == flag for truth, flag in events.images)
    return {
        "chance": chance,
        "correct": correct,
        "n": len(events.images),
        "p_value": binomial_greater(correct, len(events.images), chance),
    }


def agreement(readers: list[Reader], key: dict) -> dict:
    """Fleiss' kappa (Cohen's too for two readers) over the items every reader answered."""
    result: dict = {"readers": len(readers)}
    if len(readers) < 2:
        return result
    for task, name in (("pair", "pair_answers"), ("classify", "classify_answers")):
        items = [
            i["id"] for i in key["items"] if i["task"] == task and all(i["id"] in r.answers for r in readers)
        ]
        ratings = [[r.answers[i] for r in readers] for i in items]
        result[name] = _kappas(ratings)
        if task == "pair":
            flags = [
                [flag for r in readers for flag in _flags(r.answers[i])[side : side + 1]]
                for i in items
                for side in (0, 1)
            ]
            result["image_flags"] = _kappas(flags)
    return result


def _flags(answer: str) -> tuple[bool, bool]:
    return answer in ("left", "both"), answer in ("right", "both")


def _kappas(ratings: list[list]) -> dict:
    entry = {"items": len(ratings), "fleiss_kappa": fleiss_kappa(ratings) if ratings else math.nan}
    if ratings and len(ratings[0]) == 2:
        entry["cohen_kappa"] = cohen_kappa([r[0] for r in ratings], [r[1] for r in ratings])
    return entry


def experience_group(reader: Reader, bins: tuple[int, ...]) -> str:
    """'0-4 years', '5-9 years', '10+ years' (for bins 5, 10) or 'years unknown'."""
    if reader.years is None:
        return "years unknown"
    edges = [0, *bins]
    for low, high in zip(edges, edges[1:]):
        if reader.years < high:
            return f"{low}-{high - 1} years"
    return f"{edges[-1]}+ years"


def score(readers: list[Reader], key: dict, bins: tuple[int, ...] = (5, 10), seed: int = 0) -> dict:
    """Per reader, pooled and per experience group / role: metrics, intervals, tests and agreement."""
    chance = chance_level(key)
    events = {r.id: judgements(r, key) for r in readers}
    rows = [_reader_row(r, events[r.id], key, chance) for r in readers]
    pooled = merge(list(events.values()))
    pooled_row = {
        "reader": "pooled",
        "role": "",
        "years": None,
        "answered": sum(len(r.answers) for r in readers),
        "items": len(key["items"]) * len(readers),
        "complete": all(r["complete"] for r in rows),
        "metrics": metrics(pooled),
        "beats_chance": chance_test(pooled, chance),
        "per_class": per_class(pooled, key["classes"]),
    }
    for name in METRICS:  # intervals that respect readers as the unit: resample readers
        parts = [(row["metrics"][name]["k"], row["metrics"][name]["n"]) for row in rows]
        low, high = bootstrap_pooled(parts, seed=seed)
        pooled_row["metrics"][name].update({"boot_low": low, "boot_high": high})
    return {
        "study_id": key["study_id"],
        "title": key["title"],
        "chance": chance,
        "readers": rows,
        "pooled": pooled_row,
        "groups": _groups(readers, events, bins, chance),
        "agreement": agreement(readers, key),
        "classes": key["classes"],
    }


def _reader_row(reader: Reader, events: Judgements, key: dict, chance: float) -> dict:
    return {
        "reader": reader.id,
        "role": reader.role,
        "years": reader.years,
        "answered": len(reader.answers),
        "items": len(key["items"]),
        "complete": len(reader.answers) == len(key["items"]),
        "source": reader.source,
        "metrics": metrics(events),
        "beats_chance": chance_test(events, chance),
        "per_class": per_class(events, key["classes"]),
    }


def _groups(readers: list[Reader], events: dict, bins: tuple[int, ...], chance: float) -> list[dict]:
    grouped: dict = defaultdict(list)
    for reader in readers:
        grouped["experience", experience_group(reader, bins)].append(reader.id)
        grouped["role", reader.role or "role unknown"].append(reader.id)
    rows = []
    for (by, name), ids in sorted(grouped.items(), key=lambda kv: (kv[0][0], _group_order(kv[0][1]))):
        merged = merge([events[i] for i in ids])
        rows.append(
            {
                "by": by,
                "group": name,
                "readers": len(ids),
                "metrics": metrics(merged),
                "beats_chance": chance_test(merged, chance),
            }
        )
    return rows


def _group_order(name: str) -> tuple:
    head = name.split("-")[0].split("+")[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


def score_study(
    study: str | Path,
    answers: list[str | Path],
    out: str | Path | None = None,
    bins: tuple[int, ...] = (5, 10),
    seed: int = 0,
) -> tuple[dict, dict]:
    """Read the key and every answer file, score them and write the results; (result, written files)."""
    key = load_key(study)
    readers, problems = read_answers(answers, key)
    if not readers:
        raise MedisynError("no usable answer file:\n  " + "\n  ".join(problems))
    if list(bins) != sorted(set(bins)) or any(b <= 0 for b in bins):
        raise MedisynError(f"--years-bins {','.join(map(str, bins))}: expected increasing positive years")
    result = score(readers, key, bins, seed)
    result["problems"] = problems
    written = write_score(result, Path(out) if out else Path(study) / "score")
    return result, written
