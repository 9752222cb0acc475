"""Shard arithmetic and where a process finds its place: --shard, SLURM arrays, srun tasks, torchrun ranks."""

import pytest

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.shards import (
    Shard,
    batch_count,
    parse_shard,
    resolve_shard,
    shard_batches,
    shard_from_env,
)


@pytest.mark.parametrize("batches, count", [(1, 1), (7, 3), (10, 16), (100, 4)])
def test_any_split_covers_every_batch_exactly_once(batches, count):
    parts = [list(shard_batches(batches, Shard(k, count))) for k in range(count)]
    assert sorted(b for part in parts for b in part) == list(range(batches))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_batch_count_rounds_up():
    assert [batch_count(n, 8) for n in (1, 8, 9, 16, 17)] == [1, 1, 2, 2, 3]


def test_parse_shard_counts_from_zero_and_names_bad_values():
    assert parse_shard("2/4") == Shard(2, 4, source="--shard") and parse_shard(" 0 / 1 ").count == 1
    for bad, message in [
        ("4/4", "between 0 and 3"),
        ("1-4", "expected K/N"),
        ("a/b", "expected K/N"),
        ("0/0", "between 0 and 0"),
    ]:
        with pytest.raises(MedisynError, match=message):
            parse_shard(bad)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, (3, 4, None)),
        (
            {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_MAX": "13"},
            (2, 4, None),
        ),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2, 1)),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, (5, 8, 1)),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # a plain sbatch job: one process
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_PROCID": "1",
                "SLURM_NTASKS": "4",
                "SLURM_LOCALID": "1",
            },
            (9, 12, 1),
        ),  # task 2 of 3, GPU process 1 of 4
        (
            {
                "SLURM_ARRAY_TASK_ID": "1",
                "SLURM_ARRAY_TASK_COUNT": "2",
                "RANK": "0",
                "WORLD_SIZE": "2",
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "1",
                "LOCAL_RANK": "0",
            },
            (2, 4, 0),
        ),  # torchrun inside an array task
    ],
)
def test_shard_from_environment(env, expected):
    shard = shard_from_env(env)
    assert (None if shard is None else (shard.index, shard.count, shard.local_rank)) == expected


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"},
            "SLURM_ARRAY_TASK_ID='x' is not a whole number",
        ),
        ({"SLURM_ARRAY_TASK_ID": "1"}, "neither SLURM_ARRAY_TASK_COUNT"),
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "8",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
            "has a step or gaps",
        ),
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4"}, "outside the array"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is outside 0..1"),
    ],
)
def test_bad_environment_is_a_clear_error(env, message):
    with pytest.raises(MedisynError, match=message):
        shard_from_env(env)


def test_the_shard_option_wins_over_the_environment():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_shard("1/2", env).name == "1/2" and resolve_shard(None, env).name == "3/4"
    assert resolve_shard(None, {}) == Shard()
