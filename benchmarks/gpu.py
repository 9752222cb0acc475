"""medisyn on one GPU: a bare diffusers loop vs `medisyn generate` (fp16, SDPA attention, automatic batch size,
screening on, both writers) at 512 px on the SD-1.5-shaped pipeline, and the screening throughput of one CPU core.

    python benchmarks/gpu.py                 # on a GPU node: at most ~8 minutes on one H100
    python benchmarks/gpu.py --smoke         # on CPU, end to end in a minute or two (128 px, 1 step, 2 images)

Steps: 1. build (or find) the SD-1.5-shaped model (benchmarks/real_size_models.py) and an index of real
dermoscopy images upsampled to the image size; 2. `medisyn generate` in a fresh process (its batch size chosen by
medisyn from the free GPU memory); 3. the bare diffusers loop in a fresh process at that batch size, same prompts,
seeds, steps and guidance; 4. the screening cost per image on one CPU core (embedding + search), from which the
cores per GPU that keep screening off the critical path follow: GPU images/s x seconds per image per core.
Timings include model loading; `*_after_load` leave it out. Writes --out/results.json (smoke: results_smoke.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

from real_size import MANIFEST_TEXT, run_child, screening_cost
from real_size_models import REPO, real_size_model, training_images

GPU_RESULTS = REPO / "benchmarks" / "results" / "gpu"


def settings(args) -> dict:
    """The run's size, steps, n and device: the real ones, or tiny ones on CPU for --smoke."""
    if args.smoke:
        return {"device": "cpu", "dtype": "fp32", "size": 128, "steps": 1, "n": 2, "train_per_class": 2}
    return {
        "device": "cuda",
        "dtype": "fp16",
        "size": args.size,
        "steps": args.steps,
        "n": args.n,
        "train_per_class": 20,
    }


def one_core_screening(index: Path, size: int, count: int, work: Path) -> dict:
    """Screening seconds per image at `size` px with one thread (torch, BLAS and FAISS)."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        return screening_cost(index, (size,), count, work)[size]


def measure(args, work: Path) -> dict:
    """Every step of the module docstring; returns the results dict."""
    from medisyn_cli.screening.build import build_index

    run = settings(args)
    start = time.perf_counter()
    model = str(real_size_model("sd15"))
    build_seconds = time.perf_counter() - start
    train = training_images(work / "train", run["size"], per_class=run["train_per_class"])
    build_index([train], work / "index", show_progress=False)
    manifest = work / "derm.csv"
    manifest.write_text(MANIFEST_TEXT)
    common = {
        "model": model,
        "manifest": str(manifest),
        "n": run["n"],
        "steps": run["steps"],
        "size": run["size"],
    }
    medisyn = run_child(
        {
            **common,
            "kind": "medisyn",
            "index": str(work / "index"),
            "out": str(work / "out"),
            "device": run["device"],
            "dtype": run["dtype"],
        },
        None,
    )
    bare = run_child(
        {
            **common,
            "kind": "bare",
            "batch_size": medisyn["batch_size"],
            "device": run["device"],
            "dtype": run["dtype"],
        },
        None,
    )
    screen = one_core_screening(work / "index", run["size"], 4 if args.smoke else 32, work)
    gpu_rate = medisyn["images"] / (medisyn["seconds"] - medisyn["stages"]["load"])
    return {
        "smoke": args.smoke,
        "settings": run,
        "model": "sd15-shaped (random weights): UNet 860M, CLIP ViT-L/14 text encoder, VAE 84M",
        "machine": platform.node(),
        "gpu": _gpu_name(),
        "model_build_seconds": build_seconds,
        "medisyn generate": medisyn,
        "bare diffusers loop": bare,
        "ratio": medisyn["seconds"] / bare["seconds"],
        "ratio_after_load": (medisyn["seconds"] - medisyn["stages"]["load"])
        / (bare["seconds"] - bare["stages"]["load"]),
        "generate_images_per_second_after_load": gpu_rate,
        "screening_one_core": screen,
        "cpu_cores_per_gpu_for_screening": math.ceil(gpu_rate * screen["seconds_per_image"]),
    }


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="On CPU: 128 px, 1 step, 2 images.")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=GPU_RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medisyn-gpu-") as work:
        result = measure(args, Path(work))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("results_smoke.json" if args.smoke else "results.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
