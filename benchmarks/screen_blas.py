"""Does limiting BLAS to one thread around the pixel embedder's small products speed up `medisyn screen`?

The pixel embedder applies each query view as two small matrix products (a 61-view operator on a 64x64
image). On numpy's multi-threaded OpenBLAS such small products spend more time waking and synchronising
threads than computing. `medisyn_cli.screening.embed.BLAS_THREADS = 1` (the default) wraps them in
`threadpoolctl`'s limit; `None` leaves BLAS as the library starts it (the old behaviour, the baseline).

Same work for both: one index built once (`build_index` over --index-data), then `screen_dataset` (the API
behind `medisyn screen`) over --screen-data, run alternately baseline / candidate --repeats times; the best
time of each is reported with images/s and the ratio. The run compares the screened tables (screen.csv):
every decision (nearest training image, near-copy call, view) must be the same; the similarities are not
byte-identical, because OpenBLAS's multi-threaded sgemm rounds differently from its one-thread path (1e-7):
the old output already changed with the BLAS thread count (2 vs 4 threads differ the same way), the new one
is the same on any number of cores.

    python benchmarks/screen_blas.py                   # brain MRI + chest x-ray indexed, ultrasound + dermoscopy screened
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "screen_blas"


def run_screen(
    dataset: list[Path], index: Path, out: Path, blas: int | None
) -> tuple[float, int, list[bytes]]:
    """(seconds, images screened, screen.csv bytes) of one screen_dataset run per folder with BLAS_THREADS=blas."""
    from medisyn_cli.screening import embed
    from medisyn_cli.screening.audit import screen_dataset

    embed.BLAS_THREADS = blas
    seconds, count, tables = 0.0, 0, []
    for folder in dataset:
        report = out / f"{folder.name}-{blas}"
        clock = time.perf_counter()
        summary = screen_dataset(folder, index, report_dir=report, show_progress=False)
        seconds += time.perf_counter() - clock
        count += summary.screened
        tables.append((report / "screen.csv").read_bytes())
    return seconds, count, tables


def compare(first: bytes, second: bytes) -> tuple[bool, float]:
    """(every column but the similarity equal, max |similarity difference|) of two screen.csv contents."""
    import csv
    import io

    a, b = (list(csv.DictReader(io.StringIO(t.decode()))) for t in (first, second))
    keys = [k for k in a[0] if k != "nn_similarity"] if a else []
    same = len(a) == len(b) and all(all(x[k] == y[k] for k in keys) for x, y in zip(a, b))
    delta = max(
        (abs(float(x["nn_similarity"] or 0) - float(y["nn_similarity"] or 0)) for x, y in zip(a, b)),
        default=0,
    )
    return same, delta


def main() -> None:
    from threadpoolctl import threadpool_info

    from medisyn_cli.screening.build import build_index

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index-data", nargs="+", default=["brain_tumor_mri", "kermany_pediatric_cxr"])
    parser.add_argument("--screen-data", nargs="+", default=["busi_breast_ultrasound", "isic2017_dermoscopy"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    blas = [f"{i['prefix']} {i['num_threads']} threads" for i in threadpool_info() if i["user_api"] == "blas"]
    lines = [
        f"# python benchmarks/screen_blas.py --repeats {args.repeats}",
        f"# {platform.machine()}, {__import__('os').cpu_count()} CPUs, BLAS: {', '.join(blas)}",
    ]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        clock = time.perf_counter()
        build_index([DATA / d for d in args.index_data], work / "index", show_progress=False)
        lines.append(f"index: {', '.join(args.index_data)} built in {time.perf_counter() - clock:.0f} s")
        runs: dict = {"baseline (BLAS as started)": None, "candidate (1 BLAS thread)": 1}
        best, tables = {}, {}
        for _ in range(args.repeats):
            for name, blas_threads in runs.items():
                seconds, count, table = run_screen(
                    [DATA / d for d in args.screen_data], work / "index", work, blas_threads
                )
                best[name] = min(best.get(name, float("inf")), seconds)
                tables[name] = table
    checks = [compare(a, b) for a, b in zip(*tables.values())]
    same, delta = all(c[0] for c in checks), max(c[1] for c in checks)
    lines.append(
        f"screened: {', '.join(args.screen_data)} ({count} images), best of {args.repeats} runs each"
    )
    rates = {name: count / seconds for name, seconds in best.items()}
    for name, rate in rates.items():
        lines.append(f"  {name:<28} {best[name]:7.1f} s  {rate:7.1f} images/s")
    base, cand = rates.values()
    lines.append(
        f"  ratio candidate / baseline: {cand / base:.2f}x; decisions identical: {same}; "
        f"max |similarity difference| {delta:.1e}"
    )
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "screen_blas.txt").write_text("\n".join(lines) + "\n")
    (args.out / "screen_blas.json").write_text(
        json.dumps(
            {
                "images": count,
                "seconds": best,
                "images_per_s": rates,
                "ratio": cand / base,
                "decisions_identical": same,
                "max_similarity_difference": delta,
            },
            indent=1,
        )
        + "\n"
    )
    if not same or delta > 1e-5:
        sys.exit("screen.csv decisions differ between the two BLAS settings")


if __name__ == "__main__":
    main()
