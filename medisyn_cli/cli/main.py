"""The `medisyn` command: parse options, call the Python API, print a summary. Errors exit 2."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from medisyn_cli.core.errors import MedisynError, Interrupted
from medisyn_cli.core.progress import console, results

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Make synthetic medical image datasets with text-guided latent diffusion.\n\n"
         "Example: medisyn generate --manifest prompts/mini_dermoscopy.csv --n 60 --out derm-synth",
)
state = {"debug": False}
EXIT_MEMORISES = 3  # a class kept producing near-copies of training images


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    state["debug"] = debug


@contextmanager
def errors_as_exit_codes():
    """MedisynError -> one line, exit 2; anything unexpected -> one line, exit 1; --debug shows tracebacks."""
    try:
        yield
    except MedisynError as exc:
        if state["debug"]:
            raise
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except Interrupted as exc:
        console.print(f"interrupted: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted: Ctrl-C", highlight=False)
        raise typer.Exit(130)
    except Exception as exc:
        if state["debug"]:
            raise
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
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
    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate
    from medisyn_cli.generate.writers import parse_formats

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
            from medisyn_cli.generate.slurm import SlurmOptions

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
    from medisyn_cli.generate.slurm import submit_generate

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


@app.command()
def train(
    data: list[Path] = typer.Argument(..., help="ImageFolder(s) with metadata.csv captions, Parquet, label folders, "
                                                "or a folder holding several such datasets."),
    out: Path = typer.Option(..., "--out", help="Folder for the trained diffusers pipeline."),
    base: Optional[str] = typer.Option(None, "--base", help="Pipeline to fine-tune: folder, file or hub id."),
    config: str = typer.Option("mini", "--config", help="Named architecture when training from scratch."),
    resolution: int = typer.Option(64, "--resolution"),
    steps: int = typer.Option(2000, "--steps", help="Diffusion (UNet) optimisation steps."),
    vae_steps: int = typer.Option(600, "--vae-steps", help="Autoencoder steps (from scratch only)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(5e-4, "--lr"),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto, no, fp16 or bf16."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    ema: bool = typer.Option(True, "--ema/--no-ema"),
    checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
    caption_dropout: float = typer.Option(0.1, "--caption-dropout"),
    balance: float = typer.Option(0.0, "--balance", help="Sampling by caption: 0 uniform over images, 1 every "
                                  "caption (class) equally often; between: 1/count**balance."),
    caption_template: str = typer.Option("{label}", "--caption-template",
                                         help="Caption for data without captions, e.g. 'chest x-ray, {label}'."),
    validation_prompts: Optional[Path] = typer.Option(None, "--validation-prompts", help="Text file or manifest."),
    validate_every: int = typer.Option(500, "--validate-every"),
    train_text_encoder: Optional[bool] = typer.Option(None, "--train-text-encoder/--freeze-text-encoder",
                                                      help="Default: trained from scratch, frozen when fine-tuning."),
    holdout: float = typer.Option(0.0, "--holdout", help="Fraction of images held out (by file-name hash)."),
    save_dtype: str = typer.Option("fp32", "--save-dtype", help="fp32 or fp16 weights."),
    seed: int = typer.Option(0, "--seed"),
    lora: Optional[int] = typer.Option(None, "--lora", help="Train a LoRA adapter of this rank on --base instead "
                                       "of the whole UNet; --out gets pytorch_lora_weights.safetensors."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default: the rank)."),
    lora_targets: str = typer.Option("unet", "--lora-targets", help="unet or unet+text."),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout"),
) -> None:
    """Train or fine-tune a text-to-image model and save a diffusers pipeline folder.

    Example: medisyn train ../shared/data --out my-model --steps 2000 --holdout 0.2
    """
    from medisyn_cli.train.loop import TrainConfig, train as run_train

    with errors_as_exit_codes():
        cfg = TrainConfig(data=tuple(map(str, data)), out=str(out), base=base, config=config,
                          resolution=resolution, steps=steps, vae_steps=vae_steps, batch_size=batch_size, lr=lr,
                          mixed_precision=mixed_precision, grad_accum=grad_accum, ema=ema,
                          checkpoint_every=checkpoint_every, resume=resume, caption_dropout=caption_dropout,
                          balance=balance,
                          caption_template=caption_template,
                          validation_prompts=str(validation_prompts) if validation_prompts else None,
                          validate_every=validate_every, train_text_encoder=train_text_encoder,
                          holdout=holdout, save_dtype=save_dtype, seed=seed, lora=lora, lora_alpha=lora_alpha,
                          lora_targets=lora_targets, lora_dropout=lora_dropout)
        result = run_train(cfg)
    table = Table(title=f"trained {'adapter' if lora else 'model'} in {result.model_dir}")
    for name in ("steps", "images", "final_loss", "vae_psnr", "seconds"):
        table.add_column(name)
    psnr = "-" if result.vae_psnr is None else f"{result.vae_psnr:.1f} dB"
    table.add_row(str(result.steps), str(result.images), f"{result.final_loss:.4f}", psnr, f"{result.seconds:.0f}")
    results.print(table)
    for key, error in result.skipped:
        console.print(f"skipped {key}: {error}", highlight=False)


@app.command()
def screen(
    dataset: Path = typer.Argument(..., help="A medisyn output folder, a Parquet dataset, an ImageFolder or any "
                                             "folder of images."),
    index: Path = typer.Option(..., "--index", help="Training-image index (medisyn index build)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Near-copy threshold (default: the "
                                                                      "index's calibrated one)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Folder for screen.parquet/.csv/.json and "
                                                               "report.html (default: DATASET/screen for a medisyn "
                                                               "output, else ./<name>-screen)."),
    keep_out: Optional[Path] = typer.Option(None, "--keep-out", help="Write a copy of the dataset without the "
                                                                    "near-copies here."),
    fail_on_copies: bool = typer.Option(False, "--fail-on-copies", help="Exit 1 if any near-copy is found."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="Check that the index was built with this "
                                                                   "embedder."),
    batch_size: int = typer.Option(64, "--batch-size"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Audit a dataset: the nearest training image of every image, near-copies flagged, an HTML report.

    Example: medisyn screen derm-synth --index train-index --fail-on-copies
    """
    from medisyn_cli.screening.audit import screen_dataset

    with errors_as_exit_codes():
        summary = screen_dataset(dataset, index, threshold, report, keep_out, embedder, batch_size,
                                 show_progress=progress)
    table = Table(title=f"screened {summary.dataset} against {summary.index} (threshold {summary.threshold:g})")
    for name in ("label", "screened", "near-copies"):
        table.add_column(name)
    for label, (n, copies) in summary.per_label.items():
        table.add_row(label, str(n), str(copies), style="red" if copies else None)
    table.add_row("all", str(summary.screened), str(summary.near_copies), style="bold")
    results.print(table)
    if summary.errors:
        console.print(f"{summary.errors} unreadable images (rows with an error in screen.csv)", highlight=False)
    console.print(f"report: {summary.report_dir / 'report.html'}"
                  + (f"; copy without near-copies: {summary.kept_out}" if summary.kept_out else ""), highlight=False)
    if fail_on_copies and (summary.near_copies or summary.errors):
        if summary.errors:
            console.print(f"--fail-on-copies: {summary.errors} unreadable images count as failures (they could "
                          f"not be shown not to be copies)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def merge(out: Path = typer.Argument(..., help="Output folder of a sharded or interrupted generate run.")) -> None:
    """Check that every planned image of a sharded run is there once, and consolidate the dataset.

    Example: medisyn merge derm-synth
    """
    from medisyn_cli.generate.run import merge_run

    with errors_as_exit_codes():
        summary = merge_run(out)
    _print_summary(summary)


from medisyn_cli.cli.evaluate import evaluate_app, report_command  # noqa: E402  (after errors_as_exit_codes, which it uses)
from medisyn_cli.cli.study import study_app  # noqa: E402
from medisyn_cli.cli.judge import judge_app  # noqa: E402  (also adds `evaluate alignment`)

app.add_typer(evaluate_app, name="evaluate")
app.add_typer(judge_app, name="judge")
app.add_typer(study_app, name="study")
app.command("report")(report_command)

index_app = typer.Typer(no_args_is_help=True, help="Indexes of training images, for near-copy screening.")
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    sources: list[Path] = typer.Argument(..., help="Training images: image folders (recursive), ImageFolders with "
                                                   "metadata.csv, Parquet datasets with an image column."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write."),
    embedder: str = typer.Option("pixel", "--embedder", help="pixel (default, no weights), phash, clip:<model> "
                                                             "or hf:<model>."),
    index_type: str = typer.Option("auto", "--index-type", help="auto, flat (exact), hnsw or ivfpq."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget for the index, e.g. 4GB "
                                                                       "(auto picks a type that fits)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images decoded and embedded at a time."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index folder."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: embed shard K (from 0) of N into --out; the "
                                                             "last shard builds the index (default: from "
                                                             "SLURM_ARRAY_TASK_ID, RANK...)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    target_fpr: float = typer.Option(0.005, "--target-fpr", help="False-positive rate the near-copy threshold is "
                                                                 "calibrated for on the index's own images "
                                                                 "(0 = the embedder's default threshold)."),
    regions: Optional[bool] = typer.Option(None, "--regions/--no-regions", help="Index 16 overlapping tiles of "
                                                                                "every image too, so crops and "
                                                                                "partial copies match (default: up "
                                                                                "to 20,000 images; screening is "
                                                                                "2.4x slower with them: "
                                                                                "benchmarks/screen_speed.py)."),
) -> None:
    """Embed training images and build the FAISS index that `generate --index` and `screen` search.

    Example: medisyn index build ../shared/data --out train-index
    """
    import os

    from medisyn_cli.screening.index import build_index
    from medisyn_cli.core.shards import resolve_shard

    with errors_as_exit_codes():
        place = resolve_shard(shard, os.environ)
        meta = build_index(sources, out, embedder, index_type, max_memory, batch_size, progress, overwrite, place,
                           target_fpr or None, regions)
    _print_index(out, meta)


@index_app.command("merge")
def index_merge(out: Path = typer.Argument(..., help="Folder of a sharded `index build`.")) -> None:
    """Build the index from every shard's embeddings, or name the shards that are not done."""
    from medisyn_cli.screening.index_shards import merge_shards

    with errors_as_exit_codes():
        meta = merge_shards(out)
    _print_index(out, meta)


def _print_calibration(calibration: dict) -> None:
    """The threshold calibration of `index build`: the chosen threshold and the measured curve around it."""
    if "curve" not in calibration:
        if calibration.get("skipped"):
            console.print(f"threshold not calibrated: {calibration['skipped']}", highlight=False)
        return
    console.print(f"threshold {calibration['threshold']:g}: calibrated for {calibration['target_fpr']:.2%} false "
                  f"positives ({calibration['negatives']} of its own images and changed copies against the other "
                  f"training images, never below {calibration['floor']:g}; {calibration['seconds']:.0f} s)",
                  highlight=False, soft_wrap=True)
    table = Table(title="measured on the index's own images")
    for name in ("threshold", "false positives", "copies caught"):
        table.add_column(name)
    for row in calibration["curve"]:
        if abs(row["threshold"] - calibration["threshold"]) <= 0.0151:
            table.add_row(f"{row['threshold']:g}", f"{row['fpr']:.1%}", f"{row['tpr']:.1%}")
    results.print(table)


def _print_index(out: Path, meta: dict) -> None:
    if meta.get("partial"):
        console.print(f"shard {meta['shard']} embedded {meta['made']} batches; {meta['done']} of {meta['batches']} "
                      f"batches are done. The last shard to finish builds the index (or run: medisyn index merge "
                      f"{out})", highlight=False, soft_wrap=True)
        return
    if meta.get("note"):
        console.print(meta["note"], highlight=False)
    index, skipped = meta["index"], meta["skipped"]
    table = Table(title=f"index {out} ({meta['seconds']:.0f} s)")
    for name in ("images", "skipped", "embedder", "index", "recall@1", "threshold"):
        table.add_column(name)
    recall = "exact" if index["recall_at_1"] is None else f"{index['recall_at_1']:.3f}"
    table.add_row(str(meta["count"]), str(skipped["count"]), meta["embedder"]["spec"], index["type"], recall,
                  f"{meta['threshold']:g}")
    results.print(table)
    nearest = meta["nearest_neighbour_similarity"]
    if nearest["percentiles"]:
        spread = Table(title=f"similarity of training images to their nearest other training image "
                             f"({nearest['sample']} sampled)")
        shown = {k: v for k, v in nearest["percentiles"].items() if k in ("p1", "p5", "p50", "p95", "p99", "p100")}
        for name in shown:
            spread.add_column(name.replace("p100", "max"))
        spread.add_column(">= threshold")
        spread.add_row(*(f"{v:.3f}" for v in shown.values()), f"{nearest['at_or_above_threshold']:.1%}")
        results.print(spread)
    _print_calibration(meta.get("screening", {}).get("calibration", {}))
    for item in skipped["files"][:20]:
        console.print(f"skipped {item['key']}: {item['reason']}", highlight=False, soft_wrap=True)
    if skipped["count"] > 20:
        console.print(f"... and {skipped['count'] - 20} more (all listed in {out / 'index.json'})", highlight=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
