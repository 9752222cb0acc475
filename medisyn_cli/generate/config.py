"""Defaults shared by the CLI and the Python API; saved into run.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from medisyn_cli.dataset.base import DEFAULT_SHARD_SIZE
from medisyn_cli.dataset.formats import DEFAULT_FORMATS, format_names, format_option
from medisyn_cli.screening.checks import check_names

FORMATS = DEFAULT_FORMATS


@dataclass(frozen=True)
class GenerateConfig:
    """Options of one `generate` run. None for model settings means: the model's own recommendation."""

    manifest: str = field(
        metadata={
            "help": "Prompt manifest (.csv or .jsonl): label, prompt, optional negative_prompt, weight, mode."
        }
    )
    n: int = field(metadata={"help": "Total number of images, shared by the classes by weight."})
    out: str | None = field(default=None, metadata={"help": "Output folder (default: ./<manifest name>)."})
    model: str | None = field(
        default=None,
        metadata={
            "help": "Diffusers folder, .safetensors/.ckpt file or hub id (default: the bundled medisyn-mini "
            "model)."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Run seed; each image's seed derives from it, its class and index."}
    )
    formats: tuple[str, ...] = field(
        default=FORMATS,
        metadata={
            "help": f"Comma-separated list of {', '.join(format_names())}; both = {','.join(FORMATS)}."
        },
    )
    mark: bool = field(
        default=True,
        metadata={
            "help": "Mark every PNG and Parquet row as synthetic (XMP with the IPTC digital source type); "
            "--no-mark is recorded in run.json and the card."
        },
    )
    shard_size: int = field(
        default=DEFAULT_SHARD_SIZE,
        metadata={"help": "Images per tar shard of the webdataset format (OUT/webdataset/shard-NNNNNN.tar)."},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps."})
    dtype: str = field(
        default="auto", metadata={"help": "auto (fp16/bf16 on GPU, fp32 on CPU), fp32, fp16, bf16."}
    )
    scheduler: str = field(
        default="dpm++", metadata={"help": "dpm++, ddim, euler, euler-a, unipc, pndm, ddpm."}
    )
    steps: int | None = field(
        default=None, metadata={"help": "Denoising steps (default: the model's, else 25)."}
    )
    guidance: float | None = field(default=None, metadata={"help": "Classifier-free guidance scale."})
    height: int | None = field(default=None, metadata={"help": "Image height in px (default: the model's)."})
    width: int | None = field(default=None, metadata={"help": "Image width in px (default: the model's)."})
    batch_size: int | None = field(
        default=None,
        metadata={  # speed.choose_batch_size
            "help": "Images per model call (default: 16 on CPU up to 128 px, fewer for larger images; the most "
            "that fit in free memory on CUDA)."
        },
    )
    threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for the model (default: torch's; a resumed run or another shard uses the "
            "run's own: pixels depend on it)."
        },
    )
    rows_per_part: int = 5000
    max_regenerate: int = 5
    index: str | None = field(
        default=None,
        metadata={
            "help": "Training-image index (medisyn index build): reject near-copies of training images and "
            "replace them."
        },
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": "Near-copy similarity threshold (default: the index's calibrated one)."},
    )
    max_attempts: int = field(
        default=10,
        metadata={"help": "Near-copies in a row for one image that end its class (the model memorises it)."},
    )
    judge: str | None = field(
        default=None,
        metadata={  # judge/screening.py
            "help": "Label check: a judge folder (medisyn judge build); images it does not recognise as their "
            "class are replaced."
        },
    )
    min_label_score: float | None = field(
        default=None,
        metadata={"help": "Reject images whose own-label probability under --judge is below (default 0.5)."},
    )
    checks: tuple[str, ...] = field(
        default=(),
        metadata={  # screening/checks.py: the registry, plug-ins included
            "help": "More image checks, comma-separated, run after --index's and --judge's (rejected images "
            f"are replaced): {', '.join(check_names())}."
        },
    )
    shard: str | None = field(
        default=None,
        metadata={
            "help": "K/N: make shard K (from 0) of N of the run into the same --out (default: from "
            "SLURM_ARRAY_TASK_ID, RANK...)."
        },
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue an interrupted run in --out (same options)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing medisyn output folder."})
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Print the plan (classes, prompts, seeds) or, with --slurm-array, the sbatch script; load "
            "no model."
        },
    )
    cache_prompts: bool = field(default=True, metadata={"help": "Encode each distinct prompt once per run."})
    overlap: bool | None = field(
        default=None,
        metadata={
            "help": "Screen and write a batch while the model makes the next (default: on GPUs, not on CPU, "
            "whose cores the model already uses)."
        },
    )
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory layout (GPUs)."})
    compile: bool = field(
        default=False, metadata={"help": "torch.compile the UNet (slow first batch; faster on GPUs)."}
    )
    vae_slicing: bool = field(default=False, metadata={"help": "Decode one image at a time (less memory)."})
    vae_tiling: bool = field(default=False, metadata={"help": "Decode in tiles (large images, less memory)."})
    attention_slicing: bool = field(
        default=False,
        metadata={
            "help": "Compute attention a slice of heads at a time (less memory on small GPUs, slower)."
        },
    )
    offload: str = field(
        default="none",
        metadata={  # pipeline/speed.py OFFLOAD
            "help": "Keep weights in CPU memory and move them to the GPU when used: none, model (one model at "
            "a time, a little slower) or sequential (one layer at a time, least GPU memory, much slower)."
        },
    )
    loras: tuple[str, ...] = field(
        default=(),
        metadata={  # lora.py
            "help": "LoRA adapter (folder or .safetensors) to apply, PATH[:SCALE] (scale default 1); repeat "
            "for several (medisyn train --lora)."
        },
    )
    fuse_lora: bool = field(
        default=False,
        metadata={  # rounding may differ
            "help": "Fuse the adapters into the weights once (faster)."
        },
    )
    force_lora: bool = field(
        default=False,
        metadata={"help": "Load an adapter whose adapter.json names another base model than --model."},
    )

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


FLAGS = {
    "manifest": "--manifest",
    "n": "--n",
    "out": "--out",
    "model": "--model",
    "seed": "--seed",
    "shard_size": "--shard-size",
    "device": "--device",
    "dtype": "--dtype",
    "scheduler": "--scheduler",
    "steps": "--steps",
    "guidance": "--guidance",
    "height": "--height",
    "width": "--width",
    "batch_size": "--batch-size",
    "threads": "--threads",
    "index": "--index",
    "threshold": "--threshold",
    "max_attempts": "--max-attempts",
    "shard": "--shard",
    "judge": "--judge",
    "min_label_score": "--min-label-score",
    "offload": "--offload",
}


SWITCHES = {
    "cache_prompts": "--prompt-cache",
    "overlap": "--overlap",
    "channels_last": "--channels-last",
    "compile": "--compile",
    "vae_slicing": "--vae-slicing",
    "vae_tiling": "--vae-tiling",
    "attention_slicing": "--attention-slicing",
    "fuse_lora": "--fuse-lora",
    "force_lora": "--force-lora",
    "mark": "--mark",
}


def command_line(config: GenerateConfig, program: str = "medisyn") -> str:
    """The `medisyn generate` command that runs `config` (options at their defaults left out)."""
    import shlex

    default = GenerateConfig(manifest="", n=0)
    words = ["generate"]
    for name, flag in FLAGS.items():
        value = getattr(config, name)
        if value is not None and (value != getattr(default, name) or name in ("manifest", "n")):
            words += [flag, str(value)]
    for name, flag in SWITCHES.items():
        if getattr(config, name) != getattr(default, name):
            words.append(flag if getattr(config, name) else f"--no-{flag[2:]}")
    for spec in config.loras:
        words += ["--lora", spec]
    if tuple(config.formats) != FORMATS:
        words += ["--format", format_option(config.formats)]
    if config.checks:
        words += ["--check", ",".join(config.checks)]
    words += ["--resume"] if config.resume else []
    return " ".join([program] + [shlex.quote(w) for w in words])
