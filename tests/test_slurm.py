"""SLURM submission: the sbatch script, and a real 4-task array on a throwaway single-node cluster."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.slurm import SlurmOptions, sbatch_script

MANIFEST = "label,prompt\nmelanoma,dermoscopy image of melanoma\nnevus,dermoscopy image of benign melanocytic nevus\n"


@pytest.mark.slow
def test_sbatch_script_runs_one_resumable_shard_per_task_and_requeues_on_75(tmp_path):
    (tmp_path / "m.csv").write_text(MANIFEST)
    config = GenerateConfig(manifest=str(tmp_path / "m.csv"), n=40, out=str(tmp_path / "o"), seed=3)
    script = sbatch_script(
        config, tmp_path / "o", SlurmOptions(8, "gpu", 4, 16, "02:00:00", "64G", extra=("--qos=x",))
    )
    lines = script.splitlines()
    for line in [
        "#SBATCH --array=0-7",
        "#SBATCH --ntasks=4",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=02:00:00",
        "#SBATCH --mem=64G",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --qos=x",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        f"#SBATCH --output={tmp_path}/o/slurm/%A_%a.out",
    ]:
        assert line in lines
    srun = next(line for line in lines if line.startswith("srun"))
    assert f"--manifest {tmp_path}/m.csv" in srun and "--seed 3" in srun and "--resume" in srun
    assert "--shard" not in srun  # each task reads its shard from SLURM's environment
    assert 'if [ "$rc" -eq 75 ]; then' in script and 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_' in script


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path):
    (tmp_path / "m.csv").write_text(MANIFEST)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--n",
            "8",
            "--out",
            str(tmp_path / "o"),
            "--slurm-array",
            "3",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("#!/bin/bash") and "#SBATCH --array=0-2" in result.output
    assert not (tmp_path / "o").exists()
    bad = CliRunner().invoke(
        app,
        ["generate", "--manifest", str(tmp_path / "m.csv"), "--n", "8", "--slurm-array", "0", "--dry-run"],
    )
    assert bad.exit_code == 2 and "--slurm-array: must be at least 1" in bad.output


@pytest.mark.slow
def test_a_4_task_array_on_a_real_slurm_equals_a_single_process_run(slurm_cluster, tiny_model, tmp_path):
    import shutil
    import sys

    from medisyn_cli.generate.run import run_generate

    (tmp_path / "m.csv").write_text(MANIFEST)
    single = run_generate(
        GenerateConfig(
            manifest=str(tmp_path / "m.csv"),
            n=8,
            out=str(tmp_path / "one"),
            model=str(tiny_model),
            steps=2,
            batch_size=2,
        ),
        show_progress=False,
    ).out
    exe = shutil.which("medisyn") or str(Path(sys.executable).with_name("medisyn"))
    proc = subprocess.run(
        [
            exe,
            "generate",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--n",
            "8",
            "--out",
            str(tmp_path / "array"),
            "--model",
            str(tiny_model),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--slurm-array",
            "4",
        ],
        capture_output=True,
        text=True,
        env=slurm_cluster.env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job = int(proc.stdout.split("submitted job array ")[1].split()[0])
    states = slurm_cluster.wait(job, timeout=400)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "array" / "slurm").glob("*.out")))
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED", 3: "COMPLETED"}, logs
    merged = CliRunner().invoke(app, ["merge", str(tmp_path / "array")])
    assert merged.exit_code == 0, merged.output
    frame = lambda out: pd.read_parquet(out / "parquet")[["id", "seed", "image"]]  # noqa: E731
    array, one = frame(tmp_path / "array"), frame(single)
    assert list(array["id"]) == list(one["id"]) and list(array["seed"]) == list(one["seed"])
    assert [i["bytes"] for i in array["image"]] == [i["bytes"] for i in one["image"]]
    run = json.loads((tmp_path / "array" / "run.json").read_text())
    assert sum(c["written"] for c in run["classes"].values()) == 8
    assert len(list((tmp_path / "array" / "slurm").glob(f"{job}_*.out"))) == 4
