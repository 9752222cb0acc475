"""Batching written once: consecutive lists of at most `size` items from any iterable."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from medisyn_cli.core.errors import MedisynError


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of at most size items."""
    if size < 1:
        raise MedisynError(f"--batch-size: must be at least 1, got {size}")
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
