"""The label check inside `generate --judge`: keep an image only when the judge recognises its class.

`LabelCheck` is the image check `label` (screening.checks): an image whose own-label score is below
`--min-label-score` is rejected ("off-label") and replaced from a new recorded seed; rejections go to
rejected.parquet with reason `label`, the score, the judged label and the image (it passed the privacy screen:
`medisyn report` measures diversity before the label filter with it). `run_checks` gives the checks of a run:
near_copy (--index), label (--judge), then each --check, in that order.
"""

from __future__ import annotations

from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.judge.model import Judge, load_judge, read_meta
from medisyn_cli.screening.checks import (
    Checks,
    NearCopyCheck,
    Verdict,
    get_check,
    parse_check_list,
)

DEFAULT_MIN_SCORE = 0.5
NEAR_COPY, LABEL = NearCopyCheck.name, "label"


class LabelCheck:
    """The judge as an image check: rejects an image whose own-label probability is below `min_score`."""

    name = LABEL
    counter = "label_rejected"
    columns = {"label_score": "float32", "judged_label": "string"}
    keeps_image = True  # off-label images passed the privacy screen (report measures diversity with them)
    records_message = False  # its columns say why (label_score, judged_label)

    def __init__(self, judge: Judge, min_score: float):
        self.judge, self.min_score = judge, min_score

    def check(self, images: list, labels: list[str]) -> list[Verdict]:
        """A Verdict per image; details: its own-label score and the label the judge gives it."""
        scores, judged = self.judge.label_scores(images, list(labels))
        verdicts = []
        for score, label, wanted in zip(scores, judged, labels):
            score = round(float(score), 6)
            off = score < self.min_score
            reason = f"off-label: the judge scores '{wanted}' {score:.2f} (judged '{label}')" if off else ""
            verdicts.append(Verdict(off, reason, {"label_score": score, "judged_label": label}))
        return verdicts

    def ended_reason(self, verdict: Verdict, image_id: str, label: str, max_attempts: int) -> str:
        """The model does not draw the class recognisably."""
        return (
            f"{max_attempts} images in a row for {image_id} were rejected, the last because the judge did not "
            f"recognise '{label}' (score {verdict.details['label_score']:.2f}, judged "
            f"'{verdict.details['judged_label']}'); the model does not draw this class recognisably: check its "
            f"prompts, or lower --min-label-score"
        )


def label_check(config) -> LabelCheck:
    """The label check of a run's --judge and --min-label-score."""
    if getattr(config, "judge", None) is None:
        raise MedisynError("--check label: needs --judge (a judge folder from medisyn judge build)")
    return LabelCheck(load_judge(config.judge), min_score(config))


def run_checks(screener, judge: Judge | None, config) -> Checks | None:
    """The run's checks, in order: near_copy (the screener of --index), label (--judge), then each --check;
    None when it has none."""
    checks = [NearCopyCheck(screener)] if screener is not None else []
    checks += [LabelCheck(judge, min_score(config))] if judge is not None else []
    for name in extra_checks(config):
        if name not in (check.name for check in checks):
            checks.append(get_check(name)(config))
    return Checks(checks) if checks else None


def extra_checks(config) -> tuple[str, ...]:
    """The names of --check (registered ones; MedisynError naming an unknown one)."""
    return parse_check_list(getattr(config, "checks", ()))


def min_score(config) -> float:
    """--min-label-score, 0.5 when not given."""
    return DEFAULT_MIN_SCORE if config.min_label_score is None else float(config.min_label_score)


def open_judge(config, manifest) -> Judge | None:
    """The judge of --judge, checked before any model loads: readable, knows every class of the manifest."""
    extra_checks(config)  # an unknown --check fails here too, before any model loads
    score = config.min_label_score
    if config.judge is None:
        if score is not None:
            raise MedisynError("--min-label-score needs --judge (a judge folder from medisyn judge build)")
        return None
    if score is not None and not (isinstance(score, (int, float)) and 0.0 <= score <= 1.0):
        raise MedisynError(
            f"--min-label-score: {score} is outside [0, 1] (the judge's probability of the image's own label)"
        )
    judge = load_judge(config.judge)
    unknown = [label for label in manifest.labels if label not in judge.classes]
    if unknown:
        raise MedisynError(
            f"--judge {config.judge}: the judge does not know class(es) {', '.join(unknown)} of "
            f"{config.manifest} (it knows {', '.join(judge.classes)}); build it on real images "
            f"of these classes"
        )
    return judge


def judge_key(config) -> dict:
    """The run-key entries of the label check (None, None without a judge)."""
    if config.judge is None:
        return {"judge_fingerprint": None, "min_label_score": None}
    return {
        "judge_fingerprint": read_meta(Path(config.judge))["fingerprint"],
        "min_label_score": min_score(config),
    }


def judge_record(judge: Judge | None, config) -> dict | None:
    """What run.json records of the judge (rejections and yield are added when the run completes)."""
    if judge is None:
        return None
    meta = judge.meta
    return {
        "judge": str(Path(judge.path).resolve()),
        "fingerprint": judge.fingerprint,
        "classifier": meta["classifier"],
        "features": meta.get("features", {}).get("embedder", "small-cnn"),
        "classes": judge.classes,
        "heldout_accuracy": meta.get("heldout_accuracy"),
        "heldout_per_class": {c: v.get("accuracy") for c, v in meta.get("per_class", {}).items()},
        "min_label_score": min_score(config),
        "rejected_file": "rejected.parquet",
    }


def judge_totals(section: dict, counts: dict) -> dict:
    """run.json's judge section completed with per-class label rejections, recognised share and yield."""
    per_class = {}
    for label, c in counts.items():
        checked = c.written + c.label_rejected
        attempts = checked + c.rejected
        per_class[label] = {
            "kept": c.written,
            "label_rejected": c.label_rejected,
            "near_copies": c.rejected,
            "recognised_share": round(c.written / checked, 4) if checked else None,
            "yield": round(c.written / attempts, 4) if attempts else None,
        }
    kept = sum(c.written for c in counts.values())
    attempts = kept + sum(c.rejected + c.label_rejected for c in counts.values())
    section.update(
        {
            "label_rejected": sum(c.label_rejected for c in counts.values()),
            "per_class": per_class,
            "generated": attempts,
            "kept": kept,
            "yield": round(kept / attempts, 4) if attempts else None,
        }
    )
    return section
