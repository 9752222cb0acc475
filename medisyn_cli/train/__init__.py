"""`medisyn train`: train or fine-tune (fully or with LoRA) the text-guided diffusion model."""

from medisyn_cli.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
