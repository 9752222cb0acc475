"""Shard arithmetic: which batches of the plan a process makes, from --shard K/N or the cluster's environment.

The plan is cut into batches of --batch-size images (the unit of work and of resume); batch b belongs to
shard b mod N. A process's place comes from --shard, else from the environment:

    SLURM array        SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT (or _MIN / _MAX)
    tasks in a job     RANK / WORLD_SIZE (torchrun, accelerate) or SLURM_PROCID / SLURM_NTASKS (srun)
    device             LOCAL_RANK or SLURM_LOCALID: the GPU of this process on its node

An array of A tasks with P processes each gives A * P shards: shard = task * P + process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from medisyn_cli.core.errors import MedisynError


@dataclass(frozen=True)
class Shard:
    """This process's part of a run: shard `index` of `count`, and its GPU on the node (None: not set)."""

    index: int = 0
    count: int = 1
    local_rank: int | None = None
    source: str = "single process"

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'K/N' (K counted from 0) -> Shard; anything else is a one-line error."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise MedisynError(f"--shard: expected K/N with K from 0 to N-1 (e.g. 0/4), got '{text}'")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise MedisynError(
            f"--shard {text}: K must be between 0 and {max(count - 1, 0)} (shards count from 0)"
        )
    return Shard(index, count, source="--shard")


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    if not re.fullmatch(r"\d+", value.strip()):
        raise MedisynError(f"environment variable {name}={value!r} is not a whole number")
    return int(value)


def _array_place(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(position, count) of this task in a SLURM job array, or None outside an array."""
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    low, high, count = (_int(env, f"SLURM_ARRAY_TASK_{k}") for k in ("MIN", "MAX", "COUNT"))
    low = 0 if low is None else low
    if count is None:
        if high is None:
            raise MedisynError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor _MAX is")
        count = high - low + 1
    if high is not None and high - low + 1 != count:
        raise MedisynError(
            f"SLURM array {low}-{high} has a step or gaps ({count} tasks); medisyn needs a "
            f"contiguous array such as --array=0-{count - 1}"
        )
    position = task - low
    if not 0 <= position < count:
        raise MedisynError(f"SLURM_ARRAY_TASK_ID={task} is outside the array {low}..{low + count - 1}")
    return position, count


def _process_place(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(rank, world size, source) of this process among the processes of one task, or None."""
    for rank_name, size_name in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        rank, size = _int(env, rank_name), _int(env, size_name)
        if rank is not None and size is not None:
            if size < 1 or rank >= size:
                raise MedisynError(f"{rank_name}={rank} is outside 0..{size - 1} ({size_name}={size})")
            return rank, size, rank_name
    return None


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """This process's shard from the SLURM / torchrun / accelerate environment; None when there is none."""
    array, process = _array_place(env), _process_place(env)
    if array is None and (process is None or process[1] == 1):
        return None
    position, tasks = array or (0, 1)
    rank, size, source = process or (0, 1, "")
    local = _int(env, "LOCAL_RANK")
    local = _int(env, "SLURM_LOCALID") if local is None else local
    sources = " and ".join(s for s in ("SLURM array" if array else "", source) if s)
    return Shard(position * size + rank, tasks * size, local if size > 1 else None, sources)


def resolve_shard(option: str | None, env: Mapping[str, str]) -> Shard:
    """--shard wins over the environment; neither means the whole run in one process."""
    if option:
        return parse_shard(option)
    return shard_from_env(env) or Shard()


def batch_count(total: int, batch_size: int) -> int:
    """Number of batches of the plan."""
    return -(-total // batch_size)


def shard_batches(batches: int, shard: Shard) -> Iterator[int]:
    """The batch numbers of one shard (round robin, so every shard gets an even share of every class)."""
    return iter(range(shard.index, batches, shard.count))
