"""`medisyn train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.core.progress import console, results
from medisyn_cli.train.loop import TrainConfig
from medisyn_cli.train.loop import train as run_train


def train(
    data: list[Path] = typer.Argument(..., help="ImageFolder(s) with metadata.csv captions, Parquet, label folders, "
                                                "or a folder holding several such datasets."),
    out: Path = typer.Option(..., "--out", help="Folder for the trained diffusers pipeline."),
    base: Optional[str] = typer.Option(None, "--base", help="Pipeline to fine-tune: folder, file or hub id."),
    config: str = typer.Option("mini", "--config", help="Named architecture when training from scratch."),
    resolution: int = typer.Option(64, "--resolution"),
    steps: int = typer.Option(2000, "--steps", help="Diffusion (UNet) optimisation steps."),
    vae_steps: int = typer.Option(600, "--vae-steps", help="Autoencoder steps (from scratch only)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(5e-4, "--lr"),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto, no, fp16 or bf16."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    ema: bool = typer.Option(True, "--ema/--no-ema"),
    checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    caption_dropout: float = typer.Option(0.1, "--caption-dropout"),
    balance: float = typer.Option(0.0, "--balance", help="Sampling by caption: 0 uniform over images, 1 every "
                                  "caption (class) equally often; between: 1/count**balance."),
    caption_template: str = typer.Option("{label}", "--caption-template",
                                         help="Caption for data without captions, e.g. 'chest x-ray, {label}'."),
    validation_prompts: Optional[Path] = typer.Option(None, "--validation-prompts", help="Text file or manifest."),
    validate_every: int = typer.Option(500, "--validate-every"),
    train_text_encoder: Optional[bool] = typer.Option(None, "--train-text-encoder/--freeze-text-encoder",
                                                      help="Default: trained from scratch, frozen when fine-tuning."),
    holdout: float = typer.Option(0.0, "--holdout", help="Fraction of images held out (by file-name hash)."),
    save_dtype: str = typer.Option("fp32", "--save-dtype", help="fp32 or fp16 weights."),
    seed: int = typer.Option(0, "--seed"),
    lora: Optional[int] = typer.Option(None, "--lora", help="Train a LoRA adapter of this rank on --base instead "
                                       "of the whole UNet; --out gets pytorch_lora_weights.safetensors."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default: the rank)."),
    lora_targets: str = typer.Option("unet", "--lora-targets", help="unet or unet+text."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout"),
) -> None:
    """Train or fine-tune a text-to-image model and save a diffusers pipeline folder.

    Example: medisyn train ../shared/data --out my-model --steps 2000 --holdout 0.2
    """
    with errors_as_exit_codes():
        cfg = TrainConfig(data=tuple(map(str, data)), out=str(out), base=base, config=config,
                          resolution=resolution, steps=steps, vae_steps=vae_steps, batch_size=batch_size, lr=lr,
                          mixed_precision=mixed_precision, grad_accum=grad_accum, ema=ema,
                          checkpoint_every=checkpoint_every, resume=resume, caption_dropout=caption_dropout,
                          balance=balance,
                          caption_template=caption_template,
                          validation_prompts=str(validation_prompts) if validation_prompts else None,
                          validate_every=validate_every, train_text_encoder=train_text_encoder,
                          holdout=holdout, save_dtype=save_dtype, seed=seed, lora=lora, lora_alpha=lora_alpha,
                          lora_targets=lora_targets, lora_dropout=lora_dropout)
        result = run_train(cfg)
    table = Table(title=f"trained {'adapter' if lora else 'model'} in {result.model_dir}")
    for name in ("steps", "images", "final_loss", "vae_psnr", "seconds"):
        table.add_column(name)
    psnr = "-" if result.vae_psnr is None else f"{result.vae_psnr:.1f} dB"
    table.add_row(str(result.steps), str(result.images), f"{result.final_loss:.4f}", psnr, f"{result.seconds:.0f}")
    results.print(table)
    for key, error in result.skipped:
        console.print(f"skipped {key}: {error}", highlight=False)
