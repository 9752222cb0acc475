"""Submit a generate run as a SLURM job array: one sbatch script, one shard per array task (or per GPU).

Every task runs `generate ... --resume` into the same --out and finds its shard in SLURM's environment. On
preemption (SIGTERM) or the walltime warning (--signal=B:USR1), medisyn finishes the batch in flight and exits
75; the script then requeues the task, which resumes where it stopped. The last task to finish consolidates.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.outdir import claim_marker, new_run_id
from medisyn_cli.core.shards import Shard
from medisyn_cli.generate.claim import out_state
from medisyn_cli.generate.config import GenerateConfig, command_line
from medisyn_cli.generate.run import default_out, open_index, plan_run
from medisyn_cli.generate.validate import check_options


@dataclass(frozen=True)
class SlurmOptions:
    """How to submit: array size and the resources of each array task."""

    array: int
    partition: str | None = None
    gpus_per_task: int = 0  # GPUs per array task, one medisyn process per GPU
    cpus_per_task: int | None = None
    time: str | None = None
    mem: str | None = None
    signal_seconds: int = 120  # warning before the walltime: finish the batch and requeue
    extra: tuple[str, ...] = ()  # further sbatch options, e.g. --account=abc


def check_slurm_options(options: SlurmOptions) -> None:
    """One-line errors for impossible resources."""
    if options.array < 1:
        raise MedisynError(f"--slurm-array: must be at least 1, got {options.array}")
    if options.gpus_per_task < 0:
        raise MedisynError(f"--gpus-per-task: must be 0 or more, got {options.gpus_per_task}")


def absolute(config: GenerateConfig, out: Path) -> GenerateConfig:
    """The config with every local path absolute, since the job may start in another folder."""

    def local(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value and Path(value).exists() else value

    return replace(
        config,
        manifest=str(Path(config.manifest).resolve()),
        out=str(out.resolve()),
        model=local(config.model),
        index=local(config.index),
        shard=None,
        resume=True,
        dry_run=False,
        overwrite=False,
    )


def sbatch_script(config: GenerateConfig, out: Path, options: SlurmOptions) -> str:
    """The sbatch array script for a generate run."""
    config = absolute(config, out)
    logs = Path(config.out) / "slurm"
    tasks = max(1, options.gpus_per_task)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=medisyn-{Path(config.out).name}",
        f"#SBATCH --array=0-{options.array - 1}",
        f"#SBATCH --output={logs}/%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{options.signal_seconds}",
        "#SBATCH --nodes=1",
        f"#SBATCH --ntasks={tasks}",
    ]
    lines += ["#SBATCH --gpus-per-task=1"] if options.gpus_per_task else []
    lines += [f"#SBATCH --cpus-per-task={options.cpus_per_task}"] if options.cpus_per_task else []
    lines += [f"#SBATCH --partition={options.partition}"] if options.partition else []
    lines += [f"#SBATCH --time={options.time}"] if options.time else []
    lines += [f"#SBATCH --mem={options.mem}"] if options.mem else []
    lines += [f"#SBATCH {extra}" for extra in options.extra]
    program = f"{shlex.quote(sys.executable)} -m medisyn_cli"
    command = command_line(config, program) + " --no-progress"
    lines += [
        "",
        "# medisyn reads its shard from SLURM_ARRAY_TASK_ID/COUNT and SLURM_PROCID/NTASKS",
        f"cd {shlex.quote(str(Path.cwd()))}",
        f"srun --kill-on-bad-exit=0 {command} &",
        "child=$!",
        "trap 'kill -USR1 $child 2>/dev/null' USR1 TERM",
        "wait $child; rc=$?",
        "while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done  # a trap ends `wait` early",
        'if [ "$rc" -eq 75 ]; then',
        '  echo "medisyn: interrupted, requeueing ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "fi",
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


def write_script(config: GenerateConfig, out: Path, options: SlurmOptions) -> Path:
    """OUT/slurm/generate.sbatch (the logs go beside it)."""
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "generate.sbatch"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(sbatch_script(config, out, options))
    tmp.replace(path)
    return path


def submit(script: Path, env: dict | None = None) -> str:
    """sbatch the script; the job id, or a one-line error with sbatch's own message."""
    try:
        proc = subprocess.run(
            ["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env, timeout=120
        )
    except FileNotFoundError as exc:
        raise MedisynError(
            f"sbatch not found: run this on a SLURM login node, or use --dry-run to see the script ({script})"
        ) from exc
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise MedisynError(f"sbatch {script} failed: {message[-1] if message else proc.returncode}")
    return proc.stdout.strip().split(";")[0]


def submit_generate(
    config: GenerateConfig, options: SlurmOptions, env: dict | None = None
) -> tuple[str, str | None, Path]:
    """Check the run like `generate` would, write the script and submit it: (script, job id or None, out)."""
    check_slurm_options(options)
    plan_run(config)
    check_options(config)
    open_index(config)
    out = Path(config.out) if config.out else default_out(config.manifest)
    if config.dry_run:
        return sbatch_script(config, out, options), None, out
    if out_state(out, replace(config, resume=True), Shard()) == "complete":
        raise MedisynError(f"--out {out}: this run is already complete")
    claim_marker(out, new_run_id())  # OUT/slurm/ makes the folder non-empty: mark it as this run's first
    script = write_script(config, out, options)
    return script.read_text(), submit(script, env), out
