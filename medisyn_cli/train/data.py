"""The training images: records, the hold-out split, and one pass that decodes and resizes each image into a
file of pixels on disk, read back a batch at a time (memory does not grow with the number of images)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from medisyn_cli.core.datasets import Record, iter_images, read_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import atomic_path
from medisyn_cli.train.config import TrainConfig


class PixelFile:
    """Resized uint8 images (N, 3, R, R), one row of 3*R*R bytes each in a file, read a batch at a time."""

    def __init__(self, path: Path, count: int, size: int):
        self.path, self.count, self.size = Path(path), count, size
        self.row = 3 * size * size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        """The rows `index` (a slice, or a sequence/tensor of ints) as a uint8 tensor (B, 3, R, R)."""
        import numpy as np
        import torch

        rows = range(self.count)[index] if isinstance(index, slice) else [int(i) for i in index]
        batch = np.empty((len(rows), 3, self.size, self.size), dtype=np.uint8)
        with open(self.path, "rb") as handle:
            for k, i in enumerate(rows):
                if not 0 <= i < self.count:
                    raise IndexError(f"image {i} of {self.count}")
                batch[k] = np.frombuffer(os.pread(handle.fileno(), self.row, i * self.row), np.uint8).reshape(
                    3, self.size, self.size
                )
        return torch.from_numpy(batch)


@dataclass
class TrainingSet:
    """The images a run trains on (pixels on disk), their captions, and what was skipped or held out."""

    pixels: PixelFile
    captions: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    held: list[Record] = field(default_factory=list)
    pixel_sha256: str = ""  # the pixels as decoded and resized, in order: what the latents depend on
    fingerprint: str = (
        ""  # pixels and captions: pipeline.lora.data_fingerprint's value, computed as they stream
    )

    def __len__(self) -> int:
        return len(self.captions)


def split_key(record: Record) -> str:
    """A stable name for the hold-out split: the file name, or the Parquet key."""
    return record.path.name if record.path is not None else record.key


def is_held_out(record: Record, fraction: float) -> bool:
    """Deterministic hold-out by the hash of the file name."""
    digest = hashlib.sha1(split_key(record).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def load_training_images(config: TrainConfig, folder: Path) -> TrainingSet:
    """Decode and resize every captioned image once, writing its pixels to `folder`/pixels-R.u8 (one image in
    memory at a time); unreadable images are skipped and listed."""
    records = read_records(list(config.data), config.caption_template)
    uncaptioned = [r for r in records if not r.caption]
    if uncaptioned:
        raise MedisynError(
            f"{uncaptioned[0].key}: no caption (add a 'caption' column to metadata.csv, "
            f"or label folders with --caption-template)"
        )
    train = [r for r in records if not is_held_out(r, config.holdout)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pixels-{config.resolution}.u8"
    captions, skipped, digest = [], [], hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for record, image, error in iter_images(train):
            if error:
                skipped.append((record.key, error))
                continue
            row = image_row(image, config.resolution)
            handle.write(row)
            digest.update(row)
            captions.append(record.caption)
        handle.flush()
    if len(captions) < config.min_images:
        raise MedisynError(
            f"{', '.join(config.data)}: only {len(captions)} readable images; need at least {config.min_images}"
        )
    pixel_sha256 = digest.hexdigest()
    digest.update("\n".join(captions).encode())
    held = [r for r in records if is_held_out(r, config.holdout)]
    pixels = PixelFile(path, len(captions), config.resolution)
    return TrainingSet(pixels, captions, skipped, held, pixel_sha256, digest.hexdigest())


def image_row(image, size: int) -> bytes:
    """One image as trained: RGB, centre square, resized to `size`, channels first (3*size*size bytes)."""
    import numpy as np

    return np.ascontiguousarray(np.asarray(_square(image.convert("RGB"), size)).transpose(2, 0, 1)).tobytes()


def _square(image, size: int):
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)


def to_unit(batch_uint8):
    """uint8 0..255 -> float -1..1."""
    return batch_uint8.float() / 127.5 - 1.0
