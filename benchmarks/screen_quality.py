"""Does near-copy screening catch planted copies of training images, and leave distinct images alone?

On the real 64x64 images of ../shared/data (6 data sets, 6,754 images), through the real Screener (views,
refinement, threshold) on in-memory flat indexes:

- detection: copies of sampled images under each transform a memorising model might produce (resize down and
  up, JPEG, noise, brightness/contrast, crop, shift, flips) are screened against all images of their data set;
  a copy is detected when it is called a near-copy *and* its match is its source (or an image of the source's
  near-duplicate group).
- false positives: sampled real images are screened against the images of their data set that share no
  near-duplicate group with them (10 group-disjoint folds: each image against the 9 folds not holding it);
  a false positive is a near-copy call. Groups (union-find): same patient / source image from the file name
  (Kermany personN / IM-NNNN, BCCD source image), the data README's near-duplicate test (32x32 grey
  thumbnails: RMS diff < 10 and mean |diff| < 6 of 255), the same test after a left-right / top-bottom flip
  or both, and after a brightness/contrast fit (r > 0.97, residual RMS < 10). The brain MRI set holds ~250
  flipped or re-windowed duplicates: copies by our own definition, not false positives. Adjacent slices of
  one MedNIST CT/MRI series carry no patient id and are *not* grouped, so they count as false positives.

    python benchmarks/screen_quality.py                         # pixel (baseline and default) and phash
    python benchmarks/screen_quality.py --embedders pixel clip:/path/to/biomedclip --per-dataset 50

Prints, per embedder, the detection rate per transform and the false-positive rate at the embedder's default
threshold and at neighbouring thresholds, and the baseline (plain normalised correlation of 32x32 grey images,
no band-pass, no views, at the threshold giving it 1% false positives) against the candidate (the default pixel
embedder with views at its default threshold) with their ratio. About 3 minutes on one core.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
PHOTOMETRIC = ("resize_down", "resize_up", "jpeg", "noise", "brightness_contrast")


def load(data: Path) -> tuple[list, np.ndarray, np.ndarray, list[str]]:
    """(PIL images, data set per image, label per image, file names) of every data set under `data`."""
    from PIL import Image

    images, sets, labels, names = [], [], [], []
    for folder in sorted(p for p in data.iterdir() if (p / "metadata.csv").exists()):
        for row in csv.DictReader(open(folder / "metadata.csv", newline="", encoding="utf-8")):
            image = Image.open(folder / row["file_name"])
            image.load()
            images.append(image)
            sets.append(folder.name)
            labels.append(row["label"])
            names.append(Path(row["file_name"]).name)
    return images, np.array(sets), np.array(labels), names


# --- near-duplicate groups ------------------------------------------------------------------------------

class Groups:
    """Union-find over image indices."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def patient_id(name: str, dataset: str) -> str | None:
    """Patient (Kermany) or source-image (BCCD) id from a file name; None where the name carries none."""
    if dataset.startswith("kermany"):
        match = re.search(r"(person\d+|im_\d+)", name)
        return match and dataset + match.group(1)
    if dataset.startswith("bccd"):
        match = re.search(r"_(\d{5})_\d+\.png$", name)
        return match and dataset + match.group(1)
    return None


def near_duplicate_groups(images: list, sets: np.ndarray, names: list[str]) -> np.ndarray:
    """Group id per image: patient ids + README near-duplicate test, also under flips and brightness/contrast."""
    from PIL import Image

    groups = Groups(len(images))
    first: dict[str, int] = {}
    for i, (name, dataset) in enumerate(zip(names, sets)):
        pid = patient_id(name, dataset)
        if pid is not None:
            groups.union(i, first.setdefault(pid, i))
    grey = np.stack([np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64)
                     for im in images])
    for dataset in np.unique(sets):
        idx = np.where(sets == dataset)[0]
        a = grey[idx].reshape(len(idx), -1)
        for flipped in (grey[idx], grey[idx][:, :, ::-1], grey[idx][:, ::-1, :], grey[idx][:, ::-1, ::-1]):
            for i, j in zip(*np.where(_duplicates(a, flipped.reshape(len(idx), -1)))):
                groups.union(idx[i], idx[j])
    return groups.labels()


def _duplicates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bool: README test (RMS < 10 and mean |diff| < 6) or a brightness/contrast fit."""
    mean_square = (a ** 2).mean(1)[:, None] + (b ** 2).mean(1)[None, :] - 2 * (a @ b.T) / a.shape[1]
    close = np.sqrt(np.clip(mean_square, 0, None)) < 10
    for i, j in zip(*np.where(close)):
        close[i, j] = np.abs(a[i] - b[j]).mean() < 6
    za, zb = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    r = (za @ zb.T) / (np.linalg.norm(za, axis=1)[:, None] * np.linalg.norm(zb, axis=1)[None, :] + 1e-9)
    residual = zb.std(1)[None, :] * np.sqrt(np.clip(1 - r ** 2, 0, None))
    return close | ((r > 0.97) & (residual < 10))


# --- planted copies -------------------------------------------------------------------------------------

def transforms() -> dict:
    """name -> f(image, rng) making a copy the way a memorising model (or a careless pipeline) might."""
    from PIL import Image, ImageEnhance, ImageOps

    def jpeg(im, rng):
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, "JPEG", quality=70)
        return Image.open(io.BytesIO(buffer.getvalue())).convert(im.mode)

    def noise(im, rng):
        a = np.asarray(im, np.float32)
        return Image.fromarray(np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8))

    def brightness_contrast(im, rng):
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
        return ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))

    def crop(im, rng):
        w, h = im.size
        side = round(w * rng.uniform(0.9, 0.95))
        x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        return im.crop((x, y, x + side, y + side)).resize((w, h), Image.Resampling.BICUBIC)

    def shift(im, rng):
        dx, dy = 0, 0
        while dx == 0 and dy == 0:
            dx, dy = rng.integers(-3, 4, size=2)
        a = np.asarray(im)
        pad = ((3, 3), (3, 3)) + ((0, 0),) * (a.ndim - 2)
        a = np.pad(a, pad, mode="edge")[3 - dy:3 - dy + im.size[1], 3 - dx:3 - dx + im.size[0]]
        return Image.fromarray(a)

    return {
        "resize_down": lambda im, rng: im.resize((38, 38), Image.Resampling.LANCZOS),
        "resize_up": lambda im, rng: im.resize((128, 128), Image.Resampling.BICUBIC),
        "jpeg": jpeg, "noise": noise, "brightness_contrast": brightness_contrast,
        "crop": crop, "shift": shift,
        "hflip": lambda im, rng: ImageOps.mirror(im), "vflip": lambda im, rng: ImageOps.flip(im),
    }


# --- scoring --------------------------------------------------------------------------------------------

def embed_all(embedder, images: list, batch: int = 256) -> np.ndarray:
    """Index vectors of every image."""
    return np.concatenate([embedder.embed(images[i:i + batch]) for i in range(0, len(images), batch)])


def screen(embedder, base: np.ndarray, members: np.ndarray, queries: list,
           views: bool) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, nearest image index) of each query, screened by the real Screener against `members`."""
    from medisyn_cli.index import TrainingIndex
    from medisyn_cli.screen import Screener

    index = TrainingIndex.from_vectors(base[members], [str(i) for i in members], embedder)
    results = Screener(index, views=views).check(queries)
    return (np.array([r.nn_similarity for r in results], np.float32),
            np.array([members[r.nn_id] for r in results], np.int64))


def folds_of(groups: np.ndarray, folds: int) -> np.ndarray:
    """Fold number per image; a near-duplicate group never spans two folds."""
    _, dense = np.unique(groups, return_inverse=True)
    return (dense * 2654435761 % 2 ** 32) % folds


def evaluate(embedder, views: bool, images, sets, groups, fp_queries, sample, seed: int = 0, folds: int = 10) -> dict:
    """Screen planted copies against their data set, and real images against the other folds of theirs."""
    base = embed_all(embedder, images)
    fold = folds_of(groups, folds)
    out: dict = {"fp": np.zeros(len(fp_queries), np.float32), "fp_sets": sets[fp_queries], "copies": {}, "found": {}}
    for dataset in np.unique(sets):
        for f in range(folds):
            members = np.where((sets == dataset) & (fold != f))[0]
            chosen = np.where((sets[fp_queries] == dataset) & (fold[fp_queries] == f))[0]
            if len(chosen):
                out["fp"][chosen] = screen(embedder, base, members, [images[i] for i in fp_queries[chosen]], views)[0]
    rng = np.random.default_rng(seed)
    for name, make in transforms().items():
        copies = [make(images[i], rng) for i in sample]
        best, found = np.zeros(len(sample), np.float32), np.zeros(len(sample), bool)
        for dataset in np.unique(sets):
            chosen = np.where(sets[sample] == dataset)[0]
            sims, nearest = screen(embedder, base, np.where(sets == dataset)[0], [copies[j] for j in chosen], views)
            best[chosen], found[chosen] = sims, groups[nearest] == groups[sample[chosen]]
        out["copies"][name], out["found"][name] = best, found
    return out


def rates(result: dict, threshold: float) -> dict:
    """Detection rate per transform, overall, photometric minimum and false-positive rate at a threshold."""
    det = {k: float(np.mean((v >= threshold) & result["found"][k])) for k, v in result["copies"].items()}
    return {"det": det, "overall": float(np.mean(list(det.values()))),
            "photometric_min": min(det[k] for k in PHOTOMETRIC), "fp": float(np.mean(result["fp"] >= threshold))}


def print_embedder(title: str, result: dict, threshold: float, neighbours: list[float]) -> None:
    names = list(result["copies"])
    print(f"\n== {title}: threshold {threshold:g}")
    print(f"{'threshold':>9} " + " ".join(f"{n[:11]:>11}" for n in names) + f" {'overall':>8} {'FP':>6}")
    for t in sorted(set([threshold] + neighbours)):
        r = rates(result, t)
        mark = "*" if t == threshold else " "
        print(f"{t:>8.3f}{mark} " + " ".join(f"{100 * r['det'][n]:>10.1f}%" for n in names)
              + f" {100 * r['overall']:>7.1f}% {100 * r['fp']:>5.2f}%")
    print("  copy similarity p1/p5/p50 per transform: " + "; ".join(
        f"{n} {np.percentile(v, 1):.3f}/{np.percentile(v, 5):.3f}/{np.median(v):.3f}"
        for n, v in result["copies"].items()))
    fp_sets = result["fp_sets"]
    print("  FP per data set at threshold: " + ", ".join(
        f"{d} {100 * np.mean(result['fp'][fp_sets == d] >= threshold):.2f}%" for d in np.unique(fp_sets)))
    print("  best other-group similarity p50/p90/p99/p99.9: "
          + "/".join(f"{np.percentile(result['fp'], q):.3f}" for q in (50, 90, 99, 99.9)))


def baseline_pixel():
    """The plain normalised correlation of 32x32 grey images (no band-pass, whole frame), without views."""
    from medisyn_cli.embed import PixelEmbedder

    return PixelEmbedder(size=32, window=1.0, blur=0.0, background=0.0)


def main() -> None:
    from medisyn_cli.embed import get_embedder

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--embedders", nargs="+", default=["pixel", "phash"])
    parser.add_argument("--per-dataset", type=int, default=50, help="Source images per data set for planted copies.")
    parser.add_argument("--fp-per-dataset", type=int, default=400, help="Real images per data set screened for FPs.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.time()
    images, sets, labels, names = load(args.data)
    groups = near_duplicate_groups(images, sets, names)
    rng = np.random.default_rng(args.seed)
    pick = lambda n: np.concatenate([  # noqa: E731
        np.sort(rng.choice(np.where(sets == d)[0], min(n, np.sum(sets == d)), replace=False)) for d in np.unique(sets)])
    sample, fp_queries = pick(args.per_dataset), pick(args.fp_per_dataset)
    print(f"{len(images)} images in {len(np.unique(sets))} data sets, {len(np.unique(groups))} near-duplicate groups; "
          f"{len(sample)} sources x {len(transforms())} transforms planted; {len(fp_queries)} real images screened "
          f"against the other 9 of 10 group-disjoint folds of their data set ({time.time() - start:.0f} s)")

    summary = {}
    if "pixel" in args.embedders:
        clock = time.time()
        result = evaluate(baseline_pixel(), False, images, sets, groups, fp_queries, sample, args.seed)
        threshold = _threshold_at_fp(result, 0.01)
        print_embedder(f"baseline: plain correlation of 32x32 grey images, no views, threshold chosen here for "
                       f"FP <= 1% ({time.time() - clock:.0f} s)", result, threshold, [])
        summary["baseline"] = rates(result, threshold)
    for spec in args.embedders:
        clock = time.time()
        embedder = get_embedder(spec)
        result = evaluate(embedder, True, images, sets, groups, fp_queries, sample, args.seed)
        t = embedder.default_threshold
        print_embedder(f"{spec}: {len(embedder.default_views())} views, settings {embedder.settings()} "
                       f"({time.time() - clock:.0f} s)", result, t,
                       [round(t + d, 4) for d in (-0.01, -0.005, 0.005, 0.01) if 0 < t + d <= 1])
        summary[spec] = rates(result, t)
    if "baseline" in summary and "pixel" in summary:
        b, c = summary["baseline"], summary["pixel"]
        print("\n== baseline (plain correlation, no views) vs candidate (pixel embedder, its default threshold, views)")
        for key in ("overall", "photometric_min", "fp"):
            ratio = c[key] / b[key] if b[key] else float("inf")
            print(f"  {key:>15}: baseline {100 * b[key]:6.2f}%  candidate {100 * c[key]:6.2f}%  ratio {ratio:.2f}")
    print(f"\ntotal {time.time() - start:.0f} s")


def _threshold_at_fp(result: dict, fp: float) -> float:
    """Smallest threshold (0.005 steps) whose false-positive rate is at most `fp`."""
    return next(t for t in np.arange(0.5, 1.0001, 0.005) if np.mean(result["fp"] >= t) <= fp).round(3)


if __name__ == "__main__":
    main()
