"""What each part of the default near-copy detector costs: images/s of `Screener.check` for the three detectors.

One index of the real dermoscopy images of ../shared/data (962, as `overhead.py` screens against), 128 blood
smear images screened (none are copies: the common case while generating), one process, after a warm-up:

    tuned            the views of indexes built before issue #16 (flips, shifts, 90/95% crops; 61 views)
    general          + turns, inversions, 80% crops, borders, small rotations (162 views)
    general+regions  + the 16 region tiles of every training image (the default up to 20,000 images)
    default          + keypoint verification of the candidates (local.npz): what `index build` makes today
    learned          with --learned DIR: the learned descriptor saved in DIR (an index folder built with
                     --embedder learned; speed does not depend on what it was trained on): 16 views, no tiles

    python benchmarks/screen_speed.py [--learned DIR] [--busy]

--busy adds the comparison of issue #29: the default detector screening generate's 8-image batches beside a busy
core (a process spinning on one of the CPUs), with the screener's default threads (Screener.workers) against one
thread, alternated --repeats times (best of each); the ratio one-thread / default must be >= 1. Written apart
(results/screen_speed/busy).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "screen_speed"


def main() -> None:
    from PIL import Image

    from medisyn_cli.screening.embed import TILES, get_embedder
    from medisyn_cli.screening.index import TrainingIndex
    from medisyn_cli.screening.learned import load_embedder
    from medisyn_cli.screening.screener import Screener
    from medisyn_cli.screening.verify import LocalFeatures

    training = [Image.open(p) for p in sorted((DATA / "isic2017_dermoscopy" / "images").glob("*.png"))]
    queries = [Image.open(p) for p in sorted((DATA / "bccd_blood_smear" / "images").glob("*.png"))[:128]]
    for image in training + queries:
        image.load()
    embedder = get_embedder("pixel")
    vectors = embedder.embed(training)
    tiles = embedder.embed_views(training, TILES).reshape(-1, embedder.dim)
    keys = [str(i) for i in range(len(training))]
    conditions = {
        "tuned": (None, "tuned"),
        "general": (None, None),
        "general+regions": (tiles, None),
        "default": (tiles, None),
    }
    local = LocalFeatures.from_images(training)
    if "--busy" in sys.argv:
        return busy_core(
            TrainingIndex.from_vectors(vectors, keys, embedder, regions=tiles, local=local), queries
        )
    learned = (
        load_embedder(Path(sys.argv[sys.argv.index("--learned") + 1])) if "--learned" in sys.argv else None
    )
    conditions.update({"learned": (None, None)} if learned else {})
    lines = [
        f"# python benchmarks/screen_speed.py{' --learned DIR' if learned else ''}   ({os.cpu_count()} CPUs, "
        f"nice {os.nice(0)})",
        f"{len(training)} dermoscopy images indexed, {len(queries)} blood smear images screened",
    ]
    rates = {}
    for name, (regions, view_set) in conditions.items():
        model = learned if name == "learned" else embedder
        index = TrainingIndex.from_vectors(
            model.embed(training) if name == "learned" else vectors,
            keys,
            model,
            regions=regions,
            local=local if name == "default" else None,
        )
        screener = Screener(index, view_set=view_set)
        screener.check(queries[:8])
        clock = time.perf_counter()
        screener.check(queries)
        rates[name] = len(queries) / (time.perf_counter() - clock)
        lines.append(
            f"  {name:<16} {len(screener.views) + len(screener.region_views):>4} views  "
            f"{rates[name]:7.1f} images/s  ratio to tuned {rates[name] / rates['tuned']:.2f}"
        )
    print("\n".join(lines))
    out = RESULTS / "with_learned" if learned else RESULTS  # the learned rows are measured apart
    out.mkdir(parents=True, exist_ok=True)
    (out / "screen_speed.txt").write_text("\n".join(lines) + "\n")
    (out / "screen_speed.json").write_text(json.dumps({"images_per_s": rates}, indent=1) + "\n")


def busy_core(index, queries: list, batch: int = 8) -> None:
    """Default threads vs one thread, beside a process spinning on one core, `batch` images per check."""
    import subprocess

    from medisyn_cli.screening.screener import Screener

    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 3
    screeners = {"one thread": Screener(index, workers=1), "default threads": Screener(index)}
    for screener in screeners.values():
        screener.check(queries[:batch])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    best, decisions = {}, {}
    try:
        for _ in range(repeats):
            for name, screener in screeners.items():
                clock, results = time.perf_counter(), []
                for start in range(0, len(queries), batch):
                    results += screener.check(queries[start : start + batch])
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - clock)
                decisions[name] = [(r.nn_id, r.near_copy, r.view, r.region, r.inliers) for r in results]
    finally:
        spinner.kill()
        spinner.wait()
    ratio = best["one thread"] / best["default threads"]
    lines = [
        f"# python benchmarks/screen_speed.py --busy --repeats {repeats}   ({os.cpu_count()} CPUs, "
        f"load before {os.getloadavg()[0]:.2f}; one core kept busy by a spinning process)",
        f"default detector (general views, tiles, verification), {len(queries)} images in checks of {batch}, "
        f"best of {repeats}",
    ]
    workers = screeners["default threads"].workers
    for name, seconds in best.items():
        threads = 1 if name == "one thread" else workers
        lines.append(f"  {name:<16} ({threads}) {seconds:6.2f} s  {len(queries) / seconds:6.1f} images/s")
    lines.append(
        f"  one thread / default: {ratio:.2f}x (>= 1: the default is no slower); "
        f"decisions identical: {decisions['one thread'] == decisions['default threads']}"
    )
    print("\n".join(lines))
    out = RESULTS / "busy"
    out.mkdir(parents=True, exist_ok=True)
    (out / "screen_speed.txt").write_text("\n".join(lines) + "\n")
    (out / "screen_speed.json").write_text(
        json.dumps({"seconds": best, "ratio_one_thread_to_default": ratio, "workers": workers}, indent=1)
        + "\n"
    )


if __name__ == "__main__":
    main()
