"""What the near-copy screen adds to a `generate --index` run, without the model: two source trees compared.

`generate --index` loads the index once, then screens every batch of 8 images on the main thread while the model
waits (CPU). This measures that part alone, so a busy machine (other jobs slowing the model's threads) cannot hide
or inflate it: in a fresh process per run, `load_index`, `Screener`, then --n images screened in checks of
--batch, wall and CPU seconds. The baseline is another source tree (e.g. a `git worktree` of the commit before),
the candidate this one; runs alternate, --repeats each, medians reported with their ratio, and the screened
decisions of both must be identical (nearest training image, near-copy call, view, region, inliers; similarity
within 1e-5), unless --changes-expected (a change meant to move similarities): then the near-copy calls that differ
are counted and reported. --warm takes `Screener.warm_up` off the clock (generate runs it in a thread while the
model loads: the first check's one-time costs, e.g. the grouped searches' projections), so the clock holds what
generate waits for: loading the index and the checks.

Images: --n real images that are not in the index (blood smear, ultrasound, brain MRI, chest x-ray: what a
generated image is to the index, mostly) and every fourth one replaced by a mirrored indexed dermoscopy image
(a copy). Index: the ~962 dermoscopy images, as overhead.py builds it (--index to reuse one).

    git worktree add /tmp/base HEAD~5
    python benchmarks/screen_cost.py --baseline-tree /tmp/base --n 48 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "screen_cost"
OTHERS = ("bccd_blood_smear", "busi_breast_ultrasound", "brain_tumor_mri", "kermany_pediatric_cxr")


def images(n: int) -> list:
    """The screened images (see the module docstring), the same in every run."""
    from PIL import Image, ImageOps

    others = [p for name in OTHERS for p in sorted((DATA / name / "images").glob("*.png"))[:n]]
    derm = sorted((DATA / "isic2017_dermoscopy" / "images").glob("*.png"))
    chosen = []
    for i in range(n):
        path = derm[(i * 37) % len(derm)] if i % 4 == 3 else others[(i * 7) % len(others)]
        image = Image.open(path).convert("RGB")
        chosen.append(ImageOps.mirror(image) if i % 4 == 3 else image)
    return chosen


def child(index: str, n: int, batch: int, warm: bool) -> None:
    """One run in this fresh process (imports already paid: the model's run pays them anyway); `warm`: the screener
    warmed up (`Screener.warm_up`, which generate runs in a thread while the model loads) off the clock."""
    from medisyn_cli.screening.index import load_index
    from medisyn_cli.screening.screener import Screener

    queries = images(n)
    clock, cpu = time.perf_counter(), time.process_time()
    screener = Screener(load_index(index))
    if warm:
        paused, paused_cpu = time.perf_counter(), time.process_time()
        screener.warm_up()
        clock += time.perf_counter() - paused
        cpu += time.process_time() - paused_cpu
    results = []
    for start in range(0, n, batch):
        results += screener.check(queries[start : start + batch])
    seconds, cpu = time.perf_counter() - clock, time.process_time() - cpu
    rows = [[r.nn_id, r.near_copy, r.view, r.region, r.inliers, r.nn_similarity] for r in results]
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": rows}))


def run(tree: Path, index: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", "--index", str(index), "--n", str(args.n)]
    command += ["--batch", str(args.batch)] + (["--warm"] if args.warm else [])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[:5] == y[:5] and abs(x[5] - y[5]) <= 1e-5 for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-tree", type=Path, required=False)
    parser.add_argument("--index", type=Path, default=None)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--changes-expected",
        action="store_true",
        help="report the near-copy calls that differ instead of failing",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="warm the screener up off the clock first, as generate does while the model loads",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(str(args.index), args.n, args.batch, args.warm)
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            sys.path.insert(0, str(REPO))
            from medisyn_cli.screening.build import build_index

            index = Path(tmp) / "index"
            build_index([DATA / "isic2017_dermoscopy" / "images"], index, show_progress=False)
        trees = {"baseline": args.baseline_tree, "candidate": REPO}
        runs: dict = {name: [] for name in trees}
        load = [round(os.getloadavg()[0], 2)]
        for _ in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run(tree, index, args))
                load.append(round(os.getloadavg()[0], 2))
    median = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu")}
        for name, rs in runs.items()
    }
    identical = all(same(runs["baseline"][0]["rows"], r["rows"]) for r in runs["candidate"])
    base, cand = runs["baseline"][0]["rows"], runs["candidate"][0]["rows"]
    changed = [j for j, (x, y) in enumerate(zip(base, cand)) if x[1] != y[1]]
    lines = [
        f"# python benchmarks/screen_cost.py --baseline-tree {args.baseline_tree} --n {args.n} --repeats "
        f"{args.repeats}{' --warm' if args.warm else ''}   ({os.cpu_count()} CPUs, load average "
        f"{min(load):.2f}-{max(load):.2f})",
        f"load_index + Screener + {'warm-up (off the clock) + ' if args.warm else ''}{args.n} images in checks of "
        f"{args.batch}, fresh process each, median of {args.repeats}",
    ]
    for name, row in median.items():
        lines.append(f"  {name:<10} {row['seconds']:6.2f} s wall  {row['cpu']:6.2f} s CPU   ({trees[name]})")
    ratio = median["baseline"]["seconds"] / median["candidate"]["seconds"]
    lines.append(
        f"  baseline / candidate: {ratio:.2f}x wall, "
        f"{median['baseline']['cpu'] / median['candidate']['cpu']:.2f}x CPU; decisions identical: {identical}"
    )
    lines.append(f"  near-copy calls that differ: {len(changed)} of {len(base)} (images {changed})")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "screen_cost.txt").write_text("\n".join(lines) + "\n")
    summary = {
        "median": median,
        "ratio_wall": ratio,
        "identical": identical,
        "changed_calls": changed,
        "load_average": load,
    }
    (args.out / "screen_cost.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not identical and not args.changes_expected:
        sys.exit("the two trees screen differently")


if __name__ == "__main__":
    main()
