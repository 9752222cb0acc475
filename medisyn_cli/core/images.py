"""Image helpers shared by reports and training: PNG thumbnails and labelled sample grids."""

from __future__ import annotations

import io
from pathlib import Path

from medisyn_cli.core.files import atomic_path
from medisyn_cli.screening.embed import to_8bit

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


def image_grid(images: list, rows: int, path: Path, labels: list[str] | None = None,
               label_width: int = 220) -> Path:
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
