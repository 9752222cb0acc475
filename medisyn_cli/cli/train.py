"""`medisyn train`."""

from __future__ import annotations

from pathlib import Path

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import argument, config_from, json_option, option, progress_option
from medisyn_cli.cli.tables import Tables, column
from medisyn_cli.core.progress import console
from medisyn_cli.train.loop import TrainConfig
from medisyn_cli.train.loop import train as run_train


def train(
    data: list[Path] = argument(TrainConfig, "data"),
    out: Path = option(TrainConfig, "out", "--out", "-o"),
    base: str | None = option(TrainConfig, "base", "--base"),
    config: str = option(TrainConfig, "config", "--config"),
    resolution: int = option(TrainConfig, "resolution", "--resolution"),
    steps: int = option(TrainConfig, "steps", "--steps"),
    vae_steps: int = option(TrainConfig, "vae_steps", "--vae-steps"),
    batch_size: int = option(TrainConfig, "batch_size", "--batch-size"),
    lr: float = option(TrainConfig, "lr", "--lr"),
    optimizer: str = option(TrainConfig, "optimizer", "--optimizer"),
    mixed_precision: str = option(TrainConfig, "mixed_precision", "--mixed-precision"),
    gradient_checkpointing: bool = option(TrainConfig, "gradient_checkpointing", "--gradient-checkpointing"),
    grad_accum: int = option(TrainConfig, "grad_accum", "--grad-accum"),
    ema: bool = option(TrainConfig, "ema", "--ema/--no-ema"),
    checkpoint_every: int = option(TrainConfig, "checkpoint_every", "--checkpoint-every"),
    resume: bool = option(TrainConfig, "resume", "--resume"),
    caption_dropout: float = option(TrainConfig, "caption_dropout", "--caption-dropout"),
    balance: float = option(TrainConfig, "balance", "--balance"),
    caption_template: str = option(TrainConfig, "caption_template", "--caption-template"),
    validation_prompts: Path | None = option(TrainConfig, "validation_prompts", "--validation-prompts"),
    validate_every: int = option(TrainConfig, "validate_every", "--validate-every"),
    train_text_encoder: bool | None = option(
        TrainConfig, "train_text_encoder", "--train-text-encoder/--freeze-text-encoder"
    ),
    holdout: float = option(TrainConfig, "holdout", "--holdout"),
    save_dtype: str = option(TrainConfig, "save_dtype", "--save-dtype"),
    seed: int = option(TrainConfig, "seed", "--seed"),
    lora: int | None = option(TrainConfig, "lora", "--lora"),
    lora_alpha: float | None = option(TrainConfig, "lora_alpha", "--lora-alpha"),
    lora_targets: str = option(TrainConfig, "lora_targets", "--lora-targets"),
    lora_dropout: float = option(TrainConfig, "lora_dropout", "--lora-dropout"),
    deterministic: bool = option(TrainConfig, "deterministic", "--deterministic"),
    progress: bool = progress_option(run_train),
    json_path: str | None = json_option(),
) -> None:
    """Train or fine-tune a text-to-image model and save a diffusers pipeline folder.

    Writes the model (or adapter) and its reports into OUT; --json adds the summary table.

    Example: medisyn train ../shared/data --out my-model --steps 2000 --holdout 0.2
    """
    with errors_as_exit_codes():
        cfg = config_from(train, TrainConfig, locals())
        result = run_train(cfg, show_progress=progress)
    row = {k: getattr(result, k) for k in ("steps", "images", "final_loss", "vae_psnr", "seconds")}
    with Tables("train", json_path) as tables:
        tables.show(
            "train",
            f"trained {'adapter' if lora else 'model'} in {result.model_dir}",
            [
                column("steps"),
                column("images"),
                column("final_loss", fmt=lambda v: f"{v:.4f}"),
                column("vae_psnr", fmt=lambda v: "-" if v is None else f"{v:.1f} dB"),
                column("seconds", fmt=lambda v: f"{v:.0f}"),
            ],
            [row],
        )
    for key, error in result.skipped:
        console.print(f"skipped {key}: {error}", highlight=False)
