"""Does near-copy screening catch copies of indexed images -- also under transforms it was not tuned on --
and leave real images that are not in the index alone?

On the real 64x64 images of ../shared/data (6 data sets, 6,754 images), through the real Screener (views,
refinement) on in-memory flat indexes, one per data set:

- index / non-indexed split: per data set, a random half of the images is indexed. Negatives are images of the
  other half, minus those that share a near-duplicate group with an indexed image (same patient / source image
  from the file name, the data README's near-duplicate test, and the same test after any of the 8 flips /
  quarter turns, intensity inversion, or a brightness/contrast fit): those are copies, not negatives. The run
  prints how many it dropped. Adjacent slices of one MedNIST CT/MRI series carry no patient id and are *not*
  grouped, so they count as false positives.
- planted copies: sampled indexed images under two families of transforms, the same copies for every
  embedder. "tuned": the nine the default pixel embedder was tuned on (resize down/up, JPEG q70, noise,
  brightness/contrast, crop 90-95%, shift <= 3 px, left-right and top-bottom flip). "unseen": rotations by
  5, 10, 90 and 180 degrees, intensity inversion, crops keeping 70% / 80% of the side, 10% padding (zoom out),
  Gaussian blur sigma 2, gamma 0.6 / 1.6, JPEG q30, a 70/30 blend with another image of the set, a text and
  marker overlay, a 20% squeeze (aspect change) and colour -> grey (colour sets only). A copy counts as
  detected when it is called a near-copy *and* its match is its source (or an image of the source's
  near-duplicate group).
- random families (issue #29): each copy's parameters drawn at random from the family's range, seeded: affine
  (rotation at any angle cropped to hide the corners, one axis squeezed to 0.6-1.0 and padded back, shear up to 12
  degrees, translation up to 15%, all of them at once), crops of 50-90% of the area anywhere, borders of any width
  per side and any colour or noise, photometric (contrast/brightness, gamma 0.4-2.5, noise, inversion, mixtures),
  composites (70/30 and 60/40 blends with another indexed image, a region of 1/3-1/2 of the area pasted anywhere
  onto a real image that is not indexed, 2-6 random marks). `--families random` plants only these.
- probe families (`--families probe`, not in the default): edits no earlier set lists, parameters drawn per copy,
  each family its own stream: perspective warp (corners moved up to 10% of the side), Gaussian blur (sigma 0.7-2),
  JPEG q10-30, elastic deformation (a smooth field of 2-4 px), resolution loss (24-40 px and back), cutout (1-3
  rectangles, 10-30% of the area), unsharp mask, histogram equalisation, CLAHE, colour tint (hue and channel gains;
  colour sets), false colour (grey sets: an OpenCV colour map, RGB), the left / right / top / bottom half beside a
  non-indexed real image, chains of 2-3 random families, and a 2x2 mosaic with the training image in one quarter
  (reported under the mean, not in it: a quarter of the area is below the issue's third).
- a second probe (`--families probe2`), drawn after the elastic step and the principal grey were built: grid
  distortion (nodes of a 4-6 cell grid moved 2-5 px), lens distortion (barrel / pincushion), speckle
  (multiplicative noise), salt and pepper, motion blur, posterisation (2-4 bits), an illumination (bias) field,
  colour jitter, solarisation.
- a third probe (`--families probe3`), drawn after the spread keypoints: the issue's own families beyond the ranges
  the random families draw from: blends with a real image that is not indexed (55-75% of the training image) and
  near-even blends with another indexed one (either image a right answer), regions pasted at 0.7-1.3 times their
  size or turned by any angle, the whole image shrunk to 0.6-0.85 onto a real one, crops of 35-50% of the area, any
  rotation with a zoom of 0.8-1.25, a translucent watermark.

Per embedder (condition): the detection rate (TPR) of every transform at its default threshold and at the
thresholds that give 1% and 0.1% false positives on the pooled negatives, the false-positive rate at the
default, and AUROC (copies matched to the wrong image count as missed). Conditions:

    pixel-tuned        the pixel embedder with the views it was tuned on (61), threshold 0.97: the baseline
                       (indexes built before issue #16 are screened this way)
    pixel-views        + the general views (turns, inversion, 80% crops, borders, small rotations), the
                       threshold self-calibrated per index (no region tiles): an ablation
    pixel              the default detector (`medisyn index build` + Screener): general views, region tiles
                       (16 per training image), threshold self-calibrated per index at build time
    phash              imagehash perceptual hash, 256 bits, flips
    imagededup-phash   imagededup's PHash (64 bits, no views), threshold 1 - 10/64 (its default distance 10)
    learned            the learned copy descriptor (`--embedder learned`, screening/learned.py): ONE descriptor
                       trained on the indexed images (the six indexed halves, as `index build --embedder
                       learned` over the six folders would; never on a negative or a copy) except each index's
                       calibration sample (held out as `index build` does), 16 query views (turns, flips,
                       inversions), no tiles, threshold self-calibrated per index on the held-out sample
    pixel+verify       pixel+partial plus local-feature verification (screening/verify.py): candidates' SIFT
                       keypoints matched with the query's, RANSAC affine inliers, threshold calibrated per index
    pixel+learned      both detectors: per image the larger margin over each one's own calibrated threshold
                       (a copy is caught when either catches it); needs pixel and learned in the same run or
                       in --raw from earlier runs

`--raw DIR` keeps each condition's raw scores (pickle) and reuses those already there, so conditions can run in
separate processes (each under ~25 min) and be combined; `--learned-cache DIR` keeps the trained descriptor.

    python benchmarks/screen_quality.py                               # all conditions, ~20 min on 2 cores
    python benchmarks/screen_quality.py --conditions pixel-tuned pixel --sources 10 --negatives 100
    python benchmarks/screen_quality.py --conditions pixel learned pixel+learned --raw DIR --out DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pickle
import re
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "screen_quality"
FAMILIES = {
    "rotation": ("rot5", "rot10", "rot90", "rot180"),
    "crop": ("crop70", "crop80"),
    "padding": ("pad10",),
    "blend/overlay": ("blend", "overlay"),
    "geometric (random)": (
        "affine_rotate",
        "affine_squeeze",
        "affine_shear",
        "affine_translate",
        "affine_mixed",
        "crop_any",
        "border_any",
    ),
    "photometric (random)": ("photo_contrast", "photo_gamma", "photo_noise", "photo_invert", "photo_mixed"),
    "composite (random)": ("blend70", "blend60", "paste_region", "overlay_any"),
    "geometric (probe)": ("perspective", "elastic"),
    "degradation (probe)": ("blur", "jpeg_heavy", "low_resolution", "sharpen"),
    "photometric (probe)": ("equalise", "clahe", "colour_tint", "false_colour"),
    "occlusion (probe)": ("cutout", "stitch_half"),
    "geometric (probe2)": ("grid_distortion", "lens_distortion"),
    "degradation (probe2)": ("speckle", "salt_pepper", "motion_blur", "posterize"),
    "photometric (probe2)": ("bias_field", "colour_jitter", "solarize"),
    "composite (probe3)": (
        "blend_real",
        "blend_even",
        "paste_scaled",
        "paste_rotated",
        "zoom_out",
        "watermark",
    ),
    "geometric (probe3)": ("crop_small", "rotate_zoom"),
}


def _family_mean(caught: dict, family: str) -> float:
    """Mean detection rate (%) of one family's transforms."""
    return 100 * np.mean([v for f, v in caught.values() if f == family])


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
    """Group id per image: patient ids + README near-duplicate test, also under the 8 flips / quarter turns,
    intensity inversion and brightness/contrast."""
    from PIL import Image

    groups = Groups(len(images))
    first: dict[str, int] = {}
    for i, (name, dataset) in enumerate(zip(names, sets)):
        pid = patient_id(name, dataset)
        if pid is not None:
            groups.union(i, first.setdefault(pid, i))
    grey = np.stack(
        [np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64) for im in images]
    )
    for dataset in np.unique(sets):
        idx = np.where(sets == dataset)[0]
        a = grey[idx].reshape(len(idx), -1)
        for turned in dihedral(grey[idx]):
            for other in (turned, 255.0 - turned):
                for i, j in zip(*np.where(_duplicates(a, other.reshape(len(idx), -1)))):
                    groups.union(idx[i], idx[j])
    return groups.labels()


def dihedral(stack: np.ndarray) -> list[np.ndarray]:
    """The 8 flips / quarter turns of a (N, H, W) stack of square images."""
    turns = [np.rot90(stack, k, axes=(1, 2)) for k in range(4)]
    return turns + [t[:, :, ::-1] for t in turns]


def _duplicates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bool: README test (RMS < 10 and mean |diff| < 6) or a brightness/contrast fit."""
    mean_square = (a**2).mean(1)[:, None] + (b**2).mean(1)[None, :] - 2 * (a @ b.T) / a.shape[1]
    close = np.sqrt(np.clip(mean_square, 0, None)) < 10
    for i, j in zip(*np.where(close)):
        close[i, j] = np.abs(a[i] - b[j]).mean() < 6
    za, zb = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    r = (za @ zb.T) / (np.linalg.norm(za, axis=1)[:, None] * np.linalg.norm(zb, axis=1)[None, :] + 1e-9)
    residual = zb.std(1)[None, :] * np.sqrt(np.clip(1 - r**2, 0, None))
    return close | ((r > 0.97) & (residual < 10))


DUPLICATE_INLIERS = 60


def verified_duplicates(
    images: list, sets: np.ndarray, indexed: np.ndarray, negatives: np.ndarray
) -> list[tuple]:
    """(negative, indexed image, inliers, agreement) for every negative that is the same picture as an indexed image
    of its set under an affine map, by a stricter rule than the screen's (verify.py: at least
    DUPLICATE_INLIERS inliers, twice calibrate.VERIFY_DUPLICATE, and a dense agreement of at least verify.AGREEMENT),
    among the indexed images
    its keypoints vote for: the data sets' own duplicates the pixel test above misses (the same cell cropped twice,
    the next ultrasound frame, the next slice). They stay among the negatives; the FP rate is reported with and
    without them, and the pairs are written out for review (duplicates.csv, duplicates.png). The negatives' keypoints
    are their QUERY_KEYPOINTS strongest, as when the 12 pairs were reviewed, not the screen's spread selection (a
    query's weaker keypoints in flat cells match fewer of the 128 strongest stored ones: the count this rule reads
    would follow the screen's internals)."""
    from medisyn_cli.screening.verify import (
        AGREEMENT,
        LocalFeatures,
        Verifier,
        agreement,
        descriptor_variants,
        features,
        grey,
        root,
    )

    found = []
    for dataset in np.unique(sets[negatives]):
        members = np.where((sets == dataset) & indexed)[0]
        verifier = Verifier(LocalFeatures.from_images([images[i] for i in members]))
        for n in negatives[sets[negatives] == dataset]:
            points, descriptors = features(images[n])  # the QUERY_KEYPOINTS strongest
            pixels = grey(images[n])
            if len(points) < 8:
                continue
            variants = descriptor_variants(root(descriptors))
            for k in verifier.voted(variants):
                count, model, matched = verifier.match(points, variants, k)
                if count >= DUPLICATE_INLIERS:
                    agree = agreement(pixels, verifier.local.thumbs[k], model, matched)
                    if agree >= AGREEMENT:
                        found.append((int(n), int(members[k]), count, round(float(agree), 3)))
                        break
    return found


def duplicate_sheet(images: list, names: list[str], sets: np.ndarray, pairs: list[tuple], out: Path) -> None:
    """duplicates.csv (every pair) and duplicates.png (each negative beside the indexed image it duplicates)."""
    from PIL import Image, ImageDraw

    with open(out / "duplicates.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["data_set", "negative", "indexed", "inliers", "agreement"])
        for n, i, count, agree in pairs:
            writer.writerow([sets[n], names[n], names[i], count, agree])
    side, columns = 96, 4
    rows = (len(pairs) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (2 * side + 12), max(1, rows) * (side + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (n, i, count, agree) in enumerate(pairs):
        x, y = (j % columns) * (2 * side + 12), (j // columns) * (side + 14)
        for k, image in enumerate((images[n], images[i])):
            sheet.paste(image.convert("RGB").resize((side, side)), (x + k * side, y))
        draw.text((x, y + side), f"{str(sets[n])[:8]} {count} {agree:.2f}", fill="black")
    sheet.save(out / "duplicates.png")


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
        a = np.pad(a, pad, mode="edge")[3 - dy : 3 - dy + im.size[1], 3 - dx : 3 - dx + im.size[0]]
        return Image.fromarray(a)

    return {
        "resize_down": lambda im, rng: im.resize((38, 38), Image.Resampling.LANCZOS),
        "resize_up": lambda im, rng: im.resize((128, 128), Image.Resampling.BICUBIC),
        "jpeg": jpeg,
        "noise": noise,
        "brightness_contrast": brightness_contrast,
        "crop": crop,
        "shift": shift,
        "hflip": lambda im, rng: ImageOps.mirror(im),
        "vflip": lambda im, rng: ImageOps.flip(im),
    }


def unseen_transforms() -> dict:
    """name -> f(image, rng, partner) for transforms the default embedder was NOT tuned on (None: not applicable)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageOps

    def rotate(angle: float):
        return lambda im, rng, other: im.rotate(angle * rng.choice([-1, 1]), Image.Resampling.BICUBIC)

    def crop(keep: float):
        def make(im, rng, other):
            w, h = im.size
            side = round(w * keep)
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            return im.crop((x, y, x + side, y + side)).resize((w, h), Image.Resampling.BICUBIC)

        return make

    def pad(im, rng, other):
        w, h = im.size
        border = round(0.1 * w)
        return ImageOps.expand(im, border, fill=0).resize((w, h), Image.Resampling.LANCZOS)

    def gamma(im, rng, other):
        g = rng.choice([0.6, 1.6])
        return im.point(lambda v: round(255 * (v / 255) ** g))

    def jpeg30(im, rng, other):
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, "JPEG", quality=30)
        return Image.open(io.BytesIO(buffer.getvalue())).convert(im.mode)

    def blend(im, rng, other):
        return Image.blend(im, other.convert(im.mode), 0.3)

    def overlay(im, rng, other):
        out = im.copy()
        draw = ImageDraw.Draw(out)
        white = 255 if out.mode == "L" else (255, 255, 255)
        w, h = out.size
        x, y = int(rng.integers(2, w // 2)), int(rng.integers(2, h - 14))
        draw.text((x, y), "L R 12", fill=white)
        cx, cy = int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8))
        draw.line((cx - 6, cy, cx + 6, cy), fill=white, width=1)
        draw.line((cx, cy - 6, cx, cy + 6), fill=white, width=1)
        draw.rectangle((w - 14, 2, w - 3, 9), outline=white)
        return out

    def squeeze(im, rng, other):
        w, h = im.size
        return im.resize((round(0.8 * w), h), Image.Resampling.BICUBIC)

    return {
        "rot5": rotate(5),
        "rot10": rotate(10),
        "rot90": lambda im, rng, other: im.transpose(
            Image.Transpose.ROTATE_90 if rng.random() < 0.5 else Image.Transpose.ROTATE_270
        ),
        "rot180": lambda im, rng, other: im.transpose(Image.Transpose.ROTATE_180),
        "invert": lambda im, rng, other: ImageOps.invert(im.convert("RGB")).convert(im.mode),
        "crop70": crop(0.7),
        "crop80": crop(0.8),
        "pad10": pad,
        "blur2": lambda im, rng, other: im.filter(ImageFilter.GaussianBlur(2)),
        "gamma": gamma,
        "jpeg30": jpeg30,
        "blend": blend,
        "overlay": overlay,
        "squeeze": squeeze,
        "grey": lambda im, rng, other: im.convert("L") if im.mode == "RGB" else None,
    }


def random_transforms() -> dict:
    """name -> f(image, rng, partner, real) for families whose parameters are drawn at random per copy from the
    family's range (not fixed instances): `partner` is another indexed image of the set, `real` a real image that is
    not indexed (the background of a pasted region)."""
    return {
        "affine_rotate": lambda im, rng, other, real: _affine(im, rng, angle=rng.uniform(0, 360)),
        "affine_squeeze": _squeeze_pad,
        "affine_shear": lambda im, rng, other, real: _affine(im, rng, shear=rng.uniform(-12, 12)),
        "affine_translate": lambda im, rng, other, real: _affine(im, rng, shift=0.15, zoom=False),
        "affine_mixed": lambda im, rng, other, real: _affine(
            im,
            rng,
            angle=rng.uniform(0, 360),
            scale=rng.uniform(0.75, 1.0),
            shear=rng.uniform(-10, 10),
            shift=0.1,
        ),
        "crop_any": _crop_any,
        "border_any": _border_any,
        "photo_contrast": lambda im, rng, other, real: _photometric(im, rng, ("contrast",)),
        "photo_gamma": lambda im, rng, other, real: _photometric(im, rng, ("gamma",)),
        "photo_noise": lambda im, rng, other, real: _photometric(im, rng, ("noise",)),
        "photo_invert": lambda im, rng, other, real: _photometric(im, rng, ("invert", "contrast")),
        "photo_mixed": lambda im, rng, other, real: _photometric(
            im,
            rng,
            tuple(k for k in ("contrast", "gamma", "noise", "invert") if rng.random() < 0.6) or ("gamma",),
        ),
        "blend70": lambda im, rng, other, real: _blend(im, other, 0.7),
        "blend60": lambda im, rng, other, real: _blend(im, other, 0.6),
        "paste_region": _paste,
        "overlay_any": _overlay_any,
    }


def probe_transforms() -> dict:
    """name -> f(image, rng, partner, reals) for families no earlier set lists, parameters drawn per copy: `reals` are
    three real images of the set that are not indexed (the other half of a stitch, the rest of a mosaic); None: the
    family does not apply to the image's mode."""
    return {
        "perspective": _perspective,
        "blur": _blur,
        "jpeg_heavy": lambda im, rng, other, reals: _jpeg(im, int(rng.integers(10, 31))),
        "elastic": _elastic,
        "low_resolution": _low_resolution,
        "cutout": _cutout,
        "sharpen": _sharpen,
        "equalise": lambda im, rng, other, reals: _equalise(im, rng, clahe=False),
        "clahe": lambda im, rng, other, reals: _equalise(im, rng, clahe=True),
        "colour_tint": _colour_tint,
        "false_colour": _false_colour,
        "stitch_half": _stitch,
        "chain": _chain,
        "mosaic_quarter": _mosaic,
    }


def probe2_transforms() -> dict:
    """name -> f(image, rng, partner, reals): a second probe, nine families drawn after the elastic step and the
    principal grey were built (nothing in the screen was tuned on them): distortions of the grid and the lens,
    multiplicative and impulse noise, motion blur, posterisation, an illumination (bias) field, colour jitter and
    solarisation."""
    return {
        "grid_distortion": _grid_distortion,
        "lens_distortion": _lens_distortion,
        "speckle": _speckle,
        "salt_pepper": _salt_pepper,
        "motion_blur": _motion_blur,
        "posterize": _posterize,
        "bias_field": _bias_field,
        "colour_jitter": _colour_jitter,
        "solarize": _solarize,
    }


def probe3_transforms() -> dict:
    """name -> f(image, rng, partner, reals): a third probe, the issue's own families beyond the ranges the random
    families draw from, built after the spread keypoints (issue #29): blends with a real image that is not indexed
    (55-75% of the training image) and near-even blends with another indexed one (50-55%; either image is a right
    answer), regions pasted at another scale (0.7-1.3) or turned by any angle, the whole image shrunk onto a real one,
    crops of 35-50% of the area, any rotation with a zoom, and a translucent watermark."""
    return {
        "blend_real": lambda im, rng, other, reals: _blend(
            im, reals[0].resize(im.size), rng.uniform(0.55, 0.75)
        ),
        "blend_even": lambda im, rng, other, reals: _blend(im, other.resize(im.size), rng.uniform(0.5, 0.55)),
        "paste_scaled": lambda im, rng, other, reals: _paste(im, rng, other, reals[0], scale=(0.7, 1.3)),
        "paste_rotated": _paste_rotated,
        "zoom_out": _zoom_out,
        "crop_small": lambda im, rng, other, reals: _crop_any(im, rng, other, reals, areas=(0.35, 0.5)),
        "rotate_zoom": _rotate_zoom,
        "watermark": _watermark,
    }


INFORMATIVE = ("mosaic_quarter",)  # reported, not in a family's mean: below the "a third of the area"


def _jpeg(im, quality: int):
    from PIL import Image

    buffer = io.BytesIO()
    im.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert(im.mode)


def _perspective(im, rng, other, reals):
    """Each corner moved by up to 10% of the side along each axis (a projective warp); uncovered parts filled with
    a random colour."""
    import cv2

    a = _array(im)
    w, h = im.size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    moved = corners + rng.uniform(-0.1, 0.1, (4, 2)).astype(np.float32) * [w, h]
    out = cv2.warpPerspective(
        a,
        cv2.getPerspectiveTransform(corners, moved.astype(np.float32)),
        (w, h),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=_fill(rng, 1 if a.ndim == 2 else 3),
    )
    return _image(out, im.mode)


def _blur(im, rng, other, reals):
    """Gaussian blur, sigma 0.7-2 px."""
    import cv2

    return _image(cv2.GaussianBlur(_array(im), (0, 0), rng.uniform(0.7, 2.0)), im.mode)


def _elastic(im, rng, other, reals):
    """A smooth random displacement field (Gaussian-filtered noise, sigma 4-8 px) of at most 2-4 px."""
    import cv2

    w, h = im.size
    smooth, reach = rng.uniform(4, 8), rng.uniform(2, 4)
    field = np.stack([cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)), (0, 0), smooth) for _ in range(2)])
    field *= reach / max(np.abs(field).max(), 1e-9)
    return _remapped(im, field[0], field[1])


def _low_resolution(im, rng, other, reals):
    """Down to 24-40 px (area, bilinear or bicubic) and back up (bilinear or bicubic)."""
    from PIL import Image

    R = Image.Resampling
    side = int(rng.integers(24, 41))
    down = [R.BOX, R.BILINEAR, R.BICUBIC][int(rng.integers(3))]
    return im.resize((side, side), down).resize(im.size, [R.BILINEAR, R.BICUBIC][int(rng.integers(2))])


def _cutout(im, rng, other, reals):
    """1-3 rectangles (aspect 1:2 to 2:1) covering 10-30% of the area in total, each a flat colour or noise."""
    a = _array(im).astype(np.float64)
    h, w = a.shape[:2]
    count = int(rng.integers(1, 4))
    for share in rng.dirichlet(np.ones(count)) * rng.uniform(0.1, 0.3):
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        rw = int(np.clip(round(np.sqrt(share * w * h * aspect)), 1, w))
        rh = int(np.clip(round(share * w * h / rw), 1, h))
        x, y = _anywhere(rng, (w, h), (rw, rh))
        patch = a[y : y + rh, x : x + rw]
        flat = np.array(_fill(rng, 1 if a.ndim == 2 else 3), np.float64)
        patch[...] = rng.uniform(0, 255, patch.shape) if rng.random() < 0.3 else flat
    return _image(a, im.mode)


def _sharpen(im, rng, other, reals):
    """Unsharp mask: sigma 0.7-3 px, amount 0.5-2."""
    import cv2

    a = _array(im).astype(np.float64)
    return _image(
        a + rng.uniform(0.5, 2.0) * (a - cv2.GaussianBlur(a, (0, 0), rng.uniform(0.7, 3.0))), im.mode
    )


def _equalise(im, rng, clahe: bool):
    """Histogram equalisation, or CLAHE (clip 1.5-4, 2-8 tiles a side), of the grey level (luma of a colour image)."""
    import cv2

    a = _array(im)
    luma = a if a.ndim == 2 else cv2.cvtColor(a, cv2.COLOR_RGB2YCrCb)[..., 0]
    if clahe:
        tiles = int(rng.integers(2, 9))
        luma_out = cv2.createCLAHE(rng.uniform(1.5, 4.0), (tiles, tiles)).apply(np.ascontiguousarray(luma))
    else:
        luma_out = cv2.equalizeHist(np.ascontiguousarray(luma))
    if a.ndim == 2:
        return _image(luma_out, im.mode)
    ycc = cv2.cvtColor(a, cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = luma_out
    return _image(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB), im.mode)


def _colour_tint(im, rng, other, reals):
    """Colour images: hue rotated by 10-90 degrees either way, channel gains 0.75-1.25 (None for grey images)."""

    if im.mode != "RGB":
        return None
    rgb = _hue_rotated(_array(im), rng.choice([-1, 1]) * rng.uniform(10, 90)).astype(np.float64)
    return _image(rgb * rng.uniform(0.75, 1.25, 3), "RGB")


def _hue_rotated(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """An RGB uint8 array with its hue turned by `degrees` (OpenCV's HSV: hue 0-179, 2 degrees a step)."""
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int64)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 2)) % 180
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


FALSE_COLOURS = ("JET", "HOT", "BONE", "VIRIDIS", "INFERNO", "PLASMA", "TURBO", "OCEAN", "PINK", "COOL")


def _false_colour(im, rng, other, reals):
    """Grey images: an OpenCV colour map (an RGB image); None for colour images."""
    import cv2

    if im.mode != "L":
        return None
    colour_map = getattr(cv2, "COLORMAP_" + str(rng.choice(FALSE_COLOURS)))
    return _image(cv2.applyColorMap(_array(im), colour_map)[..., ::-1], "RGB")


def _stitch(im, rng, other, reals):
    """The left / right / top / bottom 45-55% of the training image, in place, the rest a real non-indexed image."""
    w, h = im.size
    cut = rng.uniform(0.45, 0.55)
    out = reals[0].convert(im.mode).resize((w, h))
    side = int(rng.integers(4))
    box = [
        (0, 0, round(cut * w), h),
        (round((1 - cut) * w), 0, w, h),
        (0, 0, w, round(cut * h)),
        (0, round((1 - cut) * h), w, h),
    ][side]
    out.paste(im.crop(box), box[:2])
    return out


CHAINED = (
    "affine_rotate",
    "affine_squeeze",
    "affine_shear",
    "affine_translate",
    "crop_any",
    "border_any",
    "photo_contrast",
    "photo_gamma",
    "photo_noise",
    "photo_invert",
    "overlay_any",
)


def _chain(im, rng, other, reals):
    """2-3 different random families (geometric and photometric ones and overlays, not composites), applied in
    CHAINED order; the image's info["chain"] names them."""
    steps = sorted(rng.choice(len(CHAINED), int(rng.integers(2, 4)), replace=False))
    made = random_transforms()
    for step in steps:
        im = made[CHAINED[step]](im, rng, other, reals[0])
    im.info["chain"] = "+".join(CHAINED[s] for s in steps)
    return im


def _mosaic(im, rng, other, reals):
    """A 2x2 mosaic: the training image at half the side in one random quarter, three real non-indexed images in
    the others."""
    from PIL import Image

    w, h = im.size
    half = (w // 2, h // 2)
    out = Image.new(im.mode, (w, h))
    place = int(rng.integers(4))
    tiles = list(reals[:3])
    tiles.insert(place, im)
    for k, tile in enumerate(tiles):
        out.paste(
            tile.convert(im.mode).resize(half, Image.Resampling.LANCZOS),
            ((k % 2) * half[0], (k // 2) * half[1]),
        )
    return out


def _remapped(im, dx: np.ndarray, dy: np.ndarray):
    """The image resampled at (x + dx, y + dy) (cubic, edges reflected)."""
    import cv2

    a = _array(im)
    h, w = a.shape[:2]
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = cv2.remap(
        a, x + dx.astype(np.float32), y + dy.astype(np.float32), cv2.INTER_CUBIC, None, cv2.BORDER_REFLECT
    )
    return _image(out, im.mode)


def _grid_distortion(im, rng, other, reals):
    """The nodes of a 4-6 cells a side grid each moved by up to 2-5 px, the displacement interpolated between them
    (bicubic): a coarser, less smooth warp than `_elastic`."""
    import cv2

    w, h = im.size
    nodes, reach = int(rng.integers(4, 7)) + 1, rng.uniform(2, 5)
    dx, dy = (
        cv2.resize(rng.uniform(-reach, reach, (nodes, nodes)), (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in "xy"
    )
    return _remapped(im, dx, dy)


def _lens_distortion(im, rng, other, reals):
    """Barrel or pincushion distortion about a centre near the middle: r -> r (1 + k r^2), |k| 0.1-0.3 (r = 1 at
    the corners' half-diagonal)."""
    w, h = im.size
    k = rng.choice([-1, 1]) * rng.uniform(0.1, 0.3)
    cx, cy = (w - 1) / 2 + rng.uniform(-3, 3), (h - 1) / 2 + rng.uniform(-3, 3)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (x - cx) / (w / 2), (y - cy) / (h / 2)
    factor = k * (u**2 + v**2) / 2
    return _remapped(im, (x - cx) * factor, (y - cy) * factor)


def _speckle(im, rng, other, reals):
    """Multiplicative Gaussian noise (ultrasound speckle): each pixel times 1 + N(0, 0.1-0.3)."""
    a = _array(im).astype(np.float64)
    noise = rng.normal(0, rng.uniform(0.1, 0.3), a.shape[:2])
    return _image(a * (1 + (noise if a.ndim == 2 else noise[..., None])), im.mode)


def _salt_pepper(im, rng, other, reals):
    """1-5% of the pixels set to black or white."""
    a = _array(im).copy()
    hit = rng.random(a.shape[:2]) < rng.uniform(0.01, 0.05)
    values = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)
    a[hit] = values if a.ndim == 2 else values[:, None]
    return _image(a, im.mode)


def _motion_blur(im, rng, other, reals):
    """A straight motion blur of 3-7 px at any angle."""
    import cv2

    length = int(rng.integers(3, 8))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    turn = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, turn, (length, length))
    return _image(cv2.filter2D(_array(im), -1, kernel / max(kernel.sum(), 1e-6)), im.mode)


def _posterize(im, rng, other, reals):
    """Grey levels kept to 2-4 bits."""
    from PIL import ImageOps

    return ImageOps.posterize(
        im.convert("RGB") if im.mode not in ("L", "RGB") else im, int(rng.integers(2, 5))
    )


def _bias_field(im, rng, other, reals):
    """A smooth multiplicative illumination field (an MRI bias field, vignetting): 1 + 0.2-0.5 x a Gaussian-filtered
    random field (sigma 12-24 px) scaled to [-1, 1]."""
    import cv2

    a = _array(im).astype(np.float64)
    field = cv2.GaussianBlur(rng.uniform(-1, 1, a.shape[:2]), (0, 0), rng.uniform(12, 24))
    field *= rng.uniform(0.2, 0.5) / max(np.abs(field).max(), 1e-9)
    return _image(a * (1 + field if a.ndim == 2 else 1 + field[..., None]), im.mode)


def _colour_jitter(im, rng, other, reals):
    """Brightness and contrast 0.7-1.3; colour images also saturation 0.5-1.5 and hue shifted by 5-20 degrees."""
    from PIL import ImageEnhance

    im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
    im = ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))).enhance(
        rng.uniform(0.7, 1.3)
    )
    if im.mode != "RGB":
        return im
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.5, 1.5))
    return _image(_hue_rotated(np.asarray(im), rng.choice([-1, 1]) * rng.uniform(5, 20)), "RGB")


def _solarize(im, rng, other, reals):
    """Every level above a threshold of 128-224 inverted."""
    from PIL import ImageOps

    return ImageOps.solarize(
        im.convert("RGB") if im.mode not in ("L", "RGB") else im, int(rng.integers(128, 225))
    )


def _anywhere(rng, size: tuple, part: tuple) -> tuple[int, int]:
    """(x, y) of a `part` (width, height) placed anywhere inside `size`, drawn uniformly (x first)."""
    return int(rng.integers(0, size[0] - part[0] + 1)), int(rng.integers(0, size[1] - part[1] + 1))


def _array(im) -> np.ndarray:
    return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)


def _image(a: np.ndarray, mode: str):
    from PIL import Image

    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert(mode)


def _fill(rng, channels: int) -> tuple:
    """A random border / fill colour (`channels` ints): black, white or any grey or colour."""
    kind = rng.integers(3)
    if kind < 2:
        return (255 * int(kind),) * channels
    return tuple(int(v) for v in rng.integers(0, 256, channels))


def _colour(rng, mode: str):
    """_fill for a PIL image of `mode` (an int for grey images)."""
    value = _fill(rng, 1 if mode == "L" else 3)
    return value[0] if mode == "L" else value


def _affine(im, rng, angle=0.0, scale=1.0, shear=0.0, shift=0.0, zoom=True):
    """Rotate (degrees), squeeze one axis (scale), shear (degrees), translate (fraction of the side) about the
    centre; zoom: enlarge until no corner of the output falls outside the image (crop to hide the corners)."""
    import cv2

    a = _array(im)
    w, h = im.size
    rad = np.radians(angle)
    rotation = np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])
    squeeze = np.diag([scale, 1.0]) if rng.random() < 0.5 else np.diag([1.0, scale])
    t = np.tan(np.radians(shear))
    skew = np.array([[1.0, t], [0.0, 1.0]]) if rng.random() < 0.5 else np.array([[1.0, 0.0], [t, 1.0]])
    m = rotation @ squeeze @ skew
    if zoom:  # the inverse map of the output's corners must stay inside the source
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * [w / 2, h / 2]
        reach = np.abs(corners @ np.linalg.inv(m).T).max(0) / [w / 2, h / 2]
        m = m * max(reach.max(), 1.0)
    centre = np.array([w / 2, h / 2])
    offset = centre - m @ centre + rng.uniform(-shift, shift, 2) * [w, h]
    channels = 1 if a.ndim == 2 else 3
    out = cv2.warpAffine(
        a,
        np.hstack([m, offset[:, None]]).astype(np.float32),
        (w, h),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=_fill(rng, channels),
    )
    return _image(out, im.mode)


def _squeeze_pad(im, rng, other, real):
    """One axis scaled by 0.6-1.0, padded back to the original size (the content anywhere along that axis)."""
    from PIL import Image

    w, h = im.size
    scale = rng.uniform(0.6, 1.0)
    size = (round(w * scale), h) if rng.random() < 0.5 else (w, round(h * scale))
    small = im.resize(size, Image.Resampling.BICUBIC)
    canvas = Image.new(im.mode, (w, h), _colour(rng, im.mode))
    canvas.paste(small, _anywhere(rng, (w, h), size))
    return canvas


def _crop_any(im, rng, other, real, areas: tuple = (0.5, 0.9)):
    """A box of 50-90% of the area (`areas`), aspect 3:4 to 4:3, anywhere, resized back to the image size."""
    from PIL import Image

    w, h = im.size
    area, aspect = rng.uniform(*areas), np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
    cw, ch = min(w, np.sqrt(area * w * h * aspect)), min(h, np.sqrt(area * w * h / aspect))
    x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    return im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)


def _border_any(im, rng, other, real):
    """Borders of 0-20% of the side on each side (different widths), of a random colour or noise, resized back."""
    from PIL import Image

    w, h = im.size
    left, top, right, bottom = (int(round(rng.uniform(0, 0.2) * w)) for _ in range(4))
    a = _array(im).astype(np.float64)
    shape = (h + top + bottom, w + left + right) + a.shape[2:]
    if rng.random() < 0.25:
        canvas = rng.uniform(0, 255, shape)
    else:
        canvas = np.empty(shape)
        canvas[...] = _fill(rng, 1 if a.ndim == 2 else 3)[0] if a.ndim == 2 else _fill(rng, 3)
    canvas[top : top + h, left : left + w] = a
    return _image(canvas, im.mode).resize((w, h), Image.Resampling.LANCZOS)


def _photometric(im, rng, kinds: tuple):
    """Contrast/brightness (0.5-1.6 / +-40), gamma (0.4-2.5), Gaussian noise (sigma 4-20), inversion: in that order."""
    a = _array(im).astype(np.float64)
    if "contrast" in kinds:
        a = (a - a.mean()) * rng.uniform(0.5, 1.6) + a.mean() + rng.uniform(-40, 40)
    if "gamma" in kinds:
        a = 255 * (np.clip(a, 0, 255) / 255) ** np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
    if "noise" in kinds:
        a = a + rng.normal(0, rng.uniform(4, 20), a.shape)
    if "invert" in kinds:
        a = 255 - np.clip(a, 0, 255)
    return _image(a, im.mode)


def _blend(im, other, weight: float):
    from PIL import Image

    return Image.blend(other.convert(im.mode), im, weight)


def _paste(im, rng, other, real, scale: tuple | None = None):
    """A region of 1/3 to 1/2 of the area of the indexed image (aspect 3:4 to 4:3), anywhere in it, pasted anywhere
    onto a real image that is not indexed; `scale`: resized first by a factor drawn from that range (at most the
    image's size)."""
    from PIL import Image

    w, h = im.size
    area, aspect = rng.uniform(1 / 3, 1 / 2), np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
    cw, ch = min(w, round(np.sqrt(area * w * h * aspect))), min(h, round(np.sqrt(area * w * h / aspect)))
    x, y = _anywhere(rng, (w, h), (cw, ch))
    region = im.crop((x, y, x + cw, y + ch))
    if scale is not None:
        factor = rng.uniform(*scale)
        region = region.resize(
            (min(w, round(cw * factor)), min(h, round(ch * factor))), Image.Resampling.BICUBIC
        )
    out = real.convert(im.mode).resize((w, h))
    out.paste(region, _anywhere(rng, (w, h), region.size))
    return out


def _paste_rotated(im, rng, other, reals):
    """A square region of 1/3 to 1/2 of the area turned by any angle (its corners transparent), pasted anywhere onto
    a real image that is not indexed."""
    from PIL import Image

    w, h = im.size
    side = int(round(np.sqrt(rng.uniform(1 / 3, 1 / 2)) * min(w, h)))
    x, y = _anywhere(rng, (w, h), (side, side))
    region = im.crop((x, y, x + side, y + side)).convert("RGBA")
    region = region.rotate(rng.uniform(0, 360), resample=Image.Resampling.BICUBIC, expand=True)
    region = region.resize((min(w, region.size[0]), min(h, region.size[1])), Image.Resampling.BICUBIC)
    out = reals[0].convert(im.mode).resize((w, h)).convert("RGBA")
    out.alpha_composite(region, _anywhere(rng, (w, h), region.size))
    return out.convert(im.mode)


def _zoom_out(im, rng, other, reals):
    """The whole image at 0.6-0.85 of its side, anywhere on a real image that is not indexed."""
    from PIL import Image

    w, h = im.size
    factor = rng.uniform(0.6, 0.85)
    small = im.resize((round(w * factor), round(h * factor)), Image.Resampling.LANCZOS)
    out = reals[0].convert(im.mode).resize((w, h))
    out.paste(small, _anywhere(rng, (w, h), small.size))
    return out


def _rotate_zoom(im, rng, other, reals):
    """Turned by any angle (the corners a random colour), scaled by 0.8-1.25 and shifted by up to 10% a side, cut
    back to the image's size."""
    w, h = im.size
    angle, factor = rng.uniform(0, 360), rng.uniform(0.8, 1.25)
    out = im.rotate(angle, resample=3, expand=True, fillcolor=_colour(rng, im.mode))  # 3: bicubic
    out = out.resize((round(out.size[0] * factor), round(out.size[1] * factor)), 3)
    cx, cy = out.size[0] / 2 + rng.uniform(-0.1, 0.1) * w, out.size[1] / 2 + rng.uniform(-0.1, 0.1) * h
    return out.crop((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)).resize((w, h))


def _watermark(im, rng, other, reals):
    """2-4 lines of text and a frame, in one random colour at 30-60% opacity, over the image."""
    from PIL import Image, ImageDraw

    w, h = im.size
    base = (im.convert("RGB") if im.mode not in ("L", "RGB") else im).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(80, 160)),)
    for _ in range(int(rng.integers(2, 5))):
        text = "SAMPLE CONFIDENTIAL"[: int(rng.integers(6, 20))]
        draw.text((int(rng.integers(0, w // 3)), int(rng.integers(0, h - 10))), text, fill=colour)
    box = (int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2)))
    draw.rectangle(
        box + (int(rng.integers(w // 2, w)), int(rng.integers(h // 2, h))), outline=colour, width=2
    )
    return Image.alpha_composite(base, layer).convert(im.mode)


def _overlay_any(im, rng, other, real):
    """2-6 random marks: text, crosses, rectangles, filled dots, lines, of random colour and place."""
    from PIL import ImageDraw

    out = im.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(int(rng.integers(2, 7))):
        colour = _colour(rng, out.mode)
        x, y = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        size = int(rng.integers(4, 16))
        kind = rng.integers(5)
        if kind == 0:
            draw.text((x, y), str(rng.choice(["L", "R", "AP", "12", "x2", "PA"])), fill=colour)
        elif kind == 1:
            draw.line((x, y + size // 2, x + size, y + size // 2), fill=colour)
            draw.line((x + size // 2, y, x + size // 2, y + size), fill=colour)
        elif kind == 2:
            draw.rectangle((x, y, x + size, y + size // 2), outline=colour)
        elif kind == 3:
            draw.ellipse((x, y, x + size // 2, y + size // 2), fill=colour)
        else:
            draw.line((x, y, int(rng.integers(0, w)), int(rng.integers(0, h))), fill=colour, width=1)
    return out


PLANTED = ("tuned", "unseen", "random")  # the default; "probe" on request


def plant(
    images: list,
    sets: np.ndarray,
    groups: np.ndarray,
    sources: np.ndarray,
    seed: int,
    indexed=None,
    families: tuple = PLANTED,
) -> dict:
    """{family: {transform: (source indices, copies)}}: the same copies for every condition."""
    rng = np.random.default_rng(seed + 1)
    out: dict = {family: {} for family in families}
    if "tuned" in families:
        for name, make in transforms().items():
            out["tuned"][name] = (sources, [make(images[i], rng) for i in sources])
    if "unseen" in families:
        for name, make in unseen_transforms().items():
            kept, copies = [], []
            for i in sources:
                pool = np.where((sets == sets[i]) & (groups != groups[i]))[0]
                copy = make(images[i], rng, images[int(rng.choice(pool))])
                if copy is not None:
                    kept.append(i)
                    copies.append(copy)
            out["unseen"][name] = (np.array(kept, np.int64), copies)
    if "random" in families:
        indexed = np.ones(len(images), bool) if indexed is None else indexed
        for name, make in random_transforms().items():
            rng = np.random.default_rng([seed + 7, sum(map(ord, name))])  # each family its own stream
            copies, partners = [], []
            for i in sources:
                other = np.where((sets == sets[i]) & (groups != groups[i]) & indexed)[0]
                real = np.where((sets == sets[i]) & ~np.isin(groups, groups[indexed]))[0]
                partners.append(int(rng.choice(other)))
                copies.append(make(images[i], rng, images[partners[-1]], images[int(rng.choice(real))]))
            out["random"][name] = (sources, copies)
            if name in BLENDS:
                PARTNERS[("random", name)] = np.array(partners, np.int64)
    if "probe" in families:
        out["probe"] = plant_probe(images, sets, groups, sources, seed, indexed)
    if "probe2" in families:
        out["probe2"] = plant_probe(images, sets, groups, sources, seed + 2, indexed, probe2_transforms())
    if "probe3" in families:
        out["probe3"] = plant_probe(
            images, sets, groups, sources, seed + 3, indexed, probe3_transforms(), "probe3"
        )
    return out


def plant_probe(
    images: list,
    sets: np.ndarray,
    groups: np.ndarray,
    sources: np.ndarray,
    seed: int,
    indexed,
    made: dict | None = None,
    family: str = "probe",
) -> dict:
    """{transform: (source indices, copies)} of the probe families (`made`, default `probe_transforms`), each its own
    stream (sources a family does not apply to are left out)."""
    indexed = np.ones(len(images), bool) if indexed is None else indexed
    out = {}
    for name, make in (made or probe_transforms()).items():
        rng = np.random.default_rng([seed + 11, zlib.crc32(name.encode())])
        kept, copies, partners = [], [], []
        for i in sources:
            other = np.where((sets == sets[i]) & (groups != groups[i]) & indexed)[0]
            real = np.where((sets == sets[i]) & ~np.isin(groups, groups[indexed]))[0]
            partner, reals = int(rng.choice(other)), rng.choice(real, 3, replace=False)
            copy = make(images[i], rng, images[partner], [images[int(r)] for r in reals])
            if copy is not None:
                kept.append(i)
                copies.append(copy)
                partners.append(partner)
        out[name] = (np.array(kept, np.int64), copies)
        if name in BLENDS:
            PARTNERS[(family, name)] = np.array(partners, np.int64)
    return out


# --- conditions -----------------------------------------------------------------------------------------

LEARNED: dict = {}  # the trained descriptor of this run (train_learned), shared by the six indexes
DONE: dict = {}  # raw scores of the conditions evaluated or loaded in this run
# a blend holds two training images, and a match with either is right: (family, transform) -> the partner of each copy
PARTNERS: dict = {}
BLENDS = ("blend70", "blend60", "blend_even")  # either image is a right answer


def train_learned(images: list, sets: np.ndarray, indexed: np.ndarray, cache: Path | None):
    """One learned descriptor trained on every indexed image but each index's calibration sample (as `index build`
    holds it out: learned.held_out), or loaded from `cache` where an earlier run saved it (training is
    deterministic given the data and seed)."""
    from medisyn_cli.screening.learned import TRAINING, WEIGHTS_FILE, held_out, load_embedder, train_embedder

    if cache is not None and (cache / WEIGHTS_FILE).is_file():
        return load_embedder(cache)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    members = np.where(indexed)[0]
    for dataset in np.unique(sets):
        own = np.where((sets == dataset) & indexed)[0]
        members = np.setdiff1d(members, own[held_out(len(own))])
    return train_embedder([images[i] for i in members], cache, TRAINING)


def combine(a: dict, b: dict) -> dict:
    """Either detector: per image the larger margin over each one's own (per data set) threshold; threshold 0. The
    match counted is the one of the detector with the larger margin."""
    margin = lambda r, sims, where: sims - np.array([r["thresholds"][d] for d in where], np.float32)  # noqa: E731
    out = {
        "thresholds": {d: 0.0 for d in a["thresholds"]},
        "neg_sets": a["neg_sets"],
        "copy_sets": a["copy_sets"],
        "copies": {},
        "screened": 0,
        "screen_seconds": 0.0,
        "neg": np.maximum(margin(a, a["neg"], a["neg_sets"]), margin(b, b["neg"], b["neg_sets"])),
    }
    for family, made in a["copies"].items():
        out["copies"][family] = {}
        for transform, (sims_a, found_a) in made.items():
            sims_b, found_b = b["copies"][family][transform]
            where = a["copy_sets"][family][transform]
            ma, mb = margin(a, sims_a, where), margin(b, sims_b, where)
            out["copies"][family][transform] = [np.maximum(ma, mb), np.where(ma >= mb, found_a, found_b)]
    return out


def either_sweep(pixel: dict, learned: dict, limits=(0.97, 0.975, 0.98, 0.985, 0.99)) -> list[str]:
    """Pixel at its calibrated thresholds OR learned at a fixed stricter threshold: FP and TPR per learned threshold
    (picked here on the test negatives themselves: an upper bound of what the pair can do, not a calibrated rule)."""
    limit = lambda r, where: np.array([r["thresholds"][d] for d in where], np.float32)  # noqa: E731
    lines = ["pixel (calibrated) OR learned >= t, t chosen on these negatives (upper bound):"]
    for t in limits:
        caught = {}
        for family, made in pixel["copies"].items():
            for transform, (sims, found) in made.items():
                other, other_found = learned["copies"][family][transform]
                where = pixel["copy_sets"][family][transform]
                caught[transform] = (
                    family,
                    float(np.mean(((sims >= limit(pixel, where)) & found) | ((other >= t) & other_found))),
                )
        fp = np.mean((pixel["neg"] >= limit(pixel, pixel["neg_sets"])) | (learned["neg"] >= t))
        mean = partial(_family_mean, caught)
        lines.append(
            f"  t {t:.3f}: FP {100 * fp:.2f}%  tuned {mean('tuned'):.1f}  unseen {mean('unseen'):.1f}  "
            + "  ".join(f"{n} {100 * caught[n][1]:.1f}" for n in ("blend", "overlay", "blur2", "gamma"))
        )
    return lines


def make_condition(name: str):
    """(embedder, screener options, threshold rule) of a condition; the rule maps an index to its threshold."""
    from medisyn_cli.screening.embed import get_embedder

    if name == "imagededup-phash":
        embedder = ImagededupPHash()
        return embedder, {"views": False}, lambda index, images: embedder.default_threshold
    if name == "pixel-tuned":
        embedder = get_embedder("pixel")
        return embedder, {"view_set": "tuned"}, lambda index, images: 0.97
    if name in ("pixel", "pixel-views"):
        return get_embedder("pixel"), {}, calibrated
    if name in ("pixel+partial", "pixel+verify"):
        return get_embedder("pixel"), {"measure_partial": True}, partial(calibrated, both=True)
    if name == "learned":
        return LEARNED["embedder"], {}, calibrated
    embedder = get_embedder(name)
    return embedder, {}, lambda index, images: embedder.default_threshold


def calibrated(index, images: list, both: bool = False):
    """The threshold `medisyn index build` would calibrate for this index (same sample rule, same function);
    both: calibrate's whole record (partial-similarity and verification thresholds, calibration false positives)."""
    from medisyn_cli.screening.calibrate import CALIBRATION_SAMPLE, calibrate

    count = len(images)
    sample = np.sort(
        np.random.default_rng(2).choice(count, size=min(CALIBRATION_SAMPLE, count), replace=False)
    )
    found = calibrate(index, [(int(i), images[i]) for i in sample])
    return found if both else found["threshold"]


def combined_score(
    result, threshold: float, partial_threshold: float | None, verify_threshold: int | None = None
) -> float:
    """One score per query for a detector with several rules: the whole-image similarity, or the partial similarity
    moved down by the gap between the two thresholds, whichever is higher (at the calibrated threshold: caught
    by either rule; other thresholds move both rules together); a verified copy (inliers at or above
    `verify_threshold`) scores at least the threshold (the pooled-FPR columns treat it as such)."""
    score = result.nn_similarity
    if np.isnan(score):
        score = -1.0
    if partial_threshold is not None and result.partial_similarity is not None:
        score = max(score, result.partial_similarity - (partial_threshold - threshold))
    if verify_threshold is not None and (result.inliers or 0) >= verify_threshold:
        score = max(score, threshold)
    return score


class ImagededupPHash:
    """imagededup's PHash (64-bit DCT hash, its own preprocessing) as a binary embedder, for the peer comparison."""

    name, dim, binary, code_size, default_threshold = "imagededup-phash", 64, True, 8, 1 - 10 / 64

    def __init__(self):
        from imagededup.methods import PHash

        self.hasher = PHash(verbose=False)

    def embed(self, images: list) -> np.ndarray:
        from medisyn_cli.core.images import to_8bit

        codes = [
            self.hasher.encode_image(image_array=np.asarray(to_8bit(im).convert("RGB"))) for im in images
        ]
        return np.array([np.frombuffer(bytes.fromhex(code), np.uint8) for code in codes], np.uint8)

    def __getattr__(self, attr):  # the rest of the Embedder interface (views, thresholds, settings)
        from medisyn_cli.screening.embed import Embedder

        value = getattr(Embedder, attr)
        return value.__get__(self) if callable(value) else value


# --- scoring --------------------------------------------------------------------------------------------


def embed_all(embedder, images: list, batch: int = 256) -> np.ndarray:
    """Index vectors of every image."""
    return np.concatenate([embedder.embed(images[i : i + batch]) for i in range(0, len(images), batch)])


def split(sets: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(indexed bool per image, candidate negatives, how many non-indexed images were dropped as copies)."""
    rng = np.random.default_rng(seed)
    indexed = rng.random(len(sets)) < 0.5
    copies = np.isin(groups, groups[indexed]) & ~indexed
    return indexed, np.where(~indexed & ~copies)[0], int(copies.sum())


def evaluate(name: str, images, sets, groups, indexed, negatives, planted) -> dict:
    """Similarity (and whether the match is the source) of every negative and planted copy, per data set index."""
    from medisyn_cli.screening.embed import TILES
    from medisyn_cli.screening.index import TrainingIndex
    from medisyn_cli.screening.screener import Screener
    from medisyn_cli.screening.verify import LocalFeatures

    embedder, options, threshold_of = make_condition(name)
    vectors = embed_all(embedder, images)
    tiles = (
        np.concatenate([embedder.embed_views(images[i : i + 256], TILES) for i in range(0, len(images), 256)])
        if name in ("pixel", "pixel+partial", "pixel+verify")
        else None
    )
    keypoints = (
        LocalFeatures.from_images([images[i] for i in np.where(indexed)[0]])
        if name == "pixel+verify"
        else None
    )
    position = np.cumsum(indexed) - 1  # row of an indexed image in `keypoints`
    out = {
        "neg": np.zeros(len(negatives), np.float32),
        "thresholds": {},
        "copies": {},
        "screened": 0,
        "screen_seconds": 0.0,
    }
    for family in planted:
        out["copies"][family] = {
            t: [np.zeros(len(s), np.float32), np.zeros(len(s), bool)] for t, (s, _) in planted[family].items()
        }
    for dataset in np.unique(sets):
        members = np.where((sets == dataset) & indexed)[0]
        regions = None if tiles is None else tiles[members].reshape(-1, embedder.dim)
        local = (
            None
            if keypoints is None
            else LocalFeatures.from_parts([keypoints.image(i) for i in position[members]])
        )
        index = TrainingIndex.from_vectors(
            vectors[members], [str(i) for i in members], embedder, regions=regions, local=local
        )
        found = threshold_of(index, [images[i] for i in members])
        found = found if isinstance(found, dict) else {"threshold": found}
        threshold, partial_threshold = found["threshold"], found.get("partial_threshold")
        verify_threshold = found.get("verify_threshold")
        out["thresholds"][dataset] = float(threshold)
        out.setdefault("partial_thresholds", {})[dataset] = partial_threshold
        out.setdefault("verify_thresholds", {})[dataset] = verify_threshold
        out.setdefault("calibration_fp_without_duplicates", {})[dataset] = found.get(
            "verify_fpr_without_duplicates"
        )
        out.setdefault("calibration_fp", {})[dataset] = found.get(
            "verify_fpr_at_threshold", found.get("partial_fpr_at_threshold", found.get("fpr_at_threshold"))
        )
        options = {
            **options,
            **({"partial_threshold": partial_threshold} if partial_threshold else {}),
            **({"verify_threshold": verify_threshold} if verify_threshold else {}),
        }
        screener = Screener(index, threshold=threshold, **options)
        score = partial(
            combined_score,
            threshold=threshold,
            partial_threshold=partial_threshold,
            verify_threshold=verify_threshold,
        )
        chosen = np.where(sets[negatives] == dataset)[0]
        clock = time.perf_counter()  # screening speed: real non-copies, the common case while generating
        out["neg"][chosen] = [score(r) for r in screener.check([images[i] for i in negatives[chosen]])]
        out["screen_seconds"] += time.perf_counter() - clock
        out["screened"] += len(chosen)
        for family, made in planted.items():
            for transform, (sources, copies) in made.items():
                pick = np.where(sets[sources] == dataset)[0]
                results = screener.check([copies[j] for j in pick])
                sims, found = out["copies"][family][transform]
                sims[pick] = [score(r) for r in results]
                right = [{groups[sources[j]]} for j in pick]
                if (family, transform) in PARTNERS:
                    right = [r | {groups[PARTNERS[(family, transform)][j]]} for r, j in zip(right, pick)]
                found[pick] = [groups[members[r.nn_id]] in g for r, g in zip(results, right)]
    out["neg_sets"] = sets[negatives]
    out["copy_sets"] = {f: {t: sets[s] for t, (s, _) in made.items()} for f, made in planted.items()}
    return out


def threshold_at_fpr(negatives: np.ndarray, fpr: float) -> float:
    """The lowest threshold (on the negatives' own scores) whose false-positive rate is at most `fpr`."""
    ordered = np.sort(negatives)[::-1]
    allowed = int(np.floor(fpr * len(ordered)))
    return (
        float(np.nextafter(ordered[allowed], np.float32(2))) if allowed < len(ordered) else float(ordered[-1])
    )


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability that a copy scores above a negative (ties count half)."""
    both = np.concatenate([positives, negatives])
    ranks = np.argsort(np.argsort(both, kind="stable"), kind="stable").astype(np.float64) + 1
    for value in np.unique(both):  # average ranks of ties
        tie = both == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    n, m = len(positives), len(negatives)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def summarise(result: dict) -> dict:
    """TPR per transform at the default (per data set) thresholds and at 1% / 0.1% pooled FPR; FP, AUROC."""
    default_neg = np.array([result["thresholds"][d] for d in result["neg_sets"]], np.float32)
    at = {"1%": threshold_at_fpr(result["neg"], 0.01), "0.1%": threshold_at_fpr(result["neg"], 0.001)}
    summary: dict = {
        "thresholds": result["thresholds"],
        "partial_thresholds": result.get("partial_thresholds", {}),
        "verify_thresholds": result.get("verify_thresholds", {}),
        "calibration_fp": result.get("calibration_fp", {}),
        "calibration_fp_without_duplicates": result.get("calibration_fp_without_duplicates", {}),
        "fpr_thresholds": at,
        "fp_default": float(np.mean(result["neg"] >= default_neg)),
        "fp_default_without_duplicates": float(
            np.mean(
                (result["neg"] >= default_neg)[~result.get("neg_duplicate", np.zeros(len(default_neg), bool))]
            )
        ),
        "fp_default_per_set": {
            d: float(np.mean(result["neg"][result["neg_sets"] == d] >= result["thresholds"][d]))
            for d in np.unique(result["neg_sets"])
        },
        "tpr": {},
        "auroc": {},
    }
    for family, made in result["copies"].items():
        scores = []
        for transform, (sims, found) in made.items():
            limit = np.array(
                [result["thresholds"][d] for d in result["copy_sets"][family][transform]], np.float32
            )
            summary["tpr"][transform] = {
                "family": family,
                "n": int(len(sims)),
                "default": float(np.mean((sims >= limit) & found)),
                **{k: float(np.mean((sims >= t) & found)) for k, t in at.items()},
            }
            if transform not in INFORMATIVE:
                scores.append(np.where(found, sims, -np.inf))
        summary["auroc"][family] = auroc(np.concatenate(scores), result["neg"])
        for key in ("default", "1%", "0.1%"):
            summary.setdefault("overall", {}).setdefault(family, {})[key] = float(
                np.mean([summary["tpr"][t][key] for t in made if t not in INFORMATIVE])
            )
    for group, members in FAMILIES.items():
        if not all(t in summary["tpr"] for t in members):
            continue
        summary.setdefault("groups", {})[group] = {
            key: float(np.mean([summary["tpr"][t][key] for t in members]))
            for key in ("default", "1%", "0.1%")
        }
    return summary


# --- report ---------------------------------------------------------------------------------------------


def table(summaries: dict) -> list[str]:
    """Rows: transforms, family means, groups, FP, AUROC; columns: TPR at default / 1% / 0.1% FPR per condition."""
    names = list(summaries)
    lines = [
        "TPR at: default threshold (per data set) / pooled 1% FPR / pooled 0.1% FPR",
        f"{'transform':<18}" + "".join(f"{n:>26}" for n in names),
    ]
    cell = lambda d: f"{100 * d['default']:6.1f} {100 * d['1%']:6.1f} {100 * d['0.1%']:6.1f}   "  # noqa: E731
    first = summaries[names[0]]

    def row(label: str, key: str) -> str:
        return f"{label:<18}" + "".join(f"{cell(s['tpr'][key]):>26}" for s in summaries.values())

    for family in first["overall"]:
        members = [t for t, r in first["tpr"].items() if r["family"] == family]
        lines += [row(t, t) for t in members if t not in INFORMATIVE]
        lines.append(
            f"{'= ' + family + ' mean':<18}"
            + "".join(f"{cell(s['overall'][family]):>26}" for s in summaries.values())
        )
        lines += [row(t + " (info)", t) for t in members if t in INFORMATIVE]
    for group in first.get("groups", {}):
        lines.append(
            f"{'~ ' + group:<18}" + "".join(f"{cell(s['groups'][group]):>26}" for s in summaries.values())
        )
    lines.append(
        f"{'FP at default':<18}" + "".join(f"{100 * s['fp_default']:>23.2f}%  " for s in summaries.values())
    )
    lines.append(
        f"{'FP w/o duplicates':<18}"
        + "".join(f"{100 * s['fp_default_without_duplicates']:>23.2f}%  " for s in summaries.values())
    )
    lines.append(
        f"{'FP calibration':<18}"
        + "".join(
            f"{100 * np.mean([v for v in s['calibration_fp'].values() if v is not None] or [np.nan]):>23.2f}%  "
            for s in summaries.values()
        )
    )
    lines.append(
        f"{'FP calib. w/o dup':<18}"
        + "".join(
            f"{100 * np.mean([v for v in s.get('calibration_fp_without_duplicates', {}).values() if v is not None] or [np.nan]):>23.2f}%  "
            for s in summaries.values()
        )
    )
    for family in first["overall"]:
        lines.append(
            f"{'AUROC ' + family:<18}" + "".join(f"{s['auroc'][family]:>24.4f}  " for s in summaries.values())
        )
    lines.append(
        f"{'screen images/s':<18}"
        + "".join(f"{s.get('screen_images_per_s') or 0:>24.1f}  " for s in summaries.values())
    )
    lines.append(
        f"{'thr @1% / @0.1%':<18}"
        + "".join(
            f"{s['fpr_thresholds']['1%']:>15.4f} / {s['fpr_thresholds']['0.1%']:.4f}  "
            for s in summaries.values()
        )
    )
    for name, s in summaries.items():
        lines.append(
            f"  {name}: default thresholds "
            + ", ".join(f"{d[:8]} {t:.4f}" for d, t in s["thresholds"].items())
            + (
                "; partial thresholds "
                + ", ".join(f"{d[:8]} {t:.4f}" for d, t in s["partial_thresholds"].items() if t is not None)
                if any(t is not None for t in s.get("partial_thresholds", {}).values())
                else ""
            )
            + (
                "; verify thresholds " + ", ".join(f"{d[:8]} {t}" for d, t in s["verify_thresholds"].items())
                if any(t is not None for t in s.get("verify_thresholds", {}).values())
                else ""
            )
            + "; FP per set "
            + ", ".join(f"{d[:8]} {100 * v:.2f}%" for d, v in s["fp_default_per_set"].items())
        )
    return lines


def condition_result(name: str, args, images, sets, groups, indexed, negatives, planted) -> dict:
    """Raw scores of a condition: from --raw when an earlier run left them there, else evaluated (and kept)."""
    raw = None if args.raw is None else args.raw / f"raw_{name.replace('+', '_')}.pkl"
    if name in DONE:
        return DONE[name]
    if raw is not None and raw.is_file():
        return DONE.setdefault(name, pickle.loads(raw.read_bytes()))
    clock = time.time()
    if name == "pixel+learned":
        result = combine(
            *(
                condition_result(n, args, images, sets, groups, indexed, negatives, planted)
                for n in ("pixel", "learned")
            )
        )
    else:
        if name == "learned":
            LEARNED["embedder"] = train_learned(images, sets, indexed, args.learned_cache)
        result = evaluate(name, images, sets, groups, indexed, negatives, planted)
        if name == "learned":
            result["training"] = LEARNED["embedder"].training
    result["seconds"] = time.time() - clock
    if raw is not None:
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_bytes(pickle.dumps(result))
    return DONE.setdefault(name, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--conditions",
        nargs="+",
        default=["pixel-tuned", "pixel-views", "pixel", "phash", "imagededup-phash"],
    )
    parser.add_argument(
        "--sources", type=int, default=40, help="Indexed images per data set copied (per transform)."
    )
    parser.add_argument(
        "--negatives", type=int, default=400, help="Non-indexed real images per data set screened."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--families",
        nargs="+",
        default=list(PLANTED),
        choices=PLANTED + ("probe", "probe2", "probe3"),
        help="Copies planted: tuned / unseen (fixed instances), random / probe / probe2 / probe3 (parameters drawn "
        "per copy).",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--raw", type=Path, default=None, help="Keep / reuse each condition's raw scores here."
    )
    parser.add_argument(
        "--learned-cache", type=Path, default=None, help="Keep / reuse the trained descriptor here."
    )
    args = parser.parse_args()

    start = time.time()
    images, sets, labels, names = load(args.data)
    groups = near_duplicate_groups(images, sets, names)
    indexed, candidates, dropped = split(sets, groups, args.seed)
    rng = np.random.default_rng(args.seed)

    def pick(pool, n):
        return np.concatenate(
            [
                np.sort(rng.choice(pool[sets[pool] == d], min(n, np.sum(sets[pool] == d)), replace=False))
                for d in np.unique(sets)
            ]
        )

    sources, negatives = pick(np.where(indexed)[0], args.sources), pick(candidates, args.negatives)
    planted = plant(images, sets, groups, sources, args.seed, indexed, tuple(args.families))
    copies = sum(len(s) for made in planted.values() for s, _ in made.values())
    lines = [
        f"# python benchmarks/screen_quality.py --conditions {' '.join(args.conditions)} --sources {args.sources} "
        f"--negatives {args.negatives} --seed {args.seed} --families {' '.join(args.families)}   "
        f"({os.cpu_count()} CPUs)",
        f"{len(images)} images in {len(np.unique(sets))} data sets, {len(np.unique(groups))} near-duplicate "
        f"groups; {indexed.sum()} indexed (half of each set); {dropped} non-indexed images dropped as copies of "
        f"indexed ones (same group); {len(negatives)} negatives, {len(sources)} sources -> {copies} planted "
        f"copies ({time.time() - start:.0f} s)",
    ]
    pairs = verified_duplicates(images, sets, indexed, negatives)
    duplicate = np.isin(negatives, [n for n, *_ in pairs])
    lines.append(
        f"{len(pairs)} negatives are verified duplicates of indexed images (duplicates.csv / .png, for review): "
        + ", ".join(f"{d[:8]} {int(np.sum(duplicate & (sets[negatives] == d)))}" for d in np.unique(sets))
    )
    print("\n".join(lines), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    duplicate_sheet(images, names, sets, pairs, args.out)
    summaries: dict = {}
    for name in args.conditions:
        result = condition_result(name, args, images, sets, groups, indexed, negatives, planted)
        result["neg_duplicate"] = duplicate
        summaries[name] = summarise(result)
        summaries[name].update(
            seconds=result["seconds"],
            training=result.get("training"),
            screen_images_per_s=result["screened"] / result["screen_seconds"]
            if result["screen_seconds"]
            else None,
        )
        lines.append(
            f"  {name}: {summaries[name]['seconds']:.0f} s"
            + (f" (training: {json.dumps(result['training'])})" if result.get("training") else "")
        )
        print(lines[-1], flush=True)
    extra = either_sweep(DONE["pixel"], DONE["learned"]) if {"pixel", "learned"} <= set(DONE) else []
    lines += table(summaries) + extra + [f"total {time.time() - start:.0f} s"]
    print("\n".join(lines[-len(table(summaries)) - len(extra) - 1 :]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "screen_quality.txt").write_text("\n".join(lines) + "\n")
    (args.out / "screen_quality.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summaries": summaries}, indent=1)
        + "\n"
    )


if __name__ == "__main__":
    main()
