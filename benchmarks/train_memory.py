"""Peak memory of `medisyn train --lora` vs the number of training images: it must not grow with them.

    python benchmarks/train_memory.py --model bundled --resolution 64 --steps 4            # small, minutes
    python benchmarks/train_memory.py --model sd15 --resolution 512 --steps 2              # SD 1.5 shape

Each condition is `medisyn train DATA --base MODEL --lora 4 --steps N --batch-size 1 --resolution R
--validate-every 0 --mixed-precision no` in a fresh process on 40 and on 1,000 training images (the 64 px images of ../shared/data,
resized to R with LANCZOS, written as an ImageFolder in a temp folder; the 40 are the first 40 of the 1,000).
Same model, steps, batch size, seed and threads; only the number of images differs. The child reports its own
peak resident memory (VmHWM), its seconds, and how many images were encoded by the VAE. `--pythonpath` runs an
older copy of medisyn_cli (e.g. `git archive COMMIT medisyn_cli | tar -x -C /tmp/old`) for a before/after.
--model: `bundled` (the 27 MB model at 64 px), `sd15` (benchmarks/real_size_models.py: SD-1.5 shapes,
random weights), or a pipeline folder. Results: benchmarks/results/train_memory/<name>.json and .txt.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "train_memory"
DATASETS = ("isic2017_dermoscopy", "kermany_pediatric_cxr", "brain_tumor_mri", "busi_breast_ultrasound")


def training_folder(folder: Path, n: int, size: int) -> Path:
    """An ImageFolder of the first n images of DATASETS (64 px), resized to `size`, with their captions."""
    from PIL import Image

    rows = []
    for dataset in DATASETS:
        with open(DATA / dataset / "metadata.csv") as handle:
            rows += [(dataset, r) for r in csv.DictReader(handle)]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} images in {DATA}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "caption"])
        for i, (dataset, row) in enumerate(rows[:n]):
            image = Image.open(DATA / dataset / row["file_name"]).convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            name = f"images/{i:05d}.png"
            image.save(folder / name, compress_level=1)
            writer.writerow([name, row["label"], row["caption"]])
    return folder


def model_folder(name: str) -> str:
    """The pipeline folder of --model."""
    if name == "bundled":
        return str(REPO / "medisyn_cli" / "bundled" / "mini")
    if name in ("sd15", "sd2", "sdxl"):
        sys.path.insert(0, str(REPO / "benchmarks"))
        from real_size_models import real_size_model

        return str(real_size_model(name))
    return name


def child(spec: dict) -> None:
    """In a fresh process: run `medisyn train` as the CLI does, then write peak RSS, seconds and encodings."""
    import torch

    torch.set_num_threads(spec["threads"])
    from medisyn_cli.cli.main import app

    encoded = []  # the images the VAE encodes: encode_latents wrapped wherever it was imported

    def counting(original):
        def counted(vae, pixels, *args, **kwargs):
            encoded.append(len(pixels))
            return original(vae, pixels, *args, **kwargs)

        return counted

    for name, module in list(sys.modules.items()):
        if name.startswith("medisyn_cli.train") and hasattr(module, "encode_latents"):
            module.encode_latents = counting(module.encode_latents)
    started = time.time()
    try:
        app(spec["args"], standalone_mode=False)
    finally:
        metrics = {
            "peak_rss_mb": peak_rss_mb(),
            "seconds": round(time.time() - started, 1),
            "images_encoded": sum(encoded),
        }
        Path(spec["metrics"]).write_text(json.dumps(metrics))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_condition(n: int, data: Path, model: str, args, scratch: Path) -> dict:
    """Train on `data` in a child process; its metrics, exit status and log tail."""
    out, metrics = scratch / f"out-{n}", scratch / f"metrics-{n}.json"
    train_args = [
        "train",
        str(data),
        "--out",
        str(out),
        "--base",
        model,
        "--lora",
        "4",
        "--steps",
        str(args.steps),
    ]
    train_args += ["--batch-size", "1", "--resolution", str(args.resolution), "--validate-every", "0"]
    train_args += ["--mixed-precision", args.mixed_precision]
    spec = {"args": train_args, "metrics": str(metrics), "threads": args.threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.pythonpath:
        env["PYTHONPATH"] = f"{args.pythonpath}:{env.get('PYTHONPATH', '')}"
    log = scratch / f"log-{n}.txt"
    with open(log, "w") as handle:
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    row = json.loads(metrics.read_text()) if metrics.exists() else {"peak_rss_mb": None}
    row.update(images=n, exit_code=done.returncode)
    if done.returncode:
        row["log_tail"] = log.read_text()[-600:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--images", default="40,1000", help="Comma-separated training set sizes.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--mixed-precision",
        default="no",
        help="train's --mixed-precision (default no: bf16 autocast is emulated, many times slower, on CPUs "
        "without AVX512-BF16/AMX)",
    )
    parser.add_argument("--pythonpath", default="", help="Run this copy of medisyn_cli (before/after).")
    parser.add_argument("--name", default=None, help="Results file name (default: MODEL-RESOLUTION).")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    model = model_folder(args.model)
    sizes = [int(s) for s in args.images.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medisyn-train-memory-") as tmp:
        scratch = Path(tmp)
        for n in sizes:
            data = training_folder(scratch / f"data-{n}", n, args.resolution)
            rows.append(run_condition(n, data, model, args, scratch))
            print(json.dumps(rows[-1]), flush=True)
    peaks = [r["peak_rss_mb"] for r in rows]
    ratio = peaks[-1] / peaks[0] if all(peaks) else None
    result = {
        "command": "python benchmarks/train_memory.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "resolution": args.resolution,
        "steps": args.steps,
        "threads": args.threads,
        "mixed_precision": args.mixed_precision,
        "code": args.pythonpath or "this checkout",
        "runs": rows,
        "peak_ratio_largest_to_smallest": ratio,
        "target": "ratio <= 1.10",
    }
    name = args.name or f"{Path(args.model).name}-{args.resolution}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"{result['command']}  ({result['code']})"]
    lines += [
        f"{r['images']:>6} images: peak RSS {r['peak_rss_mb'] or float('nan'):8.0f} MB, {r.get('seconds', '-')} s, "
        f"{r.get('images_encoded', '-')} images VAE-encoded, exit {r['exit_code']}"
        for r in rows
    ]
    lines.append(
        f"peak RSS ratio {sizes[-1]} / {sizes[0]} images: {ratio:.3f} (target <= 1.10)" if ratio else ""
    )
    (RESULTS / f"{name}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
