"""medisyn: synthetic medical image datasets from text-guided latent diffusion models.

The Python API mirrors the CLI:

    from medisyn_cli import GenerateConfig, run_generate
    summary = run_generate(GenerateConfig(manifest="prompts/mini_dermoscopy.csv", n=60, out="derm-synth"))

Stages, one folder each (ARCHITECTURE.md walks through them): core/ (plumbing), pipeline/ (loading a diffusion
model, speed options, LoRA adapters), generate/, screening/, train/, evaluate/, judge/, study/, and cli/ on top.
"""

from __future__ import annotations

from medisyn_cli.core.errors import MedisynError  # noqa: E402
from medisyn_cli.core.version import __version__  # noqa: E402,F401
from medisyn_cli.dataset.manifest import load_manifest
from medisyn_cli.generate.config import GenerateConfig  # noqa: E402
from medisyn_cli.generate.run import run_generate  # noqa: E402
from medisyn_cli.pipeline.load import load_pipeline  # noqa: E402
from medisyn_cli.screening.audit import screen_dataset  # noqa: E402
from medisyn_cli.screening.build import build_index
from medisyn_cli.train.loop import TrainConfig  # noqa: E402
from medisyn_cli.train.loop import train as run_train  # noqa: E402

__all__ = [
    "GenerateConfig",
    "MedisynError",
    "TrainConfig",
    "build_index",
    "load_manifest",
    "load_pipeline",
    "run_generate",
    "run_train",
    "screen_dataset",
]
