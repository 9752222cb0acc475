"""Manifest + n + seed -> deterministic jobs (id, label, prompt, seed); quotas, batches, shards."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.names import class_names, safe_name
from medisyn_cli.dataset.manifest import Manifest


@dataclass(frozen=True)
class Job:
    """One planned image: stable id, class, prompt variant and its own seeds (one per attempt)."""

    id: str
    label: str
    label_id: int
    index: int
    prompt: str
    negative_prompt: str
    mode: str
    run_seed: int

    @property
    def seed(self) -> int:
        """The seed of the first image made for this job."""
        return self.attempt_seed(0)

    def attempt_seed(self, attempt: int) -> int:
        """The seed of the attempt-th image made for this job (attempt > 0: after a rejection or a bad image)."""
        return image_seed(self.run_seed, self.label, self.index, attempt)


def quotas(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split n over classes by weight (largest remainder, ties to the earlier class); each class gets >= 1."""
    if n <= 0:
        raise MedisynError(f"--n: must be a positive number of images, got {n}")
    if n < len(weights):
        raise MedisynError(
            f"--n: {n} is smaller than the number of classes ({len(weights)}); "
            f"every class needs at least one image"
        )
    total = sum(weights.values())
    exact = {label: n * w / total for label, w in weights.items()}
    counts = {label: int(v) for label, v in exact.items()}
    # sorted is stable: ties stay in manifest order
    order = sorted(weights, key=lambda label: -(exact[label] - counts[label]))
    for label in order[: n - sum(counts.values())]:
        counts[label] += 1
    return _one_each(counts)


def _one_each(counts: dict[str, int]) -> dict[str, int]:
    """Give every class with no image one, taken from the class with the most (the earlier one on ties)."""
    empty = [label for label, count in counts.items() if count == 0]
    largest = [(-count, place, label) for place, (label, count) in enumerate(counts.items())]
    heapq.heapify(largest)
    for label in empty:
        _, place, donor = heapq.heappop(largest)
        counts[donor] -= 1
        counts[label] = 1
        heapq.heappush(largest, (-counts[donor], place, donor))
    return counts


def image_seed(run_seed: int, label: str, index: int, attempt: int = 0) -> int:
    """A 63-bit seed from (run seed, label, index within class, attempt): independent of batching."""
    key = f"{run_seed}\x1f{label}\x1f{index}" + (f"\x1f{attempt}" if attempt else "")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") & (2**63 - 1)


def image_id(label: str, index: int) -> str:
    """Stable id of the index-th image of a class."""
    return f"{safe_name(label)}-{index:06d}"


def iter_jobs(manifest: Manifest, counts: dict[str, int], seed: int) -> Iterator[Job]:
    """Jobs interleaved across classes (so any prefix stays balanced); variants used in turn."""
    labels = manifest.labels
    ids = {label: number for number, label in enumerate(class_names(labels))}
    variants = {label: manifest.variants(label) for label in labels}
    active = labels
    for index in range(max(counts.values())):
        active = [label for label in active if index < counts[label]]  # classes done drop out: O(n) in all
        for label in active:
            row = variants[label][index % len(variants[label])]
            yield Job(
                id=image_id(label, index),
                label=label,
                label_id=ids[label],
                index=index,
                prompt=row.prompt,
                negative_prompt=row.negative_prompt,
                mode=row.mode,
                run_seed=seed,
            )
