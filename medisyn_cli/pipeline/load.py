"""Load a diffusers text-to-image pipeline from a hub id, a local folder or a single file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import atomic_write_text, file_sha256
from medisyn_cli.pipeline.speed import check_offload, offload_to

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from diffusers import DiffusionPipeline

BUNDLED_MODEL = Path(__file__).parent.parent / "bundled" / "mini"

SCHEDULERS = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".ckpt",
    ".pt",
    ".pth",
    ".msgpack",
    ".safetensors.index.json",
    ".bin.index.json",
)


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """Pick cuda (this process's GPU when several run on a node), then mps, then cpu for 'auto'."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return (
                torch.device("cuda", local_rank % torch.cuda.device_count())
                if local_rank is not None
                else torch.device("cuda")
            )
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise MedisynError(f"--device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedisynError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MedisynError(f"--device {name}: MPS is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on GPUs (bf16 where supported), fp32 on CPU."""
    import torch

    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name != "auto":
        if name not in names:
            raise MedisynError(f"--dtype: unknown dtype '{name}' (use auto, fp32, fp16 or bf16)")
        return names[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def model_source(model: str | None) -> str:
    """The string recorded as the model: the bundled folder when none is given."""
    return str(BUNDLED_MODEL) if model is None else model


def load_pipeline(
    model: str | None,
    device: torch.device,
    dtype: torch.dtype,
    scheduler: str | None = "dpm++",
    offload: str = "none",
) -> DiffusionPipeline:
    """Load any text-to-image DiffusionPipeline, without safety checker, on a device (or offloaded to it)."""
    check_offload(offload, device)
    quiet_libraries()
    source = check_model_source(model)
    path = Path(source).expanduser()
    if path.is_file():
        pipe = _load_single_file(path, dtype)
    elif path.is_dir():
        pipe = _load_folder(path, dtype)
    else:
        pipe = _load_hub(source, dtype)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    if scheduler:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if device.type == "cpu":
        import torch

        torch.set_flush_denormal(True)
    return offload_to(pipe, offload, device)


def check_model_source(model: str | None) -> str:
    """The model's source string; a local path that does not exist, or is not a complete model, is an error."""
    source = model_source(model)
    path = Path(source).expanduser()
    if path.is_file() and not path.name.endswith(SINGLE_FILE_SUFFIXES):
        raise MedisynError(f"--model: {path} is a file but not a .safetensors/.ckpt checkpoint")
    if path.is_file() and path.suffix == ".safetensors":
        _check_safetensors(path)
    if path.is_dir():
        _check_folder(path)
    if not path.exists() and _looks_local(source):
        raise MedisynError(
            f"--model: '{source}' does not exist (give a diffusers folder, a .safetensors/.ckpt file "
            f"or a hub id such as hiesingerlab/MediSyn)"
        )
    return source


def _check_folder(path: Path) -> None:
    """A diffusers folder must have model_index.json naming a pipeline class, and every component it lists, with
    readable configs and (for models) a readable weights file."""
    index = _read_config(path / "model_index.json", "not a diffusers pipeline folder (no model_index.json)")
    if not isinstance(index.get("_class_name"), str):
        raise MedisynError(
            f"--model: {path / 'model_index.json'}: names no pipeline class ('_class_name'); an incomplete "
            f"download or copy?"
        )
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue
        if not (path / name).is_dir():
            raise MedisynError(
                f"--model: {path} lists component '{name}' in model_index.json but has no {name}/ "
                f"folder (an incomplete download or copy?)"
            )
        _check_component(path / name)


def _check_component(folder: Path) -> None:
    """Every *config.json of a component is a JSON object; a model component (config.json) has weights."""
    for config in sorted(folder.glob("*config.json")):
        _read_config(config, "missing")
    weights = [f for f in folder.iterdir() if f.name.endswith(WEIGHT_SUFFIXES)]
    if (folder / "config.json").exists() and not weights:
        raise MedisynError(
            f"--model: {folder} has config.json but no weights file ({', '.join(WEIGHT_SUFFIXES)}); an "
            f"incomplete download or copy?"
        )
    for weights_file in weights:
        if weights_file.suffix == ".safetensors":
            _check_safetensors(weights_file)


def _read_config(file: Path, missing: str) -> dict:
    """A model's JSON config file as a dict; a one-line error naming the file if it is absent or not an object."""
    import json

    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise MedisynError(f"--model: {file.parent}: {missing}") from None
    except (OSError, ValueError) as exc:
        raise MedisynError(f"--model: {file}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise MedisynError(f"--model: {file}: holds a JSON {type(config).__name__}, not an object")
    return config


def _check_safetensors(path: Path) -> None:
    """Read a .safetensors file's header: a truncated or garbage file is a one-line error, before loading."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for bad files
        raise MedisynError(f"--model: {path}: not a readable .safetensors file ({exc})") from None


def quiet_libraries() -> None:
    """No per-component loading bars or deprecation chatter from diffusers/transformers."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def make_scheduler(name: str, config: dict):
    """Build a named scheduler from another scheduler's config."""
    import diffusers

    if name not in SCHEDULERS:
        raise MedisynError(f"--scheduler: unknown scheduler '{name}' (choose from {', '.join(SCHEDULERS)})")
    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **extra)


def _looks_local(source: str) -> bool:
    return (
        source.startswith((".", "/", "~")) or source.endswith(SINGLE_FILE_SUFFIXES) or source.count("/") > 1
    )


def _load_folder(path: Path, dtype):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, safety_checker=None)
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ) as exc:  # diffusers' many ways to say "broken"
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise MedisynError(
            f"--model: {path}: not a loadable diffusers pipeline{where}: {type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0][:300]}"
        ) from exc


def _load_hub(repo_id: str, dtype):
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return DiffusionPipeline.from_pretrained(
            repo_id, torch_dtype=dtype, safety_checker=None, local_files_only=offline
        )
    except Exception as exc:  # hub errors come in many classes (OSError, HTTP, connection)
        raise MedisynError(
            f"--model: could not load '{repo_id}' from the Hugging Face hub or its cache ({type(exc).__name__}). "
            f"Where the hub is reachable run `huggingface-cli download {repo_id} --local-dir DIR`, "
            f"then pass --model DIR"
        ) from exc


def _load_single_file(path: Path, dtype):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if _is_sdxl_checkpoint(path) else StableDiffusionPipeline
    try:
        return cls.from_single_file(str(path), torch_dtype=dtype)
    except Exception as exc:
        raise MedisynError(
            f"--model: could not load single-file checkpoint {path} as {cls.__name__} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Single files need their original config, "
            f"fetched from the hub once; offline, convert it to a diffusers folder where the hub is reachable"
        ) from exc


def _is_sdxl_checkpoint(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return any(key.startswith("conditioner.embedders.1") for key in handle.keys())


def weight_hashes(model: str | None) -> dict[str, str]:
    """sha256 of every weight file of a local model (empty for a hub id)."""
    path = Path(model_source(model)).expanduser()
    files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
    weights = [f for f in files if f.is_file() and f.name.endswith(SINGLE_FILE_SUFFIXES)]
    root = path.parent if path.is_file() else path
    return {str(f.relative_to(root)): cached_sha256(f) for f in weights}


def hash_cache() -> Path:
    """The file that remembers weight hashes: $MEDISYN_CACHE or $XDG_CACHE_HOME/medisyn or ~/.cache/medisyn."""
    root = os.environ.get("MEDISYN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "medisyn"
    return Path(root).expanduser() / "weights-sha256.json"


def cached_sha256(path: Path) -> str:
    """file_sha256, remembered per (path, inode, size, mtime): a 7 GB model is read once, not at every run."""
    import json

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = hash_cache()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    digest = file_sha256(path)
    known = known if isinstance(known, dict) else {}
    try:  # a cache that cannot be written (read-only home) only costs the hashing again
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps({**known, key: digest}))
    except OSError:
        pass
    return digest
