"""Figures: sample grids with row labels."""

from __future__ import annotations

from pathlib import Path


def image_grid(images: list, rows: int, path: Path, labels: list[str] | None = None, label_width: int = 220) -> Path:
    """Paste equally sized PIL images into a grid (row-major), with an optional text label per row."""
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
        draw.text((4, r * h + h // 2 - 6), label[-(label_width // 6):], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    grid.save(tmp)
    tmp.replace(path)
    return path
