"""Evaluate synthetic datasets: downstream utility, privacy (distance to closest record), fidelity, HTML report.

    from medisyn_cli.evaluate import UtilityConfig, run_utility
    result = run_utility(UtilityConfig(real_train=("real/train",), real_test=("real/test",),
                                       synthetic=("derm-synth",), seeds=3))

Modules: utility.py (classifiers trained on real / synthetic / both, AUROC on real test images), privacy.py
(nearest training image of synthetic vs held-out images), leakage.py (test images that copy training images), fidelity.py + metrics.py (FID, KID, PRDC, diversity
on features from cnn / inception:FILE / pixel / clip: / hf:), classifier.py (small CNN, ResNets, AUROC),
inception.py (FID Inception from a local file), report.py (`medisyn report`), common.py (reading sets, atomic
writes). Every run writes <name>.json (last) and <name>.csv, and figures, under --out.
"""

from __future__ import annotations

from medisyn_cli.core.lazy import lazy_getattr

_API = {
    "UtilityConfig": ("utility", "UtilityConfig"),
    "run_utility": ("utility", "run_utility"),
    "PrivacyConfig": ("privacy", "PrivacyConfig"),
    "run_privacy": ("privacy", "run_privacy"),
    "LeakageConfig": ("leakage", "LeakageConfig"),
    "run_leakage": ("leakage", "run_leakage"),
    "FidelityConfig": ("fidelity", "FidelityConfig"),
    "run_fidelity": ("fidelity", "run_fidelity"),
    "write_report": ("report", "write_report"),
    "fid": ("metrics", "fid"),
    "kid": ("metrics", "kid"),
    "prdc": ("metrics", "prdc"),
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)  # imported on first use: `medisyn --help` loads no numpy
