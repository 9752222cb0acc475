"""Label check: a classifier trained on real images judges whether each synthetic image shows its class.

    from medisyn_cli.judge import JudgeConfig, build_judge, load_judge
    meta = build_judge(JudgeConfig(real=("../shared/data/isic2017_dermoscopy",), out="derm-judge"))
    judge = load_judge("derm-judge")
    scores, judged = judge.label_scores(images, labels)

Modules: model.py (classifiers knn / linear / cnn, the judge folder, `load_judge`), build.py (`judge build`:
split, train, measure, save), metrics.py (confusion, calibration), screening.py (the label check inside
`generate --judge`: keep / reject, rejected.parquet with a reason, run key, card), alignment.py (`evaluate
alignment`: GAN-test accuracy per class and confusion matrix of a synthetic set).
"""

from __future__ import annotations

from medisyn_cli.core.lazy import lazy_getattr

_API = {
    "JudgeConfig": ("build", "JudgeConfig"),
    "build_judge": ("build", "build_judge"),
    "Judge": ("model", "Judge"),
    "load_judge": ("model", "load_judge"),
    "AlignmentConfig": ("alignment", "AlignmentConfig"),
    "run_alignment": ("alignment", "run_alignment"),
}
__all__ = sorted(_API)


__getattr__ = lazy_getattr(__name__, _API)  # imported on first use: `medisyn --help` stays fast
