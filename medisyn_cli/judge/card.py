"""The dataset card's label-check section (no heavy imports: card.py uses it for every run)."""

from __future__ import annotations


def card_lines(run: dict) -> list[str]:
    """'## Label check' lines for a run made with --judge (per class: recognised share and yield); none without."""
    judge = run.get("judge")
    if not judge or "per_class" not in judge:
        return []
    lines = ["", "## Label check", "",
             f"Every image was classified by a judge trained on real images (`{judge['judge']}`, {judge['classifier']} "
             f"on `{judge['features']}` features, held-out accuracy on real images "
             f"{_fmt(judge.get('heldout_accuracy'))}). Images whose probability of their own class was below "
             f"{judge['min_label_score']} were rejected and replaced from new seeds ({judge['label_rejected']} in all, "
             f"listed in `rejected.parquet` with reason `label`); each row has `label_score` and `judged_label`. "
             f"Yield: {judge['kept']} kept of {judge['generated']} generated ({_fmt(judge['yield'], 2)}).", "",
             "| label | share of images the judge recognised as this class | yield (kept / generated) | "
             "judge's accuracy on real held-out images |", "|---|---:|---:|---:|"]
    for label, values in judge["per_class"].items():
        lines.append(f"| {label} | {_fmt(values['recognised_share'], 2)} | {_fmt(values['yield'], 2)} | "
                     f"{_fmt(judge.get('heldout_per_class', {}).get(label))} |")
    return lines


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
