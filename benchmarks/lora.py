"""LoRA vs full fine-tuning of the bundled model on the data sets where it is weakest (brain MRI, BUSI).

Conditions, each with the same optimiser-step budget, batch, data, precision and threads:
  bundled   the bundled model as is (no training)
  full      every UNet weight trains (`medisyn train --base`)
  lora4/8/16  a LoRA adapter of that rank on the UNet's attention projections (`medisyn train --base --lora R`)
Each training runs in its own process (peak RSS is that process's). Seconds per step are timed between the first
and the last step (model loading and latent encoding left out). Utility: the `benchmarks/utility_mini.py`
protocol at a reduced size (small CNN trained on synthetic images made with `medisyn generate` [--lora], macro
AUROC on the bundled model's hold-out of that data set, minus the same classifier trained on as many real
images). Last, `medisyn generate --lora` is compared with plain diffusers + `load_lora_weights` (same seeds).

    nice -n 10 python benchmarks/lora.py --out benchmarks/results/lora
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utility_mini import DATA, REPO, SETS, balanced_sample, load, real_split, train_and_score  # noqa: E402

CONDITIONS = {"bundled": None, "full": {}, "lora4": {"lora": 4}, "lora8": {"lora": 8}, "lora16": {"lora": 16}}


def train_folder(dataset: str, model: Path, scratch: Path, per_class: int) -> Path:
    """An ImageFolder of up to per_class images per class that the bundled model did not hold out (links)."""
    train = balanced_sample(real_split(dataset, model)[0], per_class, 0)
    folder = scratch / "data" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        (folder / "images").symlink_to(DATA / dataset / "images")
    keep = {p.name for p, _ in train}
    with open(DATA / dataset / "metadata.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if Path(r["file_name"]).name in keep]
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "label", "caption"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder


def train_child(spec: dict) -> None:
    """In a fresh process: train one condition, time every step, write the metrics JSON."""
    import torch

    import medisyn_cli.train.loop as training

    torch.set_num_threads(spec["threads"])
    stamps, loss = [], training.diffusion_loss

    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        return loss(*args, **kwargs)

    training.diffusion_loss = timed
    config = training.TrainConfig(**spec["config"])
    started = time.time()
    result = training.train(config, show_progress=False)
    metrics = {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "seconds": round(time.time() - started, 1),
        "s_per_step": (stamps[-1] - stamps[0]) / (len(stamps) - 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    Path(spec["metrics"]).write_text(json.dumps(metrics))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it does not carry the parent's peak
    over fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resources(args) -> None:
    """--resources: only the trained conditions of the first data set, back to back, for memory and speed."""
    dataset = args.sets.split(",")[0]
    data = train_folder(dataset, args.model, args.scratch, args.train_per_class)
    rows = {
        name: train_condition(dataset, name, data, args)
        for name in CONDITIONS
        if CONDITIONS[name] is not None
    }
    for name, row in rows.items():
        print(
            f"{dataset:24s} {name:8s} {row['s_per_step']:.3f} s/step (ratio to full "
            f"{row['s_per_step'] / rows['full']['s_per_step']:.2f})  peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resources.json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "dataset": dataset, "conditions": rows},
            indent=2,
        )
    )


def train_condition(dataset: str, name: str, data: Path, args) -> dict:
    """Train one condition in a subprocess; returns its metrics with trainable parameters and file size."""
    out = args.scratch / "runs" / f"{dataset}-{name}"
    metrics_file = args.scratch / "runs" / f"{dataset}-{name}.json"
    if not metrics_file.exists():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        options = CONDITIONS[name]
        config = {
            "data": [str(data)],
            "out": str(out),
            "base": str(args.model),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lora_lr if options else args.full_lr,
            "ema": False,
            "mixed_precision": "no",
            "validate_every": 0,
            "checkpoint_every": 10**6,
            "seed": 0,
            "save_dtype": "fp32",
            **options,
        }
        spec = {"config": config, "metrics": str(metrics_file), "threads": args.threads}
        subprocess.run([sys.executable, __file__, "--train-child", json.dumps(spec)], check=True)
    metrics = json.loads(metrics_file.read_text())
    if name == "full":
        metrics["trainable"] = unet_parameters(out)
        metrics["file_bytes"] = (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    else:
        metrics["trainable"] = json.loads((out / "adapter.json").read_text())["parameters"]
        metrics["file_bytes"] = (out / "pytorch_lora_weights.safetensors").stat().st_size
    metrics["path"] = str(out)
    return metrics


def unet_parameters(model: Path) -> int:
    """Number of UNet weights, from the safetensors header."""
    from safetensors import safe_open

    with safe_open(str(model / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as handle:
        return sum(int(np.prod(handle.get_slice(k).get_shape())) for k in handle.keys())


def synthetic(dataset: str, name: str, trained: dict | None, args) -> list:
    """per_class images per class from the condition's model (the bundled one with --lora for adapters)."""
    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate

    out = args.scratch / "synthetic" / f"{dataset}-{name}"
    model, loras = str(args.model), ()
    if trained and name == "full":
        model = trained["path"]
    elif trained:
        loras = (trained["path"],)
    manifest = REPO / "prompts" / f"{SETS[dataset]}.csv"
    classes = len(open(manifest).read().strip().splitlines()) - 1
    if not (out / "run.json").exists():
        run_generate(
            GenerateConfig(
                manifest=str(manifest),
                n=args.per_class * classes,
                out=str(out),
                model=model,
                steps=args.sample_steps,
                batch_size=64,
                threads=args.threads,
                loras=loras,
                formats=("imagefolder",),
                overwrite=True,
            ),
            show_progress=False,
        )
    rows = csv.DictReader(open(out / "imagefolder" / "metadata.csv"))
    return [(out / "imagefolder" / r["file_name"], r["label"]) for r in rows]


def utility(dataset: str, rows: list, test, index: dict, args) -> list[float]:
    """Macro AUROC on the hold-out of the small CNN trained on rows, one per classifier seed."""
    x_test, y_test = test
    x, y = load([p for p, _ in rows], args.size), np.array([index[label] for _, label in rows])
    return [
        train_and_score(x, y, x_test, y_test, len(index), seed, args.epochs) for seed in range(args.seeds)
    ]


def equivalence(adapter: Path, args) -> float:
    """Max pixel difference (0-255) between `medisyn generate --lora` and plain diffusers + load_lora_weights."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from PIL import Image

    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate

    out = args.scratch / "equivalence"
    manifest = REPO / "prompts" / "mini_brain_mri.csv"
    summary = run_generate(
        GenerateConfig(
            manifest=str(manifest),
            n=8,
            out=str(out),
            model=str(args.model),
            steps=args.sample_steps,
            batch_size=8,
            threads=args.threads,
            loras=(f"{adapter}:0.8",),
            formats=("imagefolder",),
            overwrite=True,
        ),
        show_progress=False,
    )
    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++"
    )
    pipe.load_lora_weights(adapter, adapter_name="adapter")
    pipe.set_adapters(["adapter"], adapter_weights=[0.8])
    pipe.set_progress_bar_config(disable=True)
    worst = 0
    for row in csv.DictReader(open(out / "imagefolder" / "metadata.csv")):
        image = pipe(
            row["prompt"],
            num_inference_steps=summary.run["sampling"]["steps"],
            guidance_scale=summary.run["sampling"]["guidance"],
            output_type="np",
            generator=torch.Generator().manual_seed(int(row["seed"])),
        ).images[0]
        mine = np.asarray(Image.open(out / "imagefolder" / row["file_name"]).convert("RGB"), dtype=int)
        plain = np.asarray(
            Image.fromarray(np.round(image * 255).astype(np.uint8))
            .convert(Image.open(out / "imagefolder" / row["file_name"]).mode)
            .convert("RGB"),
            dtype=int,
        )
        worst = max(worst, int(np.abs(mine - plain).max()))
    return worst


def run_dataset(dataset: str, args) -> dict:
    """Every condition on one data set: training metrics and utility."""
    data = train_folder(dataset, args.model, args.scratch, args.train_per_class)
    train_real, test_rows = real_split(dataset, args.model)
    labels = sorted({label for _, label in test_rows})
    index = {label: i for i, label in enumerate(labels)}
    test = (load([p for p, _ in test_rows], args.size), np.array([index[label] for _, label in test_rows]))
    real = []
    for seed in range(args.seeds):  # as many real images per class, another sample per seed
        rows = balanced_sample(train_real, args.per_class, seed)
        x, y = load([p for p, _ in rows], args.size), np.array([index[label] for _, label in rows])
        real.append(train_and_score(x, y, *test, len(index), seed, args.epochs))
    rows = {}
    for name in CONDITIONS:
        started = time.time()
        trained = train_condition(dataset, name, data, args) if CONDITIONS[name] is not None else None
        scores = utility(dataset, synthetic(dataset, name, trained, args), test, index, args)
        rows[name] = {
            **(trained or {}),
            "auroc": float(np.mean(scores)),
            "auroc_sd": float(np.std(scores, ddof=1)),
            "auroc_diff_to_real": float(np.mean(scores) - np.mean(real)),
        }
        print(f"{dataset:24s} {name:8s} {_row_text(rows[name])}  ({time.time() - started:.0f} s)", flush=True)
    return {
        "real_auroc": float(np.mean(real)),
        "real_sd": float(np.std(real, ddof=1)),
        "test_images": len(test_rows),
        "train_images": len(train_real),
        "conditions": rows,
    }


def _row_text(row: dict) -> str:
    train = (
        f"trainable {row['trainable']:>9,}  file {row['file_bytes'] / 1e6:6.2f} MB  {row['s_per_step']:.3f} s/step  "
        f"peak RSS {row['peak_rss_mb']:.0f} MB  loss {row['final_loss']:.4f}  "
        if "trainable" in row
        else " " * 86
    )
    return f"{train}AUROC {row['auroc']:.3f}±{row['auroc_sd']:.3f} (diff to real {row['auroc_diff_to_real']:+.3f})"


def table(results: dict, unet_bytes: int) -> str:
    """The README table (markdown)."""
    lines = [
        "| data set | condition | trainable params | file (MB) | % of UNet | s/step | ratio to full | peak RSS (MB) "
        "| AUROC synthetic | diff to real |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset, result in results["datasets"].items():
        full = result["conditions"]["full"]
        for name, row in result["conditions"].items():
            trained = "trainable" in row
            cells = (
                [
                    f"{row['trainable']:,}",
                    f"{row['file_bytes'] / 1e6:.2f}",
                    f"{100 * row['file_bytes'] / unet_bytes:.1f}",
                    f"{row['s_per_step']:.3f}",
                    f"{row['s_per_step'] / full['s_per_step']:.2f}",
                    f"{row['peak_rss_mb']:.0f}",
                ]
                if trained
                else ["-"] * 6
            )
            lines.append(
                f"| {dataset} | {name} | "
                + " | ".join(cells)
                + f" | {row['auroc']:.3f} ± {row['auroc_sd']:.3f} | {row['auroc_diff_to_real']:+.3f} |"
            )
        lines.append(
            f"| {dataset} | real images | | | | | | | {result['real_auroc']:.3f} ± {result['real_sd']:.3f} | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-child", help=argparse.SUPPRESS)
    parser.add_argument("--sets", default="brain_tumor_mri,busi_breast_ultrasound")
    parser.add_argument("--steps", type=int, default=24, help="optimiser steps of every trained condition")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--train-per-class", type=int, default=50, help="training images per class (same for all)"
    )
    parser.add_argument("--full-lr", type=float, default=1e-4, help="learning rate of full fine-tuning")
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of the LoRA conditions")
    parser.add_argument(
        "--per-class", type=int, default=12, help="synthetic (and real) training images per class"
    )
    parser.add_argument("--sample-steps", type=int, default=8, help="denoising steps of the synthetic images")
    parser.add_argument("--seeds", type=int, default=2, help="classifier seeds")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument(
        "--resources", action="store_true", help="only time and measure the trainings (first set)"
    )
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/medisyn-lora-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lora")
    args = parser.parse_args()
    if args.train_child:
        return train_child(json.loads(args.train_child))
    import torch

    from medisyn_cli.pipeline.load import BUNDLED_MODEL

    torch.set_num_threads(args.threads)
    args.model = args.model or BUNDLED_MODEL
    if args.resources:
        return resources(args)
    started = time.time()
    results = {"args": {k: str(v) for k, v in vars(args).items() if k != "train_child"}, "datasets": {}}
    print(
        f"budget: {args.steps} steps x batch {args.batch_size} for every trained condition (fp32, no EMA, "
        f"{args.threads} threads, {args.train_per_class} training images per class); utility on {args.per_class} "
        f"images per class ({args.sample_steps} denoising steps), {args.seeds} classifier seeds",
        flush=True,
    )
    for dataset in args.sets.split(","):
        results["datasets"][dataset] = run_dataset(dataset, args)
    first = args.sets.split(",")[0]
    adapter = Path(results["datasets"][first]["conditions"]["lora16"]["path"])
    results["equivalence_max_pixel_difference"] = equivalence(adapter, args)
    results["unet_parameters"] = unet_parameters(args.model)
    results["seconds"] = round(time.time() - started, 1)
    unet_fp32 = 4 * results["unet_parameters"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results, unet_fp32)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(
        f"medisyn generate --lora vs plain diffusers + load_lora_weights: max pixel difference "
        f"{results['equivalence_max_pixel_difference']} (0-255 levels); {results['seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    main()
