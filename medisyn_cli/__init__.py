"""medisyn: synthetic medical image datasets from text-guided latent diffusion models.

The Python API mirrors the CLI:

    from medisyn_cli import GenerateConfig, run_generate
    summary = run_generate(GenerateConfig(manifest="prompts/mini_dermoscopy.csv", n=60, out="derm-synth"))
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "GenerateConfig": ("config", "GenerateConfig"),
    "run_generate": ("runner", "run_generate"),
    "TrainConfig": ("train", "TrainConfig"),
    "run_train": ("train", "train"),
    "load_manifest": ("manifest", "load_manifest"),
    "load_pipeline": ("models", "load_pipeline"),
    "MedisynError": ("errors", "MedisynError"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    """Import the API lazily, so `medisyn --help` does not load torch."""
    if name not in _API:
        raise AttributeError(f"module 'medisyn_cli' has no attribute '{name}'")
    from importlib import import_module

    module, attr = _API[name]
    return getattr(import_module(f".{module}", __name__), attr)
