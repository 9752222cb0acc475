"""Memory stays flat as --n grows: peak RSS of `medisyn generate` at a small and a large n.

Each run is a fresh `medisyn generate` process (screening against a pixel index of the real dermoscopy images,
both writers, consolidation included); its peak resident memory is read from the kernel (ru_maxrss of the
waited-for child). Few denoising steps keep the large run short: memory does not depend on the step count.

    python benchmarks/memory.py --small 100 --large 2000 --steps 2

Target: the large run's peak within 10% of the small run's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "isic2017_dermoscopy"
MANIFEST = REPO / "prompts" / "mini_dermoscopy.csv"

PEAK = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a command run as the only child of a fresh wrapper process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, check=True)
    kib, code = done.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(command)} exited {code}:\n{done.stderr[-3000:]}")
    return int(kib) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args()
    from medisyn_cli.screening.build import build_index

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        build_index([str(DATA / "images")], index, embedder="pixel", index_type="flat", show_progress=False)
        for n in (args.small, args.large):
            command = [
                sys.executable,
                "-m",
                "medisyn_cli",
                "generate",
                "--manifest",
                str(MANIFEST),
                "--n",
                str(n),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--index",
                str(index),
                "--out",
                str(Path(tmp) / f"out-{n}"),
                "--no-progress",
            ]
            mib, seconds = peak_rss(command)
            parquet = sum(p.stat().st_size for p in (Path(tmp) / f"out-{n}" / "parquet").glob("*.parquet"))
            rows[n] = {
                "peak_rss_mib": round(mib, 1),
                "seconds": round(seconds, 1),
                "parquet_mib": round(parquet / 2**20, 1),
            }
            print(
                f"  n={n}: peak RSS {mib:,.0f} MiB in {seconds:.0f} s (dataset {parquet / 2**20:.1f} MiB)",
                flush=True,
            )
    ratio = rows[args.large]["peak_rss_mib"] / rows[args.small]["peak_rss_mib"]
    command = "python benchmarks/memory.py " + " ".join(sys.argv[1:])
    print(
        f"\npeak RSS: n={args.small} (baseline) {rows[args.small]['peak_rss_mib']:,.0f} MiB, n={args.large} "
        f"{rows[args.large]['peak_rss_mib']:,.0f} MiB, ratio {ratio:.3f} (target <= 1.10)\nreproduce: {command}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "runs": rows,
                "ratio": round(ratio, 3),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "command": command,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
