"""LoRA adapters: add them to a base pipeline for training (peft), save them in diffusers' format with their
provenance (adapter.json, a card), and check and load them for `generate --lora PATH[:SCALE]`."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import atomic_write_text, write_json
from medisyn_cli.core.ownership import remove_private
from medisyn_cli.pipeline.load import file_sha256, model_source, weight_hashes

WEIGHTS = "pytorch_lora_weights.safetensors"
# diffusers/peft scale the low-rank update linearly: scales used in practice are 0..1 (their docs), up to ~2 for a
# strong effect and negative for "slider" adapters; -4..4 leaves room beyond those, and refuses a typo such as 1e9
# (which gave saturated images and exit 0).
MAX_SCALE = 4.0
ADAPTER_JSON = "adapter.json"
CHECKPOINT = "adapter_state.safetensors"  # a LoRA run's training checkpoint (adapter tensors only)
TARGETS = ("unet", "unet+text")
UNET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections, as diffusers' LoRA script
TEXT_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
COMPONENT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}
LOW, HIGH = ("lora_A", "lora.down"), ("lora_B", "lora.up")  # peft and diffusers names of the two factors


# 1. training ---------------------------------------------------------------------------------------


def check_train_options(config) -> None:
    """--lora RANK and its options: one-line errors before any image or model is read."""
    if config.lora is None:
        return
    if config.lora < 1:
        raise MedisynError(f"--lora: the rank must be at least 1, got {config.lora}")
    if not config.base:
        raise MedisynError("--lora needs --base (the pipeline the adapter adapts)")
    if config.lora_alpha is not None and not (math.isfinite(config.lora_alpha) and config.lora_alpha > 0):
        raise MedisynError(f"--lora-alpha: must be a positive number, got {config.lora_alpha}")
    if config.lora_targets not in TARGETS:
        raise MedisynError(f"--lora-targets: '{config.lora_targets}' is not one of {', '.join(TARGETS)}")
    if not 0.0 <= config.lora_dropout < 1.0:
        raise MedisynError(f"--lora-dropout: {config.lora_dropout} is not in [0, 1)")
    if config.train_text_encoder:
        raise MedisynError(
            "--train-text-encoder with --lora: use --lora-targets unet+text to adapt the text encoder"
        )


def add_lora(parts: dict, config) -> list:
    """Freeze the base, add LoRA layers (peft) to the UNet (and text encoder); returns the trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    alpha = config.lora_alpha if config.lora_alpha is not None else config.lora
    parts["unet"].requires_grad_(False)
    parts["text_encoder"].requires_grad_(False)
    parts["base_sha256"] = base_state_sha256(parts)
    targets = {
        "unet": UNET_MODULES,
        "text_encoder": TEXT_MODULES if config.lora_targets == "unet+text" else None,
    }
    parts["lora_configs"] = {
        name: LoraConfig(
            r=config.lora,
            lora_alpha=alpha,
            target_modules=modules,
            lora_dropout=config.lora_dropout,
            init_lora_weights="gaussian",
        )
        for name, modules in targets.items()
        if modules
    }
    for name, lora_config in parts["lora_configs"].items():
        inject_adapter_in_model(lora_config, parts[name], adapter_name="default")
    trainable = [
        (f"{name}.{key}", p)
        for name in ("unet", "text_encoder")
        for key, p in parts[name].named_parameters()
        if p.requires_grad
    ]
    frozen_lora = [key for key, p in trainable if "lora_" not in key]
    assert trainable and not frozen_lora, f"LoRA: non-adapter parameters would train: {frozen_lora[:3]}"
    parts["train_text_encoder"] = config.lora_targets == "unet+text"
    return [p for _, p in trainable]


def checkpoint_adapters_only(accelerator) -> None:
    """Make accelerate's checkpoints of a LoRA run hold only the adapter tensors of its models (not the frozen
    base, which the run reloads from --base): a few MB instead of the whole UNet per checkpoint."""
    from safetensors.torch import load_file, save_file

    def save(models, weights, folder):
        if accelerator.is_main_process:
            state = {
                f"{i}/{key}": tensor for i, model in enumerate(models) for key, tensor in _lora_state(model)
            }
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, Path(folder) / CHECKPOINT)
        weights.clear()

    def load(models, folder):
        state = load_file(Path(folder) / CHECKPOINT)
        for i, model in enumerate(models):
            own = {key.split("/", 1)[1]: v for key, v in state.items() if key.startswith(f"{i}/")}
            expected = {key for key, _ in _lora_state(model)}
            if set(own) != expected:
                raise MedisynError(
                    f"{folder}: the checkpoint's adapter does not match this run's LoRA layers"
                )
            accelerator.unwrap_model(model).load_state_dict(own, strict=False)
        models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def _lora_state(model) -> list:
    return [(k, v) for k, v in getattr(model, "module", model).state_dict().items() if "lora_" in k]


def base_state_sha256(parts: dict) -> str:
    """sha256 of the base (non-adapter) weights of the UNet and text encoder, in a fixed order."""
    import numpy as np

    digest = hashlib.sha256()
    for name in ("unet", "text_encoder"):
        model = getattr(parts[name], "module", parts[name])
        for key, tensor in sorted(model.state_dict().items()):
            if "lora_" in key:
                continue
            digest.update(key.replace("base_layer.", "").encode())
            digest.update(np.ascontiguousarray(tensor.detach().float().cpu().numpy()).tobytes())
    return digest.hexdigest()


def adapter_state(parts: dict, dtype: str = "fp32") -> dict:
    """The adapter's tensors per component, in diffusers' key format (what save_lora_weights takes), as fp32 or
    fp16 (--save-dtype)."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers

    cast = torch.float16 if dtype == "fp16" else torch.float32
    layers = {}
    for name in parts["lora_configs"]:
        state = {
            key.replace(".default.", "."): tensor.detach().cpu().to(cast).contiguous()
            for key, tensor in _lora_state(parts[name])
        }
        layers[name] = convert_state_dict_to_diffusers(state)
    return layers


def save_adapter(parts: dict, out: Path, config, info: dict) -> Path:
    """Write pytorch_lora_weights.safetensors, adapter.json and README.md into out (weights via a temp folder)."""
    from diffusers import StableDiffusionPipeline

    if base_state_sha256(parts) != parts["base_sha256"]:
        raise MedisynError("LoRA training changed base weights (internal error); the adapter was not saved")
    layers = adapter_state(parts, config.save_dtype)
    meta = {f"{name}_lora_adapter_metadata": _peft_metadata(parts["lora_configs"][name]) for name in layers}
    tmp = out / "_work" / "adapter"
    remove_private(tmp)
    StableDiffusionPipeline.save_lora_weights(
        tmp,
        unet_lora_layers=layers.get("unet"),
        text_encoder_lora_layers=layers.get("text_encoder"),
        weight_name=WEIGHTS,
        **meta,
    )
    (tmp / WEIGHTS).chmod(0o644)
    (tmp / WEIGHTS).rename(out / WEIGHTS)
    record = {
        "format": "diffusers-lora",
        "weights": WEIGHTS,
        "sha256": file_sha256(out / WEIGHTS),
        "base": {
            "source": config.base,
            "weights_sha256": weight_hashes(config.base),
            "state_sha256": parts["base_sha256"],
        },
        "rank": config.lora,
        "alpha": config.lora_alpha if config.lora_alpha is not None else config.lora,
        "dropout": config.lora_dropout,
        "targets": config.lora_targets,
        "modules": {
            "unet": UNET_MODULES,
            "text_encoder": TEXT_MODULES if "text" in config.lora_targets else [],
        },
        "parameters": sum(t.numel() for tensors in layers.values() for t in tensors.values()),
        "dtype": config.save_dtype,
        **info,
    }
    write_json(out / ADAPTER_JSON, record)
    atomic_write_text(out / "README.md", adapter_card(out, record))
    return out


def _peft_metadata(lora_config) -> dict:
    config = lora_config.to_dict()
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def data_fingerprint(pixels, captions: list[str]) -> str:
    """sha256 of the training images (as decoded and resized) and their captions."""
    digest = hashlib.sha256(pixels.contiguous().numpy().tobytes())
    digest.update("\n".join(captions).encode())
    return digest.hexdigest()


def adapter_card(out: Path, record: dict) -> str:
    """The adapter's model card: what it adapts, how it was trained, how to use it."""
    base = record["base"]["source"]
    return "\n".join(
        [
            "---",
            "library_name: diffusers",
            "tags:",
            "- lora",
            "- medisyn",
            "- text-to-image",
            "license: other",
            "---",
            f"# {out.name}: LoRA adapter (medisyn)",
            "",
            f"A rank-{record['rank']} LoRA adapter (alpha {record['alpha']}, {record['parameters']:,} parameters, "
            f"targets: {record['targets']}) for the base model `{base}`. It holds no base weights and no training "
            f"images; use it with the same base model (its weight hashes are in `adapter.json`).",
            "",
            "## Training",
            "",
            f"- {record['steps']} steps on {record['train_images']} images ({record['held_out_images']} held out), "
            f"final loss {record['final_loss']:.4f}",
            f"- data fingerprint `{record['data_fingerprint'][:16]}...` (images as decoded, and captions)",
            f"- base weights unchanged: state sha256 `{record['base']['state_sha256'][:16]}...` before and after",
            "",
            "## Use",
            "",
            "```bash",
            f"medisyn generate --model {base} --lora {out}:1.0 --manifest prompts.csv --n 100",
            "```",
            "",
            "```python",
            "from diffusers import StableDiffusionPipeline",
            f"pipe = StableDiffusionPipeline.from_pretrained('{base}')",
            f"pipe.load_lora_weights('{out}')",
            "```",
            "",
            "**Synthetic images, not for clinical use.** The adapter inherits the terms of the base model and of the "
            "images it was trained on.",
            "",
        ]
    )


# 2. generating -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    """One --lora: its weights file, their sha256, the scale, and what adapter.json says of its base."""

    path: str
    file: str
    sha256: str
    scale: float
    base: dict | None

    def record(self) -> dict:
        """What run.json, the run key and the card keep of it."""
        return {"path": self.path, "sha256": self.sha256, "scale": self.scale}


def parse_spec(spec: str) -> tuple[str, float]:
    """'PATH[:SCALE]' -> (path, scale); scale 1.0 when absent."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(scale):
            raise MedisynError(f"--lora {spec}: the scale must be a finite number, got {tail}")
        if not -MAX_SCALE <= scale <= MAX_SCALE:
            raise MedisynError(
                f"--lora {spec}: scale {tail} is outside -{MAX_SCALE:g}..{MAX_SCALE:g} (1 is the adapter as "
                f"trained, 0.5-1.5 the usual range, a negative scale pushes away from what it learned; far "
                f"beyond that the update swamps the model's weights and images saturate)"
            )
        return head, scale
    return spec, 1.0


def check_adapters(specs, model: str | None, force: bool = False) -> list[Adapter]:
    """Every --lora checked against --model before the model loads: file, format, architecture, recorded base."""
    adapters = [read_adapter(spec) for spec in specs]
    for adapter in adapters:
        check_architecture(adapter, model)
        if not force:
            check_base(adapter, model)
    return adapters


def read_adapter(spec: str) -> Adapter:
    """Find and read an adapter's weights file: a missing, corrupt or non-LoRA file is a one-line error."""
    path, scale = parse_spec(spec)
    folder = Path(path).expanduser()
    file = folder / WEIGHTS if folder.is_dir() else folder
    if not file.is_file():
        raise MedisynError(
            f"--lora: {path} does not exist" if not folder.exists() else f"--lora: {folder} has no {WEIGHTS}"
        )
    keys = adapter_shapes(file)
    if not any(_factor(key) for key in keys):
        raise MedisynError(
            f"--lora: {file} holds no LoRA weights (no lora_A/lora_B or lora.down/lora.up tensors)"
        )
    base = None
    card = (folder if folder.is_dir() else folder.parent) / ADAPTER_JSON
    if card.exists():
        try:
            base = json.loads(card.read_text())["base"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MedisynError(f"--lora: {card}: not a readable adapter record ({exc})") from None
    return Adapter(str(folder.resolve()), str(file.resolve()), file_sha256(file), scale, base)


def adapter_shapes(file: Path) -> dict[str, tuple]:
    """Tensor name -> shape of a .safetensors file, from its header."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error class for a truncated or garbage file
        raise MedisynError(
            f"--lora: {file}: not a readable .safetensors file ({str(exc).splitlines()[0]})"
        ) from None


def _factor(key: str) -> tuple[str, str] | None:
    """(module path, 'A' or 'B') of a LoRA factor's tensor name, else None."""
    for marks, kind in ((LOW, "A"), (HIGH, "B")):
        for mark in marks:
            if f".{mark}." in key:
                return key.split(f".{mark}.")[0], kind
    return None


def check_architecture(adapter: Adapter, model: str | None) -> None:
    """Each adapted layer must exist in the model with the adapter's input and output sizes (local folders)."""
    folder = Path(model_source(model)).expanduser()
    for key, shape in adapter_shapes(Path(adapter.file)).items():
        found = _factor(key)
        if found is None:
            continue
        module, kind = found
        component, _, inner = module.partition(".")
        if component not in COMPONENT_FILES:
            raise MedisynError(
                f"--lora {adapter.path}: adapts '{component}', which a Stable-Diffusion-style model "
                f"does not have (an adapter for another architecture, e.g. SDXL?)"
            )
        weights = folder / component / COMPONENT_FILES[component]
        if not weights.is_file():
            continue  # a single-file or hub model: the load reports a mismatch
        base = _base_shapes(str(weights)).get(f"{inner}.weight")
        size_ok = base is not None and (shape[1] == base[1] if kind == "A" else shape[0] == base[0])
        if not size_ok:
            problem = "is not in" if base is None else "has other sizes in"
            raise MedisynError(
                f"--lora {adapter.path}: layer {component}.{inner} {problem} {model_source(model)} "
                f"(an adapter for another architecture)"
            )


_SHAPES: dict[str, dict] = {}


def _base_shapes(file: str) -> dict[str, tuple]:
    if file not in _SHAPES:
        _SHAPES[file] = adapter_shapes(Path(file))
    return _SHAPES[file]


def check_base(adapter: Adapter, model: str | None) -> None:
    """An adapter whose adapter.json names other base weights than --model's is refused (--force-lora overrides)."""
    recorded = (adapter.base or {}).get("weights_sha256")
    if not recorded:
        return
    current = weight_hashes(model)
    if current and current != recorded:
        raise MedisynError(
            f"--lora {adapter.path}: trained on {adapter.base.get('source')}, whose weights differ from "
            f"--model {model_source(model)}'s; use its base model, or --force-lora to load it anyway"
        )


def apply_adapters(pipe, adapters: list[Adapter], fuse: bool = False) -> None:
    """Load the adapters into a pipeline with their scales (diffusers' adapter API); fuse them when asked."""
    if not adapters:
        return
    names = [f"lora{i}" for i in range(len(adapters))]
    for name, adapter in zip(names, adapters):
        try:
            pipe.load_lora_weights(
                str(Path(adapter.file).parent), weight_name=Path(adapter.file).name, adapter_name=name
            )
        except Exception as exc:  # diffusers/peft raise ValueError, RuntimeError or KeyError for mismatches
            raise MedisynError(
                f"--lora {adapter.path}: cannot be loaded into this model "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
    pipe.set_adapters(names, adapter_weights=[a.scale for a in adapters])
    if fuse:
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()


def describe(adapters: list[dict]) -> str:
    """Adapters as one string for each dataset row: 'name@sha256[:12]:scale', joined by ' + ' (the adapter's
    folder or file name, never its local path: rows travel with the dataset)."""
    return " + ".join(f"{Path(a['path']).name}@{a['sha256'][:12]}:{a['scale']:g}" for a in adapters)


def adapter_key(config) -> dict:
    """The run-key entries of a generate config's adapters (none without --lora, so older keys still match)."""
    if not config.loras:
        return {}
    adapters = [read_adapter(spec) for spec in config.loras]
    return {
        "adapters": [{"sha256": a.sha256, "scale": a.scale} for a in adapters],
        "fuse_lora": config.fuse_lora,
    }


def row_model(name: str, adapters: list[dict] | None) -> str:
    """The `model` value of each dataset row: the model's name, then its adapters (path@sha256:scale)."""
    return f"{name} + lora {describe(adapters)}" if adapters else name
