"""What a run leaves: sample grids, the pipeline or adapter, loss curve and training.json."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

from medisyn_cli.core.datasets import Record
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import write_json
from medisyn_cli.core.images import image_grid
from medisyn_cli.core.ownership import recorded, remove_private, remove_recorded
from medisyn_cli.dataset.manifest import load_manifest
from medisyn_cli.pipeline.lora import save_adapter
from medisyn_cli.train.config import TrainConfig
from medisyn_cli.train.data import TrainingSet
from medisyn_cli.train.model import build_pipeline, unwrap


def validation_prompts(config: TrainConfig, captions: list[str]) -> list[str]:
    """Up to 16 prompts for the sample grids: --validation-prompts (text file or manifest), else the captions."""
    if config.validation_prompts:
        path = Path(config.validation_prompts)
        if not path.exists():
            raise MedisynError(f"--validation-prompts: {path} does not exist")
        if path.suffix == ".csv":
            return [row.prompt for row in load_manifest(path).rows][:16]
        return [line.strip() for line in path.read_text().splitlines() if line.strip()][:16]
    return captions[:16]


def sample_grid(parts, prompts: list[str], path: Path, device, per_prompt: int = 4, steps: int = 20) -> Path:
    """Save a grid: one row per prompt, a few seeds each."""
    import torch

    pipe = build_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    unet, text_encoder = unwrap(parts["unet"]), unwrap(parts["text_encoder"])
    was_training = unet.training, text_encoder.training
    unet.eval(), text_encoder.eval()
    generators = [torch.Generator().manual_seed(i) for _ in prompts for i in range(per_prompt)]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cpu"):
        images = pipe(
            [p for p in prompts for _ in range(per_prompt)],
            num_inference_steps=steps,
            guidance_scale=3.0,
            generator=generators,
            output_type="pil",
        ).images
    unet.train(was_training[0]), text_encoder.train(was_training[1])

    return image_grid(images, rows=len(prompts), path=path, labels=prompts)


def save_outputs(parts, out: Path, config: TrainConfig, losses, data: TrainingSet) -> Path:
    """The trained pipeline, or with --lora only the adapter (diffusers' LoRA format, adapter.json, card)."""
    if not config.lora:
        return save_pipeline(parts, out, config)
    info = {
        "steps": len(losses),
        "final_loss": tail_mean(losses),
        "train_images": len(data),
        "held_out_images": len(data.held),
        "data_fingerprint": data.fingerprint,
    }
    return save_adapter(parts, out, config, info)


def save_pipeline(parts, out: Path, config: TrainConfig) -> Path:
    """Save a standard diffusers folder (fp16 weights when asked), written atomically."""
    import torch

    pipe = build_pipeline(parts)
    if config.save_dtype == "fp16":
        pipe = pipe.to(torch.float16)
    tmp = out / "_work" / "pipeline"
    remove_private(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    _load_in_fp32(tmp / "text_encoder" / "config.json")
    _follow_umask(tmp)
    for item in tmp.iterdir():
        target = out / item.name
        if target.exists():  # a pipeline an earlier run saved here: only the files it recorded
            remove_recorded(out, [n for n in recorded(out) or () if n.split("/")[0] == item.name])
        if target.exists():
            raise MedisynError(f"{target}: holds files medisyn did not write; move them away, then run again")
        item.rename(target)
    return out


def _load_in_fp32(config_file: Path) -> None:
    """fp16-saved weights still load as fp32 in plain diffusers: transformers loads the text encoder in its config's
    dtype, diffusers the UNet and VAE in fp32, and a mix fails ('Half and Float')."""
    if config_file.exists():
        config = json.loads(config_file.read_text())
        if config.get("dtype") not in (None, "float32"):
            write_json(config_file, {**config, "dtype": "float32"})


def _follow_umask(folder: Path) -> None:
    """safetensors writes its files owner-only (0600); give them the usual umask mode so a shared model is readable."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def write_reports(
    out: Path, losses, config: TrainConfig, held: list[Record], skipped, psnr, seconds, n_images
):
    """loss.csv, loss.png, holdout.csv (when images were held out) and training.json."""
    with open(out / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows((i + 1, f"{v:.6f}") for i, v in enumerate(losses))
    plot_losses(losses, out / "loss.png")
    if held:
        with open(out / "holdout.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "label"])
            writer.writerows((r.key, r.label) for r in held)
    summary = {
        "config": asdict(config),
        "steps": len(losses),
        "final_loss": tail_mean(losses),
        "train_images": n_images,
        "held_out_images": len(held),
        "vae_psnr_db": psnr,
        "seconds": round(seconds, 1),
        "skipped": skipped,
    }
    write_json(out / "training.json", summary)


def tail_mean(losses: list[float], n: int = 50) -> float:
    """Mean of the last n losses (NaN when there are none)."""
    tail = losses[-n:]
    return sum(tail) / len(tail) if tail else math.nan


def plot_losses(losses: list[float], path: Path) -> None:
    """Raw and smoothed loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, alpha=0.3, label="loss")
    smooth = [tail_mean(losses[: i + 1]) for i in range(len(losses))]
    ax.plot(range(1, len(losses) + 1), smooth, label="mean of last 50")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
