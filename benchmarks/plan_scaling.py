"""How `medisyn generate --dry-run` scales with the number of classes (issue #30: 10k classes took 24 s, 100k over
18 minutes, because every class lookup scanned every manifest row).

    python benchmarks/plan_scaling.py [--classes 2500,5000,10000,20000] [--per-class 10]

Prints, for each manifest size, the seconds of one dry run in this process (the manifest read and checked, quotas,
the plan preview, the printed plan table; imports excluded) and the ratio to the size before: about 2 for each
doubling when the dry run is linear, about 4 when it is quadratic.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from medisyn_cli.cli.main import app


def write_manifest(folder: Path, classes: int) -> Path:
    path = folder / f"m{classes}.csv"
    lines = ["label,prompt"] + [f"class_{c},dermoscopy image of lesion type {c}" for c in range(classes)]
    path.write_text("\n".join(lines) + "\n")
    return path


def dry_run_seconds(manifest: Path, n: int, out: Path) -> float:
    args = ["generate", "--manifest", str(manifest), "--n", str(n), "--out", str(out), "--dry-run"]
    clock = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            app(args, standalone_mode=False)
        except SystemExit:
            pass
    return time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="2500,5000,10000,20000")
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    sizes = [int(size) for size in args.classes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        dry_run_seconds(write_manifest(folder, 10), 100, folder / "o")  # warm-up: lazy imports
        before = None
        for size in sizes:
            seconds = dry_run_seconds(write_manifest(folder, size), size * args.per_class, folder / "o")
            ratio = f"{seconds / before:.2f}x the size before" if before else ""
            print(f"{size:>7} classes, n={size * args.per_class}: {seconds:7.2f} s  {ratio}", flush=True)
            before = seconds


if __name__ == "__main__":
    main()
