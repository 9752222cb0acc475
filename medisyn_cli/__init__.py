"""medisyn: synthetic medical image datasets from text-guided latent diffusion models.

The Python API mirrors the CLI, one function per command; each takes `show_progress=False` for a quiet run
(no bar, no log lines; its messages are in what it returns):

    from medisyn_cli import GenerateConfig, run_generate
    summary = run_generate(GenerateConfig(manifest="prompts/mini_dermoscopy.csv", n=60, out="derm-synth"))

    from medisyn_cli import PrivacyConfig, run_privacy
    result = run_privacy(PrivacyConfig(train=("real/train",), heldout=("real/test",), synthetic=("derm-synth",)),
                         show_progress=False)

Commands and functions: generate run_generate (merge: merge_run), train run_train, index build build_index,
screen screen_dataset, provenance check_provenance, evaluate utility|privacy|leakage|fidelity|alignment
run_utility|run_privacy|run_leakage|run_fidelity|run_alignment, report write_report, judge build build_judge,
study build|score|serve build_study|score_study|make_server, publish publish.

Stages, one folder each (ARCHITECTURE.md walks through them): core/ (plumbing), pipeline/ (loading a diffusion
model, speed options, LoRA adapters), dataset/, generate/, screening/, train/, evaluate/, judge/, study/, and
cli/ on top.

Every public name is imported on first use (`lazy_getattr`), so `import medisyn_cli` (the first thing the
`medisyn` command does, before it installs its signal handlers) imports no stage, no numpy and no torch.
"""

from __future__ import annotations

from medisyn_cli.core.lazy import lazy_getattr

# public name -> (module under medisyn_cli, attribute)
_API = {
    "__version__": ("core.version", "__version__"),
    "MedisynError": ("core.errors", "MedisynError"),
    "load_manifest": ("dataset.manifest", "load_manifest"),
    "load_pipeline": ("pipeline.load", "load_pipeline"),
    "GenerateConfig": ("generate.config", "GenerateConfig"),
    "run_generate": ("generate.run", "run_generate"),
    "merge_run": ("generate.finish", "merge_run"),
    "TrainConfig": ("train.loop", "TrainConfig"),
    "run_train": ("train.loop", "train"),
    "IndexConfig": ("screening.build", "IndexConfig"),
    "build_index": ("screening.build", "build_index"),
    "ScreenConfig": ("screening.audit", "ScreenConfig"),
    "screen_dataset": ("screening.audit", "screen_dataset"),
    "ProvenanceConfig": ("dataset.provenance", "ProvenanceConfig"),
    "check_provenance": ("dataset.provenance", "check_provenance"),
    "UtilityConfig": ("evaluate.utility", "UtilityConfig"),
    "run_utility": ("evaluate.utility", "run_utility"),
    "PrivacyConfig": ("evaluate.privacy", "PrivacyConfig"),
    "run_privacy": ("evaluate.privacy", "run_privacy"),
    "LeakageConfig": ("evaluate.leakage", "LeakageConfig"),
    "run_leakage": ("evaluate.leakage", "run_leakage"),
    "FidelityConfig": ("evaluate.fidelity", "FidelityConfig"),
    "run_fidelity": ("evaluate.fidelity", "run_fidelity"),
    "write_report": ("evaluate.report", "write_report"),
    "AlignmentConfig": ("judge.alignment", "AlignmentConfig"),
    "run_alignment": ("judge.alignment", "run_alignment"),
    "JudgeConfig": ("judge.build", "JudgeConfig"),
    "build_judge": ("judge.build", "build_judge"),
    "StudyConfig": ("study.build", "StudyConfig"),
    "build_study": ("study.build", "build_study"),
    "score_study": ("study.score", "score_study"),
    "make_server": ("study.server", "make_server"),
    "publish": ("dataset.publish", "publish"),
}
__all__ = sorted(name for name in _API if name != "__version__")

__getattr__ = lazy_getattr(__name__, _API)  # tests/test_architecture.py reads _API as this module's imports
