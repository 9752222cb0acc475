"""`medisyn train`: the run as numbered steps (data, parts, autoencoder, latents, diffusion, outputs)."""

from __future__ import annotations

import time
from pathlib import Path

from medisyn_cli.core.datasets import read_records
from medisyn_cli.core.ownership import claim, record_files, recorded, remove_private
from medisyn_cli.core.progress import make_progress, rate_text
from medisyn_cli.pipeline.load import quiet_libraries
from medisyn_cli.train.autoencoder import autoencoder_stage
from medisyn_cli.train.checkpoint import check_out, legacy_train_files, restore, save_checkpoint, save_options
from medisyn_cli.train.config import TrainConfig, TrainResult, check_options, mixed_precision
from medisyn_cli.train.data import load_training_images
from medisyn_cli.train.latents import LatentCache
from medisyn_cli.train.model import build_components, reset_accelerate, seed_run
from medisyn_cli.train.outputs import sample_grid, save_outputs, tail_mean, validation_prompts, write_reports
from medisyn_cli.train.step import (
    caption_states,
    caption_weights,
    check_optimizer,
    diffusion_loss,
    draw_batch,
    ema_weights,
    optimiser,
    step_seed,
    text_states,
    tokenize,
)

__all__ = [  # read_records: tests/test_datasets reads it from here; diffusion_loss: benchmarks/lora.py times it here
    "TrainConfig",
    "TrainResult",
    "diffusion_loss",
    "read_records",
    "train",
]


def train(config: TrainConfig, show_progress: bool = True) -> TrainResult:
    """Train (VAE first when there is none), then the UNet; save a diffusers pipeline folder."""
    check_out(Path(config.out), config)
    owner = claim(config.out, "train", fallback=legacy_train_files, adopt=True)
    foreign = {p.relative_to(owner.path).as_posix() for p in owner.path.rglob("*") if p.is_file()}
    foreign -= recorded(owner.path, legacy_train_files) or set()
    try:
        result = _train(config, show_progress)
        mine = {p.relative_to(owner.path).as_posix() for p in owner.path.rglob("*") if p.is_file()}
        record_files(owner.path, [n for n in mine - foreign if not n.startswith((".medisyn", "_work/"))])
        return result
    finally:
        owner.release()


def _train(config: TrainConfig, show_progress: bool = True) -> TrainResult:
    import torch
    from accelerate import Accelerator

    # 1. options and the --out folder, before any data or model is read
    started = time.time()
    out = Path(config.out)
    work = out / "_work"
    check_out(out, config)
    check_options(config)
    quiet_libraries()
    torch.set_flush_denormal(True)  # denormal floats slow CPU training by 5-10x once weights get small
    reset_accelerate()
    check_optimizer(config.optimizer)
    seed_run(config.seed, config.deterministic)
    # 2. the training images, decoded once into a file of pixels; their captions
    fresh = not work.exists()
    try:
        data = load_training_images(config, work / "data")
    except BaseException:
        if fresh:  # nothing of this run stays: a rerun after fixing the data is a new run, not a --resume
            remove_private(work)
        raise
    save_options(work, config)
    accelerator = Accelerator(
        mixed_precision=mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.grad_accum,
        project_dir=str(work),
    )
    # 3. the model's parts: a base pipeline's, or fresh ones
    parts = build_components(config, data.captions, work)
    with make_progress(disable=not show_progress) as progress:
        # 4. the autoencoder (trained when there is none)
        psnr = autoencoder_stage(parts, data, config, accelerator, progress, work)
        # 5. the latents, encoded as batches first need them and cached on disk (reused on resume)
        latents = LatentCache(parts["vae"], data.pixels, work, accelerator.device, data.pixel_sha256)
        # 6. the diffusion steps
        scale = parts["vae"].config.scaling_factor
        losses = _diffusion_stage(parts, latents, data.captions, scale, config, accelerator, progress, work)
    # 7. the pipeline or adapter, loss curve and training.json
    save_outputs(parts, out, config, losses, data)
    write_reports(out, losses, config, data.held, data.skipped, psnr, time.time() - started, len(data))
    remove_private(work / "tokenizer")
    remove_private(work / "data")  # the pixels: as large as the data set; the latents stay for a resume
    return TrainResult(
        out, len(losses), tail_mean(losses), len(data), data.skipped, time.time() - started, psnr
    )


def _diffusion_stage(parts, latents, captions, scale, config, accelerator, progress, work):
    import torch

    trainable, optimizer, lr_schedule, ema = optimiser(parts, config, accelerator)
    unet, text_encoder = parts["unet"], parts["text_encoder"]
    unique = sorted(set(captions))
    ids_of = tokenize(parts["tokenizer"], unique + [""])
    caption_index = torch.tensor([unique.index(c) for c in captions])
    weights = caption_weights(caption_index, config.balance) if config.balance else None
    losses, step = restore(accelerator, work, config.optimizer)
    generator, micro = torch.Generator(), 0
    task = progress.add_task("diffusion", total=config.steps, completed=step, rate="", info="")
    start, done = time.time(), 0
    unet.train()
    text_encoder.train(parts["train_text_encoder"])
    cached = caption_states(parts, ids_of, accelerator)
    while step < config.steps:
        generator.manual_seed(step_seed(config.seed, step, micro))  # a resumed run draws as an unbroken one
        idx = draw_batch(weights, len(latents), config.batch_size, generator)
        mean, std = latents[idx].float().chunk(2, dim=1)
        z = (mean + std * torch.randn(mean.shape, generator=generator)) * scale
        drop = torch.rand(len(idx), generator=generator) < config.caption_dropout
        rows = torch.where(drop, len(unique), caption_index[idx])
        with accelerator.accumulate(unet), accelerator.autocast():
            hidden = text_states(parts, ids_of, rows, cached, accelerator.device)
            loss = diffusion_loss(parts, z.to(accelerator.device), hidden, generator, config)
            accelerator.backward(loss)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad()
        micro = 0 if accelerator.sync_gradients else micro + 1
        if accelerator.sync_gradients:
            step += 1
            done += len(idx)
            if ema is not None:
                ema.step(trainable)
            losses.append(float(loss.item()))
            progress.update(
                task,
                completed=step,
                rate=rate_text(done, time.time() - start, "img"),
                info=f"loss {tail_mean(losses):.4f}",
            )
            _after_step(parts, config, accelerator, work, step, losses, ema, trainable, unique)
    if ema is not None:
        ema.copy_to(trainable)
    parts.update(unet=accelerator.unwrap_model(unet), text_encoder=accelerator.unwrap_model(text_encoder))
    return losses


def _after_step(
    parts,
    config: TrainConfig,
    accelerator,
    work: Path,
    step: int,
    losses: list,
    ema,
    trainable,
    unique: list[str],
) -> None:
    """Checkpoint and draw the validation grid when their step comes."""
    if step % config.checkpoint_every == 0 or step == config.steps:
        save_checkpoint(accelerator, work, step, losses, config.optimizer)
    if config.validate_every and (step % config.validate_every == 0 or step == config.steps):
        with ema_weights(ema, trainable):
            sample_grid(
                parts,
                validation_prompts(config, unique),
                work.parent / "samples" / f"step-{step:06d}.png",
                accelerator.device,
            )
