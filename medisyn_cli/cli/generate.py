"""`medisyn generate` and `medisyn merge`."""

from __future__ import annotations

from pathlib import Path

import typer

from medisyn_cli.cli.common import EXIT_MEMORISES, errors_as_exit_codes
from medisyn_cli.cli.options import config_from, json_option, option, progress_option
from medisyn_cli.cli.tables import Tables, column
from medisyn_cli.core.progress import console, results
from medisyn_cli.dataset.formats import format_option, parse_format_list
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.finish import merge_run
from medisyn_cli.generate.run import run_generate
from medisyn_cli.generate.slurm import SlurmOptions, submit_generate
from medisyn_cli.screening.checks import parse_check_list

PLAN_ROWS = 200  # classes a dry run lists (a table of 100k rows takes minutes to draw and cannot be read)


def generate(
    manifest: Path = option(GenerateConfig, "manifest", "--manifest", "-m"),
    n: int = option(GenerateConfig, "n", "--n"),
    out: Path | None = option(GenerateConfig, "out", "--out", "-o"),
    model: str | None = option(GenerateConfig, "model", "--model"),
    seed: int = option(GenerateConfig, "seed", "--seed"),
    format: str = option(GenerateConfig, "formats", "--format", to_cli=format_option),
    mark: bool = option(GenerateConfig, "mark", "--mark/--no-mark"),
    shard_size: int = option(GenerateConfig, "shard_size", "--shard-size"),
    device: str = option(GenerateConfig, "device", "--device"),
    dtype: str = option(GenerateConfig, "dtype", "--dtype"),
    scheduler: str = option(GenerateConfig, "scheduler", "--scheduler"),
    steps: int | None = option(GenerateConfig, "steps", "--steps"),
    guidance: float | None = option(GenerateConfig, "guidance", "--guidance"),
    height: int | None = option(GenerateConfig, "height", "--height"),
    width: int | None = option(GenerateConfig, "width", "--width"),
    batch_size: int | None = option(GenerateConfig, "batch_size", "--batch-size"),
    threads: int | None = option(GenerateConfig, "threads", "--threads"),
    compile: bool = option(GenerateConfig, "compile", "--compile"),
    channels_last: bool = option(GenerateConfig, "channels_last", "--channels-last"),
    vae_slicing: bool = option(GenerateConfig, "vae_slicing", "--vae-slicing"),
    vae_tiling: bool = option(GenerateConfig, "vae_tiling", "--vae-tiling"),
    attention_slicing: bool = option(GenerateConfig, "attention_slicing", "--attention-slicing"),
    offload: str = option(GenerateConfig, "offload", "--offload"),
    lora: list[str] = option(GenerateConfig, "loras", "--lora", to_cli=list),
    fuse_lora: bool = option(GenerateConfig, "fuse_lora", "--fuse-lora"),
    force_lora: bool = option(GenerateConfig, "force_lora", "--force-lora"),
    prompt_cache: bool = option(GenerateConfig, "cache_prompts", "--prompt-cache/--no-prompt-cache"),
    overlap: bool | None = option(GenerateConfig, "overlap", "--overlap/--no-overlap"),
    index: Path | None = option(GenerateConfig, "index", "--index"),
    threshold: float | None = option(GenerateConfig, "threshold", "--threshold"),
    max_attempts: int = option(GenerateConfig, "max_attempts", "--max-attempts"),
    judge: Path | None = option(GenerateConfig, "judge", "--judge"),
    min_label_score: float | None = option(GenerateConfig, "min_label_score", "--min-label-score"),
    check: str = option(GenerateConfig, "checks", "--check", to_cli=",".join),
    shard: str | None = option(GenerateConfig, "shard", "--shard"),
    resume: bool = option(GenerateConfig, "resume", "--resume"),
    overwrite: bool = option(GenerateConfig, "overwrite", "--overwrite"),
    slurm_array: int | None = typer.Option(
        None,
        "--slurm-array",
        help="Submit as a SLURM array of N tasks (one shard each) instead of running here.",
    ),
    partition: str | None = option(SlurmOptions, "partition", "--partition", help="SLURM partition."),
    gpus_per_task: int = option(
        SlurmOptions, "gpus_per_task", "--gpus-per-task", help="GPUs per array task; one process per GPU."
    ),
    cpus_per_task: int | None = option(
        SlurmOptions,
        "cpus_per_task",
        "--cpus-per-task",
        help="CPU cores per array task (default: the partition's).",
    ),
    time_limit: str | None = option(
        SlurmOptions, "time", "--time", help="SLURM walltime per task, e.g. 04:00:00."
    ),
    mem: str | None = option(SlurmOptions, "mem", "--mem", help="SLURM memory per task, e.g. 32G."),
    sbatch: list[str] = option(
        SlurmOptions,
        "extra",
        "--sbatch",
        to_cli=list,
        help="Extra sbatch option, e.g. --sbatch=--account=abc.",
    ),
    dry_run: bool = option(GenerateConfig, "dry_run", "--dry-run"),
    progress: bool = progress_option(run_generate),
    json_path: str | None = json_option(),
) -> None:
    """Generate a balanced, labelled synthetic dataset from a prompt manifest.

    Writes the dataset and OUT/run.json (counts, options, screening); --json adds the summary table
    (with --dry-run: the plan).

    Example: medisyn generate --manifest prompts/mini_dermoscopy.csv --n 60 --out derm-synth
    """
    with errors_as_exit_codes():
        cfg = config_from(
            generate,
            GenerateConfig,
            locals(),
            formats=parse_format_list(format),
            checks=parse_check_list(check),
        )
        if slurm_array is not None:
            slurm = SlurmOptions(
                slurm_array, partition, gpus_per_task, cpus_per_task, time_limit, mem, extra=tuple(sbatch)
            )
            return _submit(cfg, slurm)
        summary = run_generate(cfg, show_progress=progress)
    with Tables("generate", json_path) as tables:
        _print_summary(tables, summary)
    for label, reason in summary.ended.items():
        console.print(
            f"[red]error:[/red] class '{label}' ended short of its quota: {reason}",
            highlight=False,
            soft_wrap=True,
        )
    if summary.ended:
        raise typer.Exit(EXIT_MEMORISES)


def _submit(cfg, slurm) -> None:

    script, job, out = submit_generate(cfg, slurm)
    if job is None:
        results.print(script, highlight=False, markup=False, soft_wrap=True)
        return
    results.print(
        f"submitted job array {job} ({slurm.array} tasks) -> {out}\n"
        f"  script: {out / 'slurm' / 'generate.sbatch'}\n"
        f"  watch:  squeue -j {job}; tail -f {out / 'slurm'}/{job}_*.out\n"
        f"  check:  medisyn merge {out}   (the last task consolidates; merge reports what is missing)",
        highlight=False,
        markup=False,
    )


def _print_summary(tables: Tables, summary) -> None:
    if summary.note:
        console.print(summary.note, highlight=False, soft_wrap=True)
    if not summary.complete:
        return
    if summary.dry_run:
        _print_plan(tables, summary)
        return
    columns = [column("label"), column("planned"), column("written"), column("regenerated")]
    if summary.screened:
        columns.append(column("near-copies replaced", "rejected"))
    rows = [
        {
            "label": label,
            "planned": count.planned,
            "written": count.written,
            "regenerated": count.regenerated,
            "rejected": count.rejected,
            "ended": count.ended,
        }
        for label, count in summary.counts.items()
    ]
    tables.values.update(seconds=summary.seconds, ended=dict(summary.ended))
    tables.show(
        "classes",
        f"{summary.out} ({summary.seconds:.0f} s)",
        columns,
        rows,
        style=lambda row: "red" if row["ended"] else None,
    )
    judged = (summary.run or {}).get("judge") or {}
    if judged.get("kept") is not None:
        console.print(
            f"label check: {judged['label_rejected']} images not recognised as their class were replaced; "
            f"yield {judged['yield']:.2f} (kept / generated)",
            highlight=False,
        )


def _print_plan(tables: Tables, summary) -> None:
    """--dry-run: images per class (the first PLAN_ROWS classes, then one row for the rest) and the first jobs."""
    weights, counts = summary.manifest.weights(), list(summary.counts.items())
    rows = [
        {
            "label": label,
            "images": count.planned,
            "variants": len(summary.manifest.variants(label)),
            "weight": weights[label],
        }
        for label, count in counts[:PLAN_ROWS]
    ]
    if len(counts) > PLAN_ROWS:
        rest = counts[PLAN_ROWS:]
        rows.append(
            {
                "label": f"... {len(rest)} more classes",
                "images": sum(c.planned for _, c in rest),
                "variants": None,
                "weight": None,
            }
        )
    tables.show(
        "plan",
        f"plan: {sum(c.planned for c in summary.counts.values())} images -> {summary.out}",
        [
            column("label"),
            column("images"),
            column("variants", fmt=lambda v: "" if v is None else str(v)),
            column("weight", fmt=lambda v: "" if v is None else f"{v:g}"),
        ],
        rows,
    )
    tables.show(
        "first_planned_images",
        "first planned images",
        [column("id"), column("seed"), column("prompt")],
        [{"id": job.id, "seed": job.seed, "prompt": job.prompt} for job in summary.preview],
    )


def merge(
    out: Path = typer.Argument(..., help="Output folder of a sharded or interrupted generate run."),
    json_path: str | None = json_option(),
) -> None:
    """Check that every planned image of a sharded run is there once, and consolidate the dataset.

    Example: medisyn merge derm-synth
    """
    with errors_as_exit_codes():
        summary = merge_run(out)
    with Tables("merge", json_path) as tables:
        _print_summary(tables, summary)
