"""`medisyn generate` and `medisyn merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from medisyn_cli.cli.common import EXIT_MEMORISES, errors_as_exit_codes
from medisyn_cli.core.progress import console, results
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import merge_run, run_generate
from medisyn_cli.generate.slurm import SlurmOptions, submit_generate
from medisyn_cli.generate.writers import parse_formats


def generate(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Prompt manifest (.csv or .jsonl): label, prompt, "
                                                              "optional negative_prompt, weight, mode."),
    n: int = typer.Option(..., "--n", help="Total number of images, shared by the classes by weight."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: ./<manifest name>)."),
    model: Optional[str] = typer.Option(None, "--model", help="Diffusers folder, .safetensors/.ckpt file or hub id "
                                                             "(default: the bundled medisyn-mini model)."),
    seed: int = typer.Option(0, "--seed", help="Run seed; each image's seed derives from it, its class and index."),
    format: str = typer.Option("both", "--format", help="parquet, imagefolder or both."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16/bf16 on GPU, fp32 on CPU), fp32, fp16, bf16."),
    scheduler: str = typer.Option("dpm++", "--scheduler", help="dpm++, ddim, euler, euler-a, unipc, pndm, ddpm."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: the model's, else 25)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    height: Optional[int] = typer.Option(None, "--height"),
    width: Optional[int] = typer.Option(None, "--width"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per model call (default: 16 on CPU "
                                                                     "up to 128 px, fewer for larger images; the most "
                                                                     "that fit in free memory on CUDA)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the model (default: torch's; "
                                          "a resumed run or another shard uses the run's own: pixels depend on it)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet (slow first batch; faster on GPUs)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory layout (GPUs)."),
    vae_slicing: bool = typer.Option(False, "--vae-slicing", help="Decode one image at a time (less memory)."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="Decode in tiles (large images, less memory)."),
    lora: list[str] = typer.Option([], "--lora", help="LoRA adapter (folder or .safetensors) to apply, PATH[:SCALE] "
                                   "(scale default 1); repeat for several (medisyn train --lora)."),
    fuse_lora: bool = typer.Option(False, "--fuse-lora", help="Fuse the adapters into the weights once (faster)."),
    force_lora: bool = typer.Option(False, "--force-lora", help="Load an adapter whose adapter.json names another "
                                    "base model than --model."),
    prompt_cache: bool = typer.Option(True, "--prompt-cache/--no-prompt-cache",
                                      help="Encode each distinct prompt once per run."),
    overlap: Optional[bool] = typer.Option(None, "--overlap/--no-overlap", help="Screen and write a batch while "
                                           "the model makes the next (default: on GPUs, not on CPU, whose cores the "
                                           "model already uses)."),
    index: Optional[Path] = typer.Option(None, "--index", help="Training-image index (medisyn index build): reject "
                                                             "near-copies of training images and replace them."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Near-copy similarity threshold (default: "
                                                                      "the index's calibrated one)."),
    max_attempts: int = typer.Option(10, "--max-attempts", help="Near-copies in a row for one image that end its "
                                                               "class (the model memorises it)."),
    judge: Optional[Path] = typer.Option(None, "--judge", help="Label check: a judge folder (medisyn judge build); "
                                         "images it does not recognise as their class are replaced."),
    min_label_score: Optional[float] = typer.Option(None, "--min-label-score", help="Reject images whose "
                                                    "own-label probability under --judge is below (default 0.5)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: make shard K (from 0) of N of the run into the "
                                                             "same --out (default: from SLURM_ARRAY_TASK_ID, RANK...)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (same options)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing medisyn output folder."),
    slurm_array: Optional[int] = typer.Option(None, "--slurm-array", help="Submit as a SLURM array of N tasks "
                                                                        "(one shard each) instead of running here."),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition."),
    gpus_per_task: int = typer.Option(0, "--gpus-per-task", help="GPUs per array task; one process per GPU."),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task"),
    time_limit: Optional[str] = typer.Option(None, "--time", help="SLURM walltime per task, e.g. 04:00:00."),
    mem: Optional[str] = typer.Option(None, "--mem", help="SLURM memory per task, e.g. 32G."),
    sbatch: list[str] = typer.Option([], "--sbatch", help="Extra sbatch option, e.g. --sbatch=--account=abc."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (classes, prompts, seeds) or, with "
                                                          "--slurm-array, the sbatch script; load no model."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Generate a balanced, labelled synthetic dataset from a prompt manifest.

    Example: medisyn generate --manifest prompts/mini_dermoscopy.csv --n 60 --out derm-synth
    """
    with errors_as_exit_codes():
        cfg = GenerateConfig(manifest=str(manifest), n=n, out=str(out) if out else None, model=model, seed=seed,
                             formats=parse_formats(format), device=device, dtype=dtype, scheduler=scheduler,
                             steps=steps, guidance=guidance, height=height, width=width, batch_size=batch_size, threads=threads,
                             index=str(index) if index else None, threshold=threshold,
                             max_attempts=max_attempts, shard=shard, resume=resume, overwrite=overwrite,
                             judge=str(judge) if judge else None, min_label_score=min_label_score,
                             dry_run=dry_run, cache_prompts=prompt_cache, overlap=overlap,
                             channels_last=channels_last, compile=compile, vae_slicing=vae_slicing,
                             vae_tiling=vae_tiling, loras=tuple(lora), fuse_lora=fuse_lora, force_lora=force_lora)
        if slurm_array is not None:

            slurm = SlurmOptions(slurm_array, partition, gpus_per_task, cpus_per_task, time_limit, mem,
                                 extra=tuple(sbatch))
            return _submit(cfg, slurm)
        summary = run_generate(cfg, show_progress=progress)
    _print_summary(summary)
    for label, reason in summary.ended.items():
        console.print(f"[red]error:[/red] class '{label}' ended short of its quota: {reason}", highlight=False,
                      soft_wrap=True)
    if summary.ended:
        raise typer.Exit(EXIT_MEMORISES)


def _submit(cfg, slurm) -> None:

    script, job, out = submit_generate(cfg, slurm)
    if job is None:
        results.print(script, highlight=False, markup=False, soft_wrap=True)
        return
    results.print(f"submitted job array {job} ({slurm.array} tasks) -> {out}\n"
                  f"  script: {out / 'slurm' / 'generate.sbatch'}\n"
                  f"  watch:  squeue -j {job}; tail -f {out / 'slurm'}/{job}_*.out\n"
                  f"  check:  medisyn merge {out}   (the last task consolidates; merge reports what is missing)",
                  highlight=False, markup=False)


def _print_summary(summary) -> None:
    if summary.note:
        console.print(summary.note, highlight=False, soft_wrap=True)
    if not summary.complete:
        return
    if summary.dry_run:
        table = Table(title=f"plan: {sum(c.planned for c in summary.counts.values())} images -> {summary.out}")
        for name in ("label", "images", "variants", "weight"):
            table.add_column(name)
        for label, count in summary.counts.items():
            table.add_row(label, str(count.planned), str(len(summary.manifest.variants(label))),
                          f"{summary.manifest.weights()[label]:g}")
        results.print(table)
        jobs = Table(title="first planned images")
        for name in ("id", "seed", "prompt"):
            jobs.add_column(name)
        for job in summary.preview:
            jobs.add_row(job.id, str(job.seed), job.prompt)
        results.print(jobs)
        return
    table = Table(title=f"{summary.out} ({summary.seconds:.0f} s)")
    columns = ("label", "planned", "written", "regenerated") + (("near-copies replaced",) if summary.screened else ())
    for name in columns:
        table.add_column(name)
    for label, count in summary.counts.items():
        cells = [label, str(count.planned), str(count.written), str(count.regenerated), str(count.rejected)]
        table.add_row(*cells[:len(columns)], style="red" if count.ended else None)
    results.print(table)
    judged = (summary.run or {}).get("judge") or {}
    if judged.get("kept") is not None:
        console.print(f"label check: {judged['label_rejected']} images not recognised as their class were replaced; "
                      f"yield {judged['yield']:.2f} (kept / generated)", highlight=False)


def merge(out: Path = typer.Argument(..., help="Output folder of a sharded or interrupted generate run.")) -> None:
    """Check that every planned image of a sharded run is there once, and consolidate the dataset.

    Example: medisyn merge derm-synth
    """
    with errors_as_exit_codes():
        summary = merge_run(out)
    _print_summary(summary)
