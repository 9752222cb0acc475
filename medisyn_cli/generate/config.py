"""Defaults shared by the CLI and the Python API; saved into run.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass

FORMATS = ("parquet", "imagefolder")


@dataclass(frozen=True)
class GenerateConfig:
    """Options of one `generate` run. None for model settings means: the model's own recommendation."""

    manifest: str
    n: int
    out: str | None = None
    model: str | None = None
    seed: int = 0
    formats: tuple[str, ...] = FORMATS
    device: str = "auto"
    dtype: str = "auto"
    scheduler: str = "dpm++"
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int | None = None  # None: chosen from the device (speed.choose_batch_size)
    threads: int | None = None     # CPU threads of torch (None: as set; a continued run uses the one it recorded)
    rows_per_part: int = 5000
    max_regenerate: int = 5
    index: str | None = None
    threshold: float | None = None
    max_attempts: int = 10
    judge: str | None = None      # label check: a judge folder (medisyn judge build); judge/screening.py
    min_label_score: float | None = None  # reject images whose own-label score is below (None: 0.5 with --judge)
    shard: str | None = None
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    cache_prompts: bool = True    # encode each distinct prompt once per run
    overlap: bool | None = None   # screen and write batch k while the model makes k+1 (None: not on CPU)
    channels_last: bool = False
    compile: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    loras: tuple[str, ...] = ()   # LoRA adapters, PATH[:SCALE] each (lora.py)
    fuse_lora: bool = False       # fuse the adapters into the weights once (faster; rounding may differ)
    force_lora: bool = False      # load an adapter even when adapter.json names another base model

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


FLAGS = {"manifest": "--manifest", "n": "--n", "out": "--out", "model": "--model", "seed": "--seed",
         "device": "--device", "dtype": "--dtype", "scheduler": "--scheduler", "steps": "--steps",
         "guidance": "--guidance", "height": "--height", "width": "--width", "batch_size": "--batch-size", "threads": "--threads",
         "index": "--index", "threshold": "--threshold", "max_attempts": "--max-attempts", "shard": "--shard",
         "judge": "--judge", "min_label_score": "--min-label-score"}


SWITCHES = {"cache_prompts": "--prompt-cache", "overlap": "--overlap", "channels_last": "--channels-last",
            "compile": "--compile", "vae_slicing": "--vae-slicing", "vae_tiling": "--vae-tiling",
            "fuse_lora": "--fuse-lora", "force_lora": "--force-lora"}


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
        words += ["--format", ",".join(config.formats)]
    words += ["--resume"] if config.resume else []
    return " ".join([program] + [shlex.quote(w) for w in words])
