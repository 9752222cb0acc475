"""Real sample images (shared/data) and a mark, for the dataset tests (#27)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from medisyn_cli.dataset.marks import Mark

DATA = Path("/work/shared/data")
if not DATA.exists():
    DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MARK = Mark("3f2a9c1b7d4e", "melanoma-000012", "medisyn-mini (bundled)", "ab" * 32, "0.1.0")


def real_files(dataset: str) -> list[Path]:
    """The 64 px PNGs of a shared sample dataset, sorted (skips the test where shared/ is absent)."""
    folder = DATA / dataset / "images"
    if not folder.exists():
        pytest.skip(f"{folder}: the shared sample images are not here")
    return sorted(folder.glob("*.png"))


def real_png(dataset: str, number: int = 0) -> bytes:
    """The bytes of one real sample PNG."""
    return real_files(dataset)[number].read_bytes()


def encode(image: Image.Image, kind: str = "PNG", **options) -> bytes:
    """An image's bytes in `kind`, written by Pillow (no metadata unless given)."""
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()
