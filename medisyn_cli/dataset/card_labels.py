"""The dataset card's label-check sections, rendered from the run record's `judge` and `alignment` entries."""

from __future__ import annotations


def card_lines(run: dict) -> list[str]:
    """'## Label check' lines: for a run made with --judge (per class: recognised share, yield, rejections)
    and for a run measured by `medisyn evaluate alignment` (per class: GAN-test accuracy against the real
    ceiling)."""
    return _judged_lines(run.get("judge")) + _alignment_lines(run.get("alignment"))


def _alignment_lines(result: dict | None) -> list[str]:
    if not result:
        return []
    lines = [
        "",
        "## Label alignment",
        "",
        f"`medisyn evaluate alignment` with the judge `{result['judge']}` ({result['classifier']}): "
        f"{_fmt(result['gan_test_accuracy'])} of the {result['images']} images are classified as their "
        f"own class by a classifier trained on real images, whose accuracy on real held-out images is "
        f"{_fmt(result.get('ceiling_real_heldout_accuracy'))}.",
        "",
        "| label | share of images the judge recognised as this class | mean label score | "
        "judge's accuracy on real held-out images |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {row['label']} | {_fmt(row['gan_test_accuracy'], 2)} | "
        f"{_fmt(row.get('mean_label_score'), 2)} | {_fmt(row['real_heldout_accuracy'])} |"
        for row in result["per_class"]
    ]
    return lines


def _judged_lines(judge: dict | None) -> list[str]:
    if not judge or "per_class" not in judge:
        return []
    lines = [
        "",
        "## Label check",
        "",
        f"Every image was classified by a judge trained on real images (`{judge['judge']}`, "
        f"{judge['classifier']} on `{judge['features']}` features, held-out accuracy on real images "
        f"{_fmt(judge.get('heldout_accuracy'))}). Images whose probability of their own class was below "
        f"{judge['min_label_score']} were rejected and replaced from new seeds "
        f"({judge['label_rejected']} in all, listed in `rejected.parquet` with reason `label`); each "
        f"row has `label_score` and `judged_label`. Yield: {judge['kept']} kept of {judge['generated']} "
        f"generated ({_fmt(judge['yield'], 2)}).",
        "",
        "| label | share of images the judge recognised as this class | yield (kept / generated) | "
        "rejected: label | rejected: near-copy | judge's accuracy on real held-out images |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, values in judge["per_class"].items():
        generated = values["kept"] + values["label_rejected"] + values["near_copies"]
        lines.append(
            f"| {label} | {_fmt(values['recognised_share'], 2)} | {_fmt(values['yield'], 2)} "
            f"({values['kept']} / {generated}) | {values['label_rejected']} | "
            f"{values['near_copies']} | {_fmt(judge.get('heldout_per_class', {}).get(label))} |"
        )
    return lines


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
