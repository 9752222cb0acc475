"""The label check inside `generate --judge`: keep an image only when the judge recognises its class.

`with_judge(screener, judge, min_score)` wraps the run's privacy screener (or None) and the judge into one
`LabelCheck`, which `generate.generate_screened` uses like a screener: an image that is a near-copy of a training
image (reason `near_copy`) or whose own-label score is below `min_score` (reason `label`) is rejected and
replaced from a new recorded seed, and `--max-attempts` rejections in a row end its class with a message that
says which. Rejections go to rejected.parquet with the reason (`JudgedRejectedLog`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.judge.model import Judge, load_judge, read_meta
from medisyn_cli.screening.screener import MATCH_FIELDS, RejectedLog

DEFAULT_MIN_SCORE = 0.5
NEAR_COPY, LABEL = "near_copy", "label"


@dataclass(frozen=True)
class Check:
    """One image's verdict: rejected (`near_copy`, the name generate_screened reads) for a reason, or kept."""

    near_copy: bool  # rejected, for either reason
    reason: str | None  # NEAR_COPY, LABEL or None (kept)
    label_score: float
    judged_label: str
    privacy: object | None = None  # the ScreenResult when the run also screens against an index

    def __getattr__(self, name: str):
        """The privacy result's MATCH_FIELDS (nn_id, nn_key, nn_similarity...), else None."""
        if name in MATCH_FIELDS:
            return getattr(self.privacy, name) if self.privacy is not None else None
        raise AttributeError(name)

    def ended_reason(self, image_id: str, label: str, max_attempts: int) -> str:
        """Why a class ended after `max_attempts` rejections in a row of one image."""
        if self.reason == NEAR_COPY:
            return (
                f"{max_attempts} images in a row for {image_id} were rejected, the last a near-copy of a training "
                f"image ({self.nn_key}, similarity {self.nn_similarity:.3f}); the model memorises this class"
            )
        return (
            f"{max_attempts} images in a row for {image_id} were rejected, the last because the judge did not "
            f"recognise '{label}' (score {self.label_score:.2f}, judged '{self.judged_label}'); the model does "
            f"not draw this class recognisably: check its prompts, or lower --min-label-score"
        )


class LabelCheck:
    """The privacy screener (optional) and the judge, as one screener over generated items."""

    judges_labels = True

    def __init__(self, screener, judge: Judge, min_score: float):
        self.screener, self.judge, self.min_score = screener, judge, min_score

    def check_items(self, items: list) -> list[Check]:
        """A Check per generated item (its image and its job's label), in order."""
        images = [item.image for item in items]
        privacy = self.screener.check(images) if self.screener is not None else [None] * len(items)
        scores, judged = self.judge.label_scores(images, [item.job.label for item in items])
        checks = []
        for result, score, label in zip(privacy, scores, judged):
            reason = (
                NEAR_COPY
                if result is not None and result.near_copy
                else LABEL
                if score < self.min_score
                else None
            )
            checks.append(Check(reason is not None, reason, round(float(score), 6), label, result))
        return checks


def with_judge(screener, judge: Judge | None, config):
    """The screener generate uses: the privacy screener alone, or a LabelCheck when the run has a judge."""
    return screener if judge is None else LabelCheck(screener, judge, min_score(config))


def min_score(config) -> float:
    """--min-label-score, 0.5 when not given."""
    return DEFAULT_MIN_SCORE if config.min_label_score is None else float(config.min_label_score)


def open_judge(config, manifest) -> Judge | None:
    """The judge of --judge, checked before any model loads: readable, knows every class of the manifest."""
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


# --- rejected.parquet with reasons ---------------------------------------------------------------------


class JudgedRejectedLog(RejectedLog):
    """rejected.parquet of a judged run: the near-copy columns (empty for label rejections without an index) plus
    `reason` (near_copy | label), `label_score`, `judged_label` and, for label rejections only, the `image` (PNG
    bytes: they passed the privacy screen; `medisyn report` measures diversity before the label filter with
    them). A near-copy's pixels are never stored."""

    SCHEMA = {
        **RejectedLog.SCHEMA,
        "reason": "string",
        "label_score": "float32",
        "judged_label": "string",
        "image": "binary",
    }

    def row(self, item) -> dict:
        """One rejected `Generated` item (its Check in `.screen`): the near-copy columns, reason and score."""
        check = item.screen
        return {
            **super().row(item),
            "reason": check.reason,
            "label_score": check.label_score,
            "judged_label": check.judged_label,
            "image": item.png() if check.reason == LABEL else None,
        }


def rejected_log(path: Path, screener) -> RejectedLog:
    """The batch's rejected log: with reasons when the run has a judge."""
    return JudgedRejectedLog(path) if isinstance(screener, LabelCheck) else RejectedLog(path)
