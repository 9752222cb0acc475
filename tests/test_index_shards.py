"""`medisyn index build --shard K/N`: embedding shards, then one index identical to a one-process build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import medisyn_cli.screening.index_shards as index_shards
from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.shards import parse_shard
from medisyn_cli.core.store import IncompleteRun
from medisyn_cli.screening.build import build_index
from medisyn_cli.screening.index import load_index

FIXTURE = Path(__file__).parent / "fixtures" / "images"
VOLATILE = ("created", "seconds")


@pytest.fixture
def train(tmp_path) -> Path:
    """The 12 real fixture images in label folders, plus a corrupt file (skipped, listed)."""
    folder = tmp_path / "train"
    for path in sorted((FIXTURE / "images").glob("*.png")):
        target = folder / path.name.split("_")[0] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (folder / "te" / "corrupt.png").write_bytes(b"not a png")
    return folder


def same_index(a: Path, b: Path) -> None:
    meta_a, meta_b = (json.loads((p / "index.json").read_text()) for p in (a, b))
    assert {k: v for k, v in meta_a.items() if k not in VOLATILE} == {
        k: v for k, v in meta_b.items() if k not in VOLATILE
    }
    assert pq.read_table(a / "keys.parquet").equals(pq.read_table(b / "keys.parquet"))
    first, second = load_index(a), load_index(b)
    ids = np.arange(len(first))
    assert np.array_equal(first.reconstruct(ids), second.reconstruct(ids))
    assert (
        first.regions.ntotal == second.regions.ntotal == 16 * len(first)
    )  # region tiles as one process makes
    assert np.array_equal(
        first.regions.reconstruct_n(0, first.regions.ntotal),
        second.regions.reconstruct_n(0, second.regions.ntotal),
    )
    assert all(map(np.array_equal, first.region_projection, second.region_projection))


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_build_the_same_index_as_one_process(train, tmp_path, shards):
    one = tmp_path / "one"
    build_index([train], one, batch_size=2, show_progress=False)
    sharded = tmp_path / "sharded"
    results = [
        build_index([train], sharded, batch_size=2, show_progress=False, shard=parse_shard(f"{k}/{shards}"))
        for k in range(shards)
    ]
    assert all(r.get("partial") for r in results[:-1]) and results[-1]["count"] == 12
    assert sorted(p.name for p in sharded.iterdir()) == [
        ".medisyn",
        "index.faiss",
        "index.json",
        "keys.parquet",
        "local.npz",
        "regions.faiss",
        "regions_pca.npz",
    ]
    same_index(one, sharded)
    assert results[-1]["skipped"]["count"] == 1 and "corrupt.png" in results[-1]["skipped"]["files"][0]["key"]


def test_merge_names_missing_shards_then_builds(train, tmp_path):
    out = tmp_path / "idx"
    build_index([train], out, batch_size=3, show_progress=False, shard=parse_shard("1/3"))
    with pytest.raises(
        IncompleteRun, match=r"shard 0/3: 2 batches \(6 images\); shard 2/3: 1 batches \(3 images\)"
    ):
        index_shards.merge_shards(out)
    for k in (0, 2):
        build_index([train], out, batch_size=3, show_progress=False, shard=parse_shard(f"{k}/3"))
    assert load_index(out).meta["count"] == 12
    assert "already built" in index_shards.merge_shards(out)["note"]
    assert (
        "already built"
        in build_index([train], out, batch_size=3, show_progress=False, shard=parse_shard("1/3"))["note"]
    )


@pytest.mark.slow
def test_a_killed_shard_redoes_only_the_batch_in_flight(train, tmp_path, monkeypatch):
    out = tmp_path / "idx"
    written, real = [], index_shards.ShardDir.write_batch

    def dies_after_two(self, batch, *args):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(batch)
        return real(self, batch, *args)

    monkeypatch.setattr(index_shards.ShardDir, "write_batch", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_index([train], out, batch_size=2, show_progress=False, shard=parse_shard("0/2"))
    monkeypatch.setattr(
        index_shards.ShardDir,
        "write_batch",
        lambda self, batch, *a: (written.append(batch), real(self, batch, *a)),
    )
    build_index([train], out, batch_size=2, show_progress=False, shard=parse_shard("0/2"))
    assert written == [0, 2, 4, 6]  # batches 0 and 2 were not made again
    build_index([train], out, batch_size=2, show_progress=False, shard=parse_shard("1/2"))
    one = tmp_path / "one"
    build_index([train], one, batch_size=2, show_progress=False)
    same_index(one, out)


def test_a_shard_with_other_options_is_refused(train, tmp_path):
    out = tmp_path / "idx"
    build_index([train], out, batch_size=2, show_progress=False, shard=parse_shard("0/2"))
    with pytest.raises(MedisynError, match="batch_size: 2 there, 4 now"):
        build_index([train], out, batch_size=4, show_progress=False, shard=parse_shard("1/2"))
    with pytest.raises(MedisynError, match="embedder: 'pixel' there, 'phash' now"):
        build_index([train], out, "phash", batch_size=2, show_progress=False, shard=parse_shard("1/2"))


@pytest.mark.slow
def test_cli_shards_from_the_slurm_environment_and_merge(train, tmp_path):
    runner, out = CliRunner(), tmp_path / "idx"
    first = runner.invoke(
        app,
        ["index", "build", str(train), "--out", str(out), "--batch-size", "4", "--no-progress"],
        env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"},
    )
    assert first.exit_code == 0, first.output
    assert "shard 0/2 embedded 2 batches; 2 of 4 batches are done" in first.output
    merge = runner.invoke(app, ["index", "merge", str(out)])
    assert merge.exit_code == 2 and "shard 1/2: 2 batches" in merge.output
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "medisyn_cli",
            "index",
            "build",
            str(train),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--shard",
            "1/2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert second.returncode == 0, second.stderr
    assert load_index(out).meta["count"] == 12
