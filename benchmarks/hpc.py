"""HPC costs of `medisyn generate` on this machine, with the bundled model.

1. shards: wall time of one process vs two shard processes (`--shard 0/2`, `--shard 1/2`, each with half the
   cores) making the same run into one --out; the datasets must be identical.
2. resume: a run killed with SIGKILL half-way and resumed with --resume, total wall time of both against one
   uninterrupted run (target <= 1.05); the datasets must be identical.

    python benchmarks/hpc.py --n 200 --batch-size 8 --out benchmarks/results/hpc.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MEDISYN = [sys.executable, "-m", "medisyn_cli"]


def command(args, out: Path, *extra: str) -> list[str]:
    return MEDISYN + [
        "generate",
        "--manifest",
        str(REPO / "prompts" / args.manifest),
        "--n",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def timed(*procs_args) -> float:
    start = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for cmd, e in procs_args
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"failed: {err[-2000:]}")
    return time.perf_counter() - start


def content(out: Path) -> list:
    frame = pd.read_parquet(out / "parquet")
    return [(r["id"], r["seed"], r["image"]["bytes"]) for _, r in frame.iterrows()]


def compare(a: Path, b: Path) -> dict:
    """Byte identity of two runs' Parquet rows, and else the largest pixel difference (0-255) of the same ids."""
    import io

    import numpy as np
    from PIL import Image

    first, second = content(a), content(b)
    same_plan = [(i, s) for i, s, _ in first] == [(i, s) for i, s, _ in second]
    pixels = [
        np.abs(np.asarray(Image.open(io.BytesIO(x)), int) - np.asarray(Image.open(io.BytesIO(y)), int)).max()
        for (_, _, x), (_, _, y) in zip(first, second)
    ]
    return {
        "identical": first == second,
        "same_ids_and_seeds": same_plan,
        "max_pixel_difference": int(max(pixels)),
    }


def kill_half_way(args, out: Path, cores: int) -> float:
    """Start a run, SIGKILL it when half its batches are done; returns its wall time."""
    batches = -(-args.n // args.batch_size)
    start = time.perf_counter()
    proc = subprocess.Popen(
        command(args, out), env=env(cores), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    done = out / "_work" / "done"
    while not done.exists() or len(list(done.glob("b-*.json"))) < batches // 2:
        if proc.poll() is not None:
            raise SystemExit("the run ended before it could be killed")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", default="mini_dermoscopy.csv")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hpc.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        startup = timed(
            (
                MEDISYN
                + [
                    "generate",
                    "--manifest",
                    str(REPO / "prompts" / args.manifest),
                    "--n",
                    "3",
                    "--out",
                    str(tmp / "startup"),
                    "--no-progress",
                ],
                env(cores),
            )
        )
        single = timed((command(args, tmp / "one"), env(cores)))
        single_1 = timed((command(args, tmp / "one-thread"), env(1)))
        half = max(1, cores // 2)
        sharded = timed(*[(command(args, tmp / "two", "--shard", f"{k}/2"), env(half)) for k in range(2)])
        same_shards = compare(tmp / "one-thread", tmp / "two")  # the same threads per process
        across_threads = compare(tmp / "one", tmp / "two")
        killed = kill_half_way(args, tmp / "resumed", cores)
        resumed = timed((command(args, tmp / "resumed", "--resume"), env(cores)))
        same_resume = compare(tmp / "one", tmp / "resumed")
        shutil.rmtree(tmp, ignore_errors=True)
    overhead = killed + resumed - single
    result = {
        "n": args.n,
        "batch_size": args.batch_size,
        "manifest": args.manifest,
        "cores": cores,
        "startup_s": round(startup, 1),
        "single_process_s": round(single, 1),
        "single_process_1_thread_s": round(single_1, 1),
        "two_shards_s": round(sharded, 1),
        "shard_ratio": round(sharded / single, 3),
        "shards_vs_one_thread": same_shards,
        "shards_vs_two_threads": across_threads,
        "killed_after_s": round(killed, 1),
        "resume_s": round(resumed, 1),
        "resume_overhead_s": round(overhead, 1),
        "resume_ratio": round((killed + resumed) / single, 3),
        "resume_vs_uninterrupted": same_resume,
        "command": "python benchmarks/hpc.py " + " ".join(sys.argv[1:]),
    }
    print(f"startup (a 3-image run): {startup:.1f} s")
    print(
        f"one process: {single:.1f} s   two shards ({half} core(s) each): {sharded:.1f} s   "
        f"ratio {sharded / single:.3f}"
    )
    print(f"  shards vs one 1-thread process: {same_shards}")
    print(
        f"  shards vs one 2-thread process: {across_threads} (CPU kernels round differently with other thread "
        f"counts)"
    )
    print(
        f"uninterrupted: {single:.1f} s   killed half-way + resumed: {killed:.1f} + {resumed:.1f} s   "
        f"ratio {(killed + resumed) / single:.3f} (target <= 1.05); resume costs {overhead:.1f} s, "
        f"a startup plus the batch in flight   {same_resume}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}\nreproduce: {result['command']}")


if __name__ == "__main__":
    main()
