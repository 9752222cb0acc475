"""Labelled image sets read in batches, and their label checks (shared by the judge and the evaluations)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.batching import batched
from medisyn_cli.core.datasets import (
    Record,
    Source,
    count_images,
    find_sources,
    iter_source_records,
    open_or_skip,
)
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import to_rgb_array
from medisyn_cli.core.progress import Task, current

LABEL_SEPARATOR = "|"  # multi-label sets: "effusion|pneumonia" in the label column (empty: no finding)


@dataclass
class ImageSet:
    """A labelled image set read once: per image its key, label(s) and stream position; skipped files."""

    name: str
    keys: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # ordinal in the stream (to find an image again)
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def open_sources(paths: list[str | Path] | str | Path, option: str) -> list[Source]:
    """find_sources for one CLI option; its name is added to the error."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    try:
        return find_sources(paths)
    except MedisynError as exc:
        raise MedisynError(f"{option}: {exc}") from exc


def iter_batches(
    sources: list[Source], batch_size: int, image_set: ImageSet
) -> Iterator[tuple[list[Record], list]]:
    """(records, PIL images) batches of every readable image; unreadable ones go to image_set.skipped. Inside a
    `core.progress.reporting` block each batch counts on a bar once the caller is done with it."""
    shown = current()
    task = Task(shown, f"reading {image_set.name}", sum(map(count_images, sources)) if shown else None)
    for batch in batched(_readable(sources, image_set), batch_size):
        yield [record for record, _ in batch], [image for _, image in batch]
        task.advance(len(batch))


def _readable(sources: list[Source], image_set: ImageSet) -> Iterator[tuple[Record, object]]:
    """(record, image) of every image that decodes, noted in image_set with its stream position."""
    for position, record in enumerate(r for source in sources for r in iter_source_records(source)):
        image = open_or_skip(record, image_set.skipped)
        if image is not None:
            image_set.keys.append(record.key)
            image_set.labels.append(record.label)
            image_set.positions.append(position)
            yield record, image


def fetch_images(sources: list[Source], positions: list[int]) -> dict[int, object]:
    """The images at the given stream positions (a second pass over the sources; only those are decoded)."""
    wanted, found, position = set(positions), {}, 0
    for source in sources:
        for record in iter_source_records(source):
            if position in wanted:
                found[position] = record.open()
            position += 1
            if len(found) == len(wanted):
                return found
    return found


def load_arrays(sources: list[Source], size: int, name: str) -> tuple[np.ndarray, ImageSet]:
    """All images of a set as uint8 (N, 3, size, size) in memory (12 KB an image at 64 px), and labels."""
    image_set, chunks = ImageSet(name), []
    for _, images in iter_batches(sources, 256, image_set):
        chunks.append(np.stack([to_rgb_array(image, size) for image in images]))
    if not chunks:
        raise MedisynError(f"{name}: no readable images ({len(image_set.skipped)} unreadable)")
    return np.concatenate(chunks), image_set


def split_labels(label: str | None, multi_label: bool) -> tuple[str, ...]:
    """The labels of one image: one, or for multi-label sets the '|'-separated findings (may be none)."""
    if label is None:
        return ()
    if not multi_label:
        return (label,)
    return tuple(sorted({part.strip() for part in label.split(LABEL_SEPARATOR) if part.strip()}))


def require_labels(image_set: ImageSet, multi_label: bool) -> None:
    """MedisynError when images of a multi-class set have no label (multi-label: empty is 'no finding')."""
    missing = [key for key, label in zip(image_set.keys, image_set.labels, strict=True) if label is None]
    if missing and not multi_label:
        raise MedisynError(
            f"{image_set.name}: {len(missing)} of {len(image_set)} images have no label "
            f"(e.g. {missing[0]}); give label folders, a label column or metadata.csv labels"
        )


def label_vocabulary(image_set: ImageSet, multi_label: bool) -> list[str]:
    """Sorted distinct labels of a set."""
    return sorted({part for label in image_set.labels for part in split_labels(label, multi_label)})


def check_same_labels(reference: ImageSet, others: list[ImageSet], multi_label: bool) -> list[str]:
    """The reference's labels; MedisynError naming the labels when another set has extra or missing ones."""
    expected = label_vocabulary(reference, multi_label)
    for other in others:
        labels = set(label_vocabulary(other, multi_label))
        extra, missing = sorted(labels - set(expected)), sorted(set(expected) - labels)
        if extra:
            raise MedisynError(
                f"{other.name}: labels not in {reference.name}: {', '.join(extra)} "
                f"({reference.name} has: {', '.join(expected)})"
            )
        if missing:
            raise MedisynError(
                f"{other.name}: no images of {reference.name} labels {', '.join(missing)} "
                f"(a classifier trained on it cannot score them)"
            )
    return expected


def targets(image_set: ImageSet, classes: list[str], multi_label: bool) -> np.ndarray:
    """int64 class indices (N,), or for multi-label float32 multi-hot (N, C)."""
    index = {label: i for i, label in enumerate(classes)}
    if not multi_label:
        return np.array([index[label] for label in image_set.labels], dtype=np.int64)
    hot = np.zeros((len(image_set), len(classes)), dtype=np.float32)
    for row, label in enumerate(image_set.labels):
        for part in split_labels(label, True):
            hot[row, index[part]] = 1.0
    return hot
