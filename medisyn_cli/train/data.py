"""The training images: records, the hold-out split, decoding and resizing."""

from __future__ import annotations

import hashlib

from medisyn_cli.core.datasets import Record, iter_images, read_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.train.config import TrainConfig


def split_key(record: Record) -> str:
    """A stable name for the hold-out split: the file name, or the Parquet key."""
    return record.path.name if record.path is not None else record.key


def is_held_out(record: Record, fraction: float) -> bool:
    """Deterministic hold-out by the hash of the file name."""
    digest = hashlib.sha1(split_key(record).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def load_training_images(config: TrainConfig):
    """Decode and resize every captioned image; returns (uint8 tensor N,3,R,R, captions, skipped)."""
    import numpy as np
    import torch

    records = read_records(list(config.data), config.caption_template)
    uncaptioned = [r for r in records if not r.caption]
    if uncaptioned:
        raise MedisynError(
            f"{uncaptioned[0].key}: no caption (add a 'caption' column to metadata.csv, "
            f"or label folders with --caption-template)"
        )
    train = [r for r in records if not is_held_out(r, config.holdout)]
    pixels, captions, skipped = [], [], []
    for record, image, error in iter_images(train):
        if error:
            skipped.append((record.key, error))
            continue
        pixels.append(np.asarray(_square(image.convert("RGB"), config.resolution)))
        captions.append(record.caption)
    if len(pixels) < config.min_images:
        raise MedisynError(
            f"{', '.join(config.data)}: only {len(pixels)} readable images; need at least {config.min_images}"
        )
    tensor = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    held = [r for r in records if is_held_out(r, config.holdout)]
    return tensor, captions, skipped, held


def _square(image, size: int):
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)


def to_unit(batch_uint8):
    """uint8 0..255 -> float -1..1."""
    return batch_uint8.float() / 127.5 - 1.0
