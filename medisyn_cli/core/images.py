"""Image helpers shared by reports and training: PNG thumbnails and labelled sample grids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from medisyn_cli.core.files import atomic_path

THUMB = 96  # side of the thumbnails in HTML reports


def thumbnail(image, size: int = THUMB, pixelated: bool = True):
    """An RGB size x size copy (16-bit grey rescaled); pixelated: enlarge nearest-neighbour, else bilinear."""
    from PIL import Image

    image = to_8bit(image).convert("RGB")
    return image.resize((size, size), Image.NEAREST if pixelated and image.width < size else Image.BILINEAR)


def png_bytes(image) -> bytes:
    """A PIL image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_png(image, size: int = THUMB) -> bytes:
    """A small PNG of an image (16-bit grey rescaled), nearest-neighbour enlarged so pixels stay visible."""
    return png_bytes(thumbnail(image, size))


def image_grid(
    images: list, rows: int, path: Path, labels: list[str] | None = None, label_width: int = 220
) -> Path:
    """Paste equally sized PIL images into a grid (row-major), with an optional text label per row."""
    import textwrap

    from PIL import Image, ImageDraw

    cols = max(1, len(images) // max(rows, 1))
    w, h = images[0].size
    offset = label_width if labels else 0
    grid = Image.new("RGB", (offset + cols * w, rows * h), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB"), (offset + c * w, r * h))
    for r, label in enumerate(labels or []):
        lines = textwrap.wrap(label, max(8, label_width // 6 - 1))[: max(1, h // 12)]
        top = r * h + max(0, h - 12 * len(lines)) // 2
        draw.multiline_text((4, top), "\n".join(lines), fill="black", spacing=1)
    return save_png(grid, path)


def save_png(image, path: Path) -> Path:
    """A PIL image saved as PNG atomically (temp name, then rename; parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".png") as tmp:
        image.save(tmp)
    return path


HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_grey(image) -> np.ndarray:
    """Luminance of any PIL image as float32 (H, W); 16-bit and float values kept exact (never clipped to 8 bits)."""
    if image.mode in HIGH_DEPTH + ("L",):
        return np.asarray(image, dtype=np.float32)
    return rgb_float(image) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_8bit(image):
    """An 'L' or 'RGB' PIL image for models and hashes; 16-bit and float grey is rescaled (min..max -> 0..255)."""
    from PIL import Image

    if image.mode in ("L", "RGB"):
        return image
    if image.mode in HIGH_DEPTH:
        grey = to_grey(image)
        low, high = float(grey.min()), float(grey.max())
        scaled = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode in ("1", "LA"):
        return Image.fromarray(np.round(to_grey(image)).astype(np.uint8), mode="L")
    return Image.fromarray(np.round(rgb_float(image)).astype(np.uint8), mode="RGB")


def rgb_float(image) -> np.ndarray:
    """float32 (H, W, 3) RGB of an 8-bit image of any mode; transparency is composited over black."""
    if image.mode in ("RGBA", "LA", "PA") or image.mode == "P" and "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        return rgba[..., :3] * (rgba[..., 3:] / 255.0)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.float32)


def to_rgb_array(image, size: int) -> np.ndarray:
    """uint8 (3, size, size) of any PIL image (grey and 16-bit images become 8-bit RGB)."""
    from PIL import Image

    rgb = to_8bit(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


_LAPLACE_PAIR = np.array(
    [[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32
)  # Immerkaer's noise estimation mask


def noise_variance(grey: np.ndarray, window: int = 8) -> float:
    """The white-noise variance of a grey image where it is flattest: Immerkaer's estimator (fast noise variance
    estimation, 1996) in `window` x `window` windows, the windows' first quartile (texture and clipped, black
    backgrounds do not count); 0 for an image too small to hold a window."""
    import cv2

    cv2.setNumThreads(1)  # one small image per call: threads of its own would only compete with the caller's
    grey = np.ascontiguousarray(grey, np.float32)
    if min(grey.shape[:2]) < window + 2 * (window // 2) + 2:
        return 0.0
    residual = np.abs(cv2.filter2D(grey, -1, _LAPLACE_PAIR))[1:-1, 1:-1]
    half = window // 2
    local = cv2.blur(residual, (window, window))[half:-half, half:-half]
    return float(np.percentile(np.pi / 2 * (local / 6) ** 2, 25))


# the share of isolated saturated impulse pixels (`impulse_share`) from which an image counts as salt-and-pepper noisy
IMPULSE_SHARE = 0.003
_RING = np.ones((3, 3), np.uint8)
_RING[1, 1] = 0  # a pixel's 8 neighbours


def impulse_share(grey: np.ndarray) -> float:
    """The share of a grey image's pixels that are isolated saturated impulses: at the image's brightest level and
    more than a quarter of its range above every one of their 8 neighbours, or at its darkest and that far below
    every one (salt and pepper, dead or hot pixels; never an edge, whose pixels have neighbours on their own side,
    and rarely speckle or posterisation, whose outliers are seldom saturated)."""
    import cv2

    cv2.setNumThreads(1)  # one small image per call
    grey = np.ascontiguousarray(grey, np.float32)
    low, high = float(grey.min()), float(grey.max())
    step, level = 0.25 * (high - low), 0.01 * (high - low)
    if step <= 0 or min(grey.shape[:2]) < 3:
        return 0.0
    salt = (grey >= high - level) & (grey - cv2.dilate(grey, _RING) > step)
    pepper = (grey <= low + level) & (cv2.erode(grey, _RING) - grey > step)
    return float(np.mean(salt | pepper))


def without_impulses(image):
    """The image median-filtered (3 x 3) where at least IMPULSE_SHARE of its pixels are isolated saturated impulses
    (`impulse_share`), else the image itself: a copy under salt-and-pepper noise compared as its source looks."""
    from PIL import Image, ImageFilter

    grey = to_grey(image)
    if impulse_share(grey) < IMPULSE_SHARE:
        return image
    if image.mode in ("L", "RGB"):
        return image.filter(ImageFilter.MedianFilter(3))
    import cv2

    return Image.fromarray(cv2.medianBlur(np.ascontiguousarray(grey, np.float32), 3), mode="F")
