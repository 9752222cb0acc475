"""The dataset card's label-check section (no heavy imports: card.py uses it for every run)."""

from __future__ import annotations


def card_lines(run: dict) -> list[str]:
    """'## Label check' lines: for a run made with --judge (per class: recognised share and yield) and for a run
    measured by `medisyn evaluate alignment` (per class: GAN-test accuracy against the real ceiling)."""
    return _judged_lines(run.get("judge")) + _alignment_lines(run.get("alignment"))


def _alignment_lines(result: dict | None) -> list[str]:
    if not result:
        return []
    lines = ["", "## Label alignment", "",
             f"`medisyn evaluate alignment` with the judge `{result['judge']}` ({result['classifier']}): "
             f"{_fmt(result['gan_test_accuracy'])} of the {result['images']} images are classified as their own "
             f"class by a classifier trained on real images, whose accuracy on real held-out images is "
             f"{_fmt(result.get('ceiling_real_heldout_accuracy'))}.", "",
             "| label | share of images the judge recognised as this class | judge's accuracy on real held-out images |",
             "|---|---:|---:|"]
    lines += [f"| {row['label']} | {_fmt(row['gan_test_accuracy'], 2)} | {_fmt(row['real_heldout_accuracy'])} |"
              for row in result["per_class"]]
    return lines


def _judged_lines(judge: dict | None) -> list[str]:
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
