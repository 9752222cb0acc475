"""Images/s of the bundled model against the batch size on the device at hand, and the few-step trade-off.

1. batch size: the model alone (medisyn's Renderer: cached prompts, one generator per image), after a warm-up,
   at the model's recommended steps and guidance; baseline batch 1.
2. schedulers and steps: images/s and the mean absolute pixel difference (0-255) of each image to the same
   seed's image at 50 dpm++ steps (the reference); fewer steps are faster and drift further from it.

    python benchmarks/batch_scaling.py --images 32 --sizes 1,2,4,8,16,32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "prompts" / "mini_dermoscopy.csv"


def setup(device_name: str, dtype_name: str):
    from medisyn_cli.dataset.manifest import load_manifest
    from medisyn_cli.generate.plan import iter_jobs, quotas
    from medisyn_cli.pipeline.load import BUNDLED_MODEL, load_pipeline, resolve_device, resolve_dtype

    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device)
    pipe = load_pipeline(None, device, dtype)
    recommended = json.loads((BUNDLED_MODEL / "medisyn.json").read_text())["recommended"]
    manifest = load_manifest(MANIFEST)
    return (
        pipe,
        device,
        dtype,
        recommended,
        manifest,
        lambda n: list(iter_jobs(manifest, quotas(manifest.weights(), n), 0)),
    )


def images_per_second(render, jobs: list, size: int, device) -> float:
    import torch

    render(
        [j.prompt for j in jobs[:size]],
        [j.negative_prompt for j in jobs[:size]],
        [j.seed for j in jobs[:size]],
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(0, len(jobs), size):
        part = jobs[i : i + size]
        render([j.prompt for j in part], [j.negative_prompt for j in part], [j.seed for j in part])
    sync()
    return len(jobs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", default="5,10,20")
    parser.add_argument("--schedulers", default="dpm++,unipc,euler,ddim")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "batch_scaling.json")
    args = parser.parse_args()
    from medisyn_cli.generate.sampler import Renderer, Settings
    from medisyn_cli.pipeline.load import make_scheduler

    pipe, device, dtype, recommended, manifest, plan = setup(args.device, args.dtype)
    jobs = plan(args.images)
    base = Settings(recommended["steps"], recommended["guidance"], 64, 64)
    render = Renderer(pipe, base)
    rates = {}
    print(
        f"== batch size: {args.images} images, {device} {str(dtype).replace('torch.', '')}, "
        f"{base.steps} steps dpm++, guidance {base.guidance}"
    )
    for size in [int(s) for s in args.sizes.split(",")]:
        rates[size] = images_per_second(render, jobs, size, device)
        print(
            f"  batch {size:>3}: {rates[size]:6.2f} img/s  ratio vs batch 1: {rates[size] / rates[1]:.2f}",
            flush=True,
        )
    best = max(rates, key=rates.get)

    def images(scheduler: str, steps: int) -> tuple[np.ndarray, float]:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        run = Renderer(pipe, Settings(steps, base.guidance, 64, 64))
        start = time.perf_counter()
        out = [
            run(
                [j.prompt for j in jobs[i : i + best]],
                [j.negative_prompt for j in jobs[i : i + best]],
                [j.seed for j in jobs[i : i + best]],
            )
            for i in range(0, len(jobs), best)
        ]
        return np.concatenate(out) * 255, len(jobs) / (time.perf_counter() - start)

    reference, _ = images("dpm++", 50)
    quality = {}
    print(
        f"\n== schedulers and steps (batch {best}): distance to dpm++ at 50 steps (mean |difference|, 0-255)"
    )
    for scheduler in args.schedulers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            made, rate = images(scheduler, steps)
            distance = float(np.abs(made - reference).mean())
            quality[f"{scheduler}@{steps}"] = {"img_s": round(rate, 2), "distance": round(distance, 2)}
            print(
                f"  {scheduler:<6} {steps:>3} steps: {rate:6.2f} img/s  distance {distance:5.2f}", flush=True
            )
    command = "python benchmarks/batch_scaling.py " + " ".join(sys.argv[1:])
    print(f"reproduce: {command}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "device": str(device),
                "dtype": str(dtype),
                "images": args.images,
                "img_s_by_batch": {str(k): round(v, 3) for k, v in rates.items()},
                "schedulers": quality,
                "command": command,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
