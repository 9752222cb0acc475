"""LoRA: train an adapter on a base pipeline (only the adapter trains), load it in plain diffusers, generate with it."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.train.loop import TrainConfig, train

DATA = Path(__file__).parent / "fixtures" / "images"


def lora_config(out: Path, base: Path, **options) -> TrainConfig:
    defaults = dict(
        data=(str(DATA),),
        out=str(out),
        base=str(base),
        resolution=16,
        steps=30,
        batch_size=8,
        lr=0.1,
        checkpoint_every=15,
        validate_every=30,
        mixed_precision="no",
        lora=4,
        lora_alpha=8.0,
        holdout=0.2,
        balance=0.5,
    )
    return TrainConfig(**{**defaults, **options})


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "adapter"
    train(lora_config(out, tiny_model), show_progress=False)
    return out


def base_parts(model: Path) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    return {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "pipe": pipe}


def test_lora_training_saves_only_the_adapter_and_leaves_the_base_bit_identical(adapter, tiny_model):
    from safetensors import safe_open

    from medisyn_cli.pipeline.load import weight_hashes
    from medisyn_cli.pipeline.lora import base_state_sha256

    record = json.loads((adapter / "adapter.json").read_text())
    assert (record["rank"], record["alpha"], record["targets"], record["steps"]) == (4, 8.0, "unet", 30)
    assert record["base"]["source"] == str(tiny_model)
    assert record["base"]["weights_sha256"] == weight_hashes(str(tiny_model))
    assert record["held_out_images"] > 0 and len(record["data_fingerprint"]) == 64
    # the base weights after training (in memory, EMA copied in) hash the same as the base model on disk
    assert record["base"]["state_sha256"] == base_state_sha256(base_parts(tiny_model))
    with safe_open(str(adapter / "pytorch_lora_weights.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        assert sum(handle.get_tensor(k).numel() for k in keys) == record["parameters"]
    assert keys and all(k.startswith("unet.") and ".lora" in k for k in keys)
    assert not (adapter / "model_index.json").exists() and not (adapter / "unet").exists()
    assert (adapter / "samples" / "step-000030.png").exists() and "rank-4" in (
        adapter / "README.md"
    ).read_text()


def test_lora_checkpoints_hold_only_the_adapter(adapter, tiny_model):
    from safetensors import safe_open

    checkpoints = sorted((adapter / "_work" / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-000015", "step-000030"]
    for checkpoint in checkpoints:
        names = {f.name for f in checkpoint.iterdir()}
        assert "adapter_state.safetensors" in names
        assert not names & {"model.safetensors", "model_1.safetensors", "pytorch_model.bin"}, names
        with safe_open(str(checkpoint / "adapter_state.safetensors"), "pt") as handle:
            keys = list(handle.keys())
        assert keys and all("lora_" in k for k in keys)
    unet_bytes = (tiny_model / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert (checkpoints[-1] / "adapter_state.safetensors").stat().st_size < unet_bytes / 5


def test_lora_resume_restores_the_adapter_from_its_checkpoint(tiny_model, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "cut"
    train(
        lora_config(out, tiny_model, steps=3, checkpoint_every=3, validate_every=0, ema=False),
        show_progress=False,
    )
    trained = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(v.abs().sum() > 0 for k, v in trained.items() if ".lora.up." in k)  # B starts at zero
    (out / "pytorch_lora_weights.safetensors").unlink()
    result = train(
        lora_config(out, tiny_model, steps=3, checkpoint_every=3, validate_every=0, ema=False, resume=True),
        show_progress=False,
    )
    resumed = load_file(out / "pytorch_lora_weights.safetensors")
    assert result.steps == 3 and resumed.keys() == trained.keys()
    assert all(torch.equal(resumed[k], trained[k]) for k in trained)


def test_fp16_save_dtype_halves_the_adapter_and_plain_diffusers_loads_it(adapter, tiny_model, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "half"
    train(lora_config(out, tiny_model, steps=2, validate_every=0, save_dtype="fp16"), show_progress=False)
    tensors = load_file(out / "pytorch_lora_weights.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert json.loads((out / "adapter.json").read_text())["dtype"] == "fp16"
    full = load_file(adapter / "pytorch_lora_weights.safetensors")
    assert {t.dtype for t in full.values()} == {torch.float32}
    pipe = base_parts(tiny_model)["pipe"]
    pipe.load_lora_weights(out)
    assert pipe.unet.dtype == torch.float32


def test_only_adapter_parameters_train(tiny_model):
    from medisyn_cli.pipeline.lora import add_lora

    parts = base_parts(tiny_model)
    trainable = add_lora(parts, lora_config(Path("unused"), tiny_model, lora_targets="unet+text"))
    names = [n for m in ("unet", "text_encoder") for n, p in parts[m].named_parameters() if p.requires_grad]
    assert len(names) == len(trainable) and all("lora_" in n for n in names)
    assert any(p.requires_grad for p in parts["text_encoder"].parameters())


def test_plain_diffusers_loads_the_adapter_and_it_lowers_the_training_loss(adapter, tiny_model, tmp_path):
    from diffusers import DDPMScheduler

    from medisyn_cli.train.data import load_training_images
    from medisyn_cli.train.latents import encode_latents
    from medisyn_cli.train.step import diffusion_loss, tokenize

    config = lora_config(adapter, tiny_model)
    parts = base_parts(tiny_model)
    pipe = parts["pipe"]
    data = load_training_images(config, tmp_path)
    mean = encode_latents(pipe.vae, data.pixels[:], torch.device("cpu")).float().chunk(2, dim=1)[0]
    z, ids = mean * pipe.vae.config.scaling_factor, tokenize(pipe.tokenizer, data.captions)
    parts["noise_scheduler"] = DDPMScheduler.from_config(pipe.scheduler.config)

    def loss() -> float:
        with torch.no_grad():
            hidden = pipe.text_encoder(ids)[0]
            return float(
                np.mean(
                    [
                        diffusion_loss(parts, z, hidden, torch.Generator().manual_seed(s), config).item()
                        for s in range(8)
                    ]
                )
            )

    before = loss()
    pipe.load_lora_weights(adapter)  # plain diffusers, the folder only
    assert pipe.unet.peft_config["default_0"].lora_alpha == 8 and pipe.unet.peft_config["default_0"].r == 4
    after = loss()
    assert after < 0.97 * before, (before, after)


def write_manifest(folder: Path) -> Path:
    path = folder / "two.csv"
    path.write_text("label,prompt\nmelanoma,dermoscopy image of melanoma\nchest,frontal chest x-ray\n")
    return path


def generate_args(manifest: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "--manifest",
        str(manifest),
        "--n",
        "4",
        "--model",
        str(model),
        "--out",
        str(out),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--threads",
        "1",
        "--format",
        "imagefolder",
        "--no-progress",
        *extra,
    ]


def images(out: Path) -> dict[str, np.ndarray]:
    import csv

    with open(out / "imagefolder" / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {
        r["file_name"]: (
            np.asarray(Image.open(out / "imagefolder" / r["file_name"]).convert("RGB")).astype(int),
            r,
        )
        for r in rows
    }


def test_generate_with_lora_differs_from_the_base_and_equals_plain_diffusers(adapter, tiny_model, tmp_path):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    manifest = write_manifest(tmp_path)
    option = ("--lora", f"{adapter}:0.8")
    for name, extra in (("plain", ()), ("lora", option), ("fused", (*option, "--fuse-lora"))):
        result = CliRunner().invoke(app, generate_args(manifest, tiny_model, tmp_path / name, *extra))
        assert result.exit_code == 0, result.output
    plain, lora, fused = (images(tmp_path / n) for n in ("plain", "lora", "fused"))
    assert max(np.abs(plain[k][0] - lora[k][0]).max() for k in lora) > 8
    assert max(np.abs(fused[k][0] - lora[k][0]).max() for k in lora) <= 2
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++"
    )
    pipe.load_lora_weights(adapter, adapter_name="mine")
    pipe.set_adapters(["mine"], adapter_weights=[0.8])
    run = json.loads((tmp_path / "lora" / "run.json").read_text())
    for pixels, row in lora.values():
        reference = pipe(
            row["prompt"],
            num_inference_steps=4,
            guidance_scale=run["sampling"]["guidance"],
            generator=torch.Generator().manual_seed(int(row["seed"])),
            output_type="np",
        ).images[0]
        assert np.abs(np.round(reference * 255).astype(int) - pixels).max() <= 1
    sha = run["adapters"][0]["sha256"]
    assert run["adapters"] == [{"path": str(adapter.resolve()), "sha256": sha, "scale": 0.8}]
    assert run["key"]["adapters"] == [{"sha256": sha, "scale": 0.8}]
    assert all(f"{sha[:12]}:0.8" in row["model"] for _, row in lora.values())
    card = (tmp_path / "lora" / "README.md").read_text()
    assert f"LoRA adapter: `{adapter.name}`" in card and str(adapter.resolve()) not in card  # portable card


def test_resume_and_shards_with_other_adapters_are_refused(adapter, tiny_model, tmp_path):
    manifest = write_manifest(tmp_path)
    done = generate_args(manifest, tiny_model, tmp_path / "done", "--lora", f"{adapter}:1")
    assert CliRunner().invoke(app, done).exit_code == 0
    for extra in (("--lora", f"{adapter}:0.5"), ()):
        result = CliRunner().invoke(app, [*done[:-2], *extra, "--resume"])
        assert result.exit_code == 2 and "adapters" in result.output, result.output
    shard = generate_args(manifest, tiny_model, tmp_path / "sharded", "--lora", str(adapter))
    assert CliRunner().invoke(app, [*shard, "--shard", "0/2"]).exit_code == 0
    result = CliRunner().invoke(app, [*shard[:-2], "--shard", "1/2"])
    assert result.exit_code == 2 and "adapters" in result.output, result.output


def save_tensors(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


def test_bad_adapters_are_one_line_errors_before_anything_is_written(adapter, tiny_model, tmp_path):
    import shutil

    manifest = write_manifest(tmp_path)
    corrupt = tmp_path / "corrupt" / "pytorch_lora_weights.safetensors"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00garbage" * 10)
    layer = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    sdxl = save_tensors(
        tmp_path / "sdxl.safetensors",
        {"text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 1280)},
    )
    wide = save_tensors(
        tmp_path / "wide.safetensors", {f"{layer}.lora_A.weight": (4, 64), f"{layer}.lora_B.weight": (64, 4)}
    )
    empty = save_tensors(tmp_path / "empty.safetensors", {"unet.conv_in.weight": (4, 4)})
    other = tmp_path / "other"
    shutil.copytree(adapter, other, ignore=shutil.ignore_patterns("_work", "samples"))
    record = json.loads((other / "adapter.json").read_text())
    record["base"]["weights_sha256"] = {"unet/diffusion_pytorch_model.safetensors": "0" * 64}
    (other / "adapter.json").write_text(json.dumps(record))
    cases = [
        (tmp_path / "missing", "does not exist"),
        (corrupt.parent, "not a readable .safetensors"),
        (sdxl, "another architecture"),
        (wide, "has other sizes"),
        (empty, "holds no LoRA weights"),
        (tmp_path, "has no pytorch_lora_weights.safetensors"),
        (other, "--force-lora"),
    ]
    for path, message in cases:
        out = tmp_path / f"out-{path.name}"
        result = CliRunner().invoke(app, generate_args(manifest, tiny_model, out, "--lora", str(path)))
        assert result.exit_code == 2 and message in result.output, (path, result.output)
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    forced = CliRunner().invoke(
        app,
        generate_args(
            manifest, tiny_model, tmp_path / "forced", "--lora", str(other), "--force-lora", "--dry-run"
        ),
    )
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize(
    "option, message",
    [
        (dict(lora=0), "rank must be at least 1"),
        (dict(base=None), "--lora needs --base"),
        (dict(lora_targets="vae"), "not one of unet, unet+text"),
        (dict(lora_dropout=1.5), "not in [0, 1)"),
    ],
)
def test_bad_lora_training_options_are_refused_before_anything_is_written(
    tiny_model, tmp_path, option, message
):
    out = tmp_path / "adapter"
    with pytest.raises(MedisynError) as error:
        train(replace(lora_config(out, tiny_model), **option), show_progress=False)
    assert message in str(error.value) and not out.exists()


def test_cli_lora_rank_zero_exits_2(tiny_model, tmp_path):
    result = CliRunner().invoke(
        app, ["train", str(DATA), "--out", str(tmp_path / "a"), "--base", str(tiny_model), "--lora", "0"]
    )
    assert (
        result.exit_code == 2 and "rank must be at least 1" in result.output and not (tmp_path / "a").exists()
    )


def test_lora_run_resumes_and_refuses_another_rank(tiny_model, tmp_path):
    out = tmp_path / "adapter"
    train(lora_config(out, tiny_model, steps=4, checkpoint_every=2, validate_every=0), show_progress=False)
    with pytest.raises(MedisynError, match="options differ .*lora"):
        train(
            lora_config(out, tiny_model, lora=8, steps=6, validate_every=0, resume=True), show_progress=False
        )
    result = train(
        lora_config(out, tiny_model, steps=6, checkpoint_every=2, validate_every=0, resume=True),
        show_progress=False,
    )
    assert result.steps == 6 and json.loads((out / "adapter.json").read_text())["steps"] == 6


class _CpuAccelerator:
    device = torch.device("cpu")

    @staticmethod
    def autocast():
        import contextlib

        return contextlib.nullcontext()


def test_a_frozen_text_encoder_encodes_each_caption_once_and_the_same(tiny_model):
    from medisyn_cli.train.step import caption_states, text_states, tokenize

    pipe = base_parts(tiny_model)["pipe"]
    parts = {"text_encoder": pipe.text_encoder.eval(), "train_text_encoder": False}
    ids_of = tokenize(pipe.tokenizer, ["frontal chest x-ray", "dermoscopy image of melanoma", ""])
    rows = torch.tensor([2, 0, 0, 1])
    cached = caption_states(parts, ids_of, _CpuAccelerator())
    assert cached.shape[0] == 3
    with torch.no_grad():
        direct = text_states(parts, ids_of, rows, None, torch.device("cpu"))
    assert torch.allclose(text_states(parts, ids_of, rows, cached, torch.device("cpu")), direct, atol=1e-5)
    assert caption_states(parts, ids_of, _CpuAccelerator(), limit=cached.numel() * 4 - 1) is None  # too many
    assert caption_states({**parts, "train_text_encoder": True}, ids_of, _CpuAccelerator()) is None
