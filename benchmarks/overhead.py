"""What medisyn adds around the diffusion model: `medisyn generate` vs a bare loop of the same diffusers pipeline.

Baseline: load the bundled model with plain diffusers and call it on the same prompts, seeds, steps, guidance and
batch size, keeping the images in memory as PIL images (nothing written). Candidate: `run_generate` with
screening against a pixel index of the real dermoscopy images and both writers (Parquet and ImageFolder). Both
are timed from before the model loads to the last image, each in a fresh process, alternating, `--repeats` times;
the median is reported. Ablations show what the overlap (off on CPU by default, on on GPUs) and the
prompt cache contribute.

    python benchmarks/overhead.py --n 200 --repeats 3

Target: ratio <= 1.05 on CPU with the bundled model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "isic2017_dermoscopy"
MANIFEST = REPO / "prompts" / "mini_dermoscopy.csv"


def bare_loop(n: int, batch_size: int, steps: int | None = None) -> dict:
    """The model's own cost: plain diffusers over the plan's prompts and seeds."""
    start = time.perf_counter()
    import torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    from medisyn_cli.core.batching import batched
    from medisyn_cli.dataset.manifest import load_manifest
    from medisyn_cli.generate.plan import iter_jobs, quotas
    from medisyn_cli.pipeline.load import BUNDLED_MODEL

    settings = json.loads((BUNDLED_MODEL / "medisyn.json").read_text())["recommended"]
    pipe = DiffusionPipeline.from_pretrained(BUNDLED_MODEL, torch_dtype=torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++"
    )
    pipe.set_progress_bar_config(disable=True)
    manifest = load_manifest(MANIFEST)
    images = []
    for jobs in batched(iter_jobs(manifest, quotas(manifest.weights(), n), 0), batch_size):
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        negatives = [job.negative_prompt for job in jobs]
        images += pipe(
            prompt=[job.prompt for job in jobs],
            negative_prompt=negatives if any(negatives) else None,
            num_inference_steps=steps or settings["steps"],
            guidance_scale=settings["guidance"],
            generator=generators,
        ).images
    return {"seconds": time.perf_counter() - start, "images": len(images)}


def medisyn_run(
    n: int,
    batch_size: int,
    index: str | None,
    out: str,
    overlap: bool | None,
    cache_prompts: bool,
    steps: int | None = None,
) -> dict:
    start = time.perf_counter()
    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate

    config = GenerateConfig(
        manifest=str(MANIFEST),
        n=n,
        out=out,
        batch_size=batch_size,
        index=index,
        overlap=overlap,
        cache_prompts=cache_prompts,
        steps=steps,
    )
    summary = run_generate(config, show_progress=False)
    return {
        "seconds": time.perf_counter() - start,
        "images": sum(c.written for c in summary.counts.values()),
        "rejected": sum(c.rejected for c in summary.counts.values()),
    }


VARIANTS = {
    "bare diffusers loop": {"kind": "bare"},
    "medisyn generate": {"kind": "medisyn", "overlap": None, "cache_prompts": True},
    "  without screening (no --index)": {
        "kind": "medisyn",
        "overlap": None,
        "cache_prompts": True,
        "index": False,
    },
    "  with overlap (GPU default)": {"kind": "medisyn", "overlap": True, "cache_prompts": True},
    "  without prompt cache": {"kind": "medisyn", "overlap": None, "cache_prompts": False},
}


def child(args) -> None:
    """Run one variant in this (fresh) process and print its JSON result."""
    spec = VARIANTS[args.variant]
    if spec["kind"] == "bare":
        result = bare_loop(args.n, args.batch_size, args.steps)
    else:
        index = args.index if spec.get("index", True) else None
        result = medisyn_run(
            args.n, args.batch_size, index, args.child_out, spec["overlap"], spec["cache_prompts"], args.steps
        )
    print(json.dumps(result))


def run_child(args, variant: str, index: Path, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        variant,
        "--n",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--index",
        str(index),
        "--child-out",
        str(out),
    ] + (["--steps", str(args.steps)] if args.steps else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_index(folder: Path) -> Path:
    from medisyn_cli.screening.build import build_index as build

    build([str(DATA / "images")], folder, embedder="pixel", index_type="flat", show_progress=False)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="Sampling steps (default: the model's own).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overhead.json")
    parser.add_argument(
        "--variants",
        default=",".join(v.strip() for v in VARIANTS),
        help="Comma-separated variants to run (the bare loop always runs).",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    load = [
        round(os.getloadavg()[0], 2)
    ]  # the machine's load: other jobs slow the model and screening unequally
    with tempfile.TemporaryDirectory() as tmp:
        index = build_index(Path(tmp) / "index")
        wanted = {v.strip() for v in args.variants.split(",")} | {"bare diffusers loop"}
        times: dict[str, list[float]] = {name: [] for name in VARIANTS if name.strip() in wanted}
        extra: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for number, variant in enumerate(times):
                result = run_child(args, variant, index, Path(tmp) / f"out-{repeat}-{number}")
                times[variant].append(result["seconds"])
                extra[variant] = result
                load.append(round(os.getloadavg()[0], 2))
                print(
                    f"  repeat {repeat + 1}/{args.repeats} {variant.strip():<28} {result['seconds']:6.1f} s "
                    f"(load {load[-1]:.2f})",
                    flush=True,
                )
    base = statistics.median(times["bare diffusers loop"])
    rows = {
        name: {
            "median_s": round(statistics.median(t), 2),
            "runs_s": [round(x, 2) for x in t],
            "ratio": round(statistics.median(t) / base, 3),
            **{k: v for k, v in extra[name].items() if k != "seconds"},
        }
        for name, t in times.items()
    }
    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    print(
        f"\n{args.n} images, bundled model, batch {args.batch_size}, {os.cpu_count()} CPUs, median of "
        f"{args.repeats} fresh processes (model load included); load average {min(load):.2f}-{max(load):.2f}"
    )
    print(f"{'variant':<30} {'seconds':>8} {'img/s':>7} {'ratio':>6}")
    for name, row in rows.items():
        print(f"{name:<30} {row['median_s']:>8.1f} {args.n / row['median_s']:>7.2f} {row['ratio']:>6.3f}")
    print(
        f"target: medisyn generate / bare loop <= 1.05 (#3), <= 1.10 with the general screening views (#16)\n"
        f"reproduce: {command}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "n": args.n,
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "load_average": load,
                "variants": rows,
                "command": command,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
