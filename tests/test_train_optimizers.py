"""`train --optimizer adamw|adamw8bit|adafactor` and `--gradient-checkpointing` (#26): full fine-tuning that fits
smaller machines, with the same weights, checkpoints and resume as AdamW."""

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.train.checkpoint import restore
from medisyn_cli.train.loop import TrainConfig, train
from medisyn_cli.train.model import checkpoint_activations

DATA = Path(__file__).parent / "fixtures" / "images"


def full(out: Path, base: Path, **options) -> TrainConfig:
    """Full fine-tuning (no --lora) of the tiny pipeline, text encoder included: every parameter trains."""
    settings = dict(
        data=(str(DATA),),
        out=str(out),
        base=str(base),
        resolution=16,
        steps=4,
        batch_size=4,
        lr=1e-2,
        checkpoint_every=2,
        validate_every=0,
        mixed_precision="no",
        train_text_encoder=True,
        ema=False,
    )
    return TrainConfig(**{**settings, **options})


def weights(out: Path) -> dict:
    """Every tensor of the saved UNet and text encoder, by part and name."""
    from safetensors.torch import load_file

    return {
        f"{part}/{name}": tensor
        for part in ("unet", "text_encoder")
        for name, tensor in load_file(next((out / part).glob("*.safetensors"))).items()
    }


def losses(out: Path) -> list[float]:
    return [float(line.split(",")[1]) for line in (out / "loss.csv").read_text().splitlines()[1:]]


def optimizer_state_bytes(out: Path) -> int:
    """Size of the optimiser state file in the run's latest checkpoint."""
    checkpoint = sorted((out / "_work" / "checkpoints").glob("step-*"))[-1]
    return sum(p.stat().st_size for p in checkpoint.glob("optimizer*"))


def test_gradient_checkpointing_gives_the_weights_of_a_run_without_it(tiny_model, tmp_path, monkeypatch):
    import torch.utils.checkpoint

    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    train(full(tmp_path / "plain", tiny_model, steps=2), show_progress=False)
    assert not calls
    train(full(tmp_path / "ckpt", tiny_model, steps=2, gradient_checkpointing=True), show_progress=False)
    assert calls  # the UNet's blocks went through torch's checkpoint
    plain, ckpt = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    base = weights(tiny_model)
    assert plain.keys() == ckpt.keys() == base.keys()
    assert any(not torch.equal(plain[k], base[k]) for k in base if k.startswith("text_encoder/"))
    assert all(torch.allclose(plain[k], ckpt[k], rtol=1e-5, atol=1e-6) for k in plain)
    assert losses(tmp_path / "plain") == pytest.approx(losses(tmp_path / "ckpt"), rel=1e-5)
    saved = json.loads((tmp_path / "ckpt" / "_work" / "config.json").read_text())
    record = json.loads((tmp_path / "ckpt" / "training.json").read_text())["config"]
    assert saved["gradient_checkpointing"] is record["gradient_checkpointing"] is True


def test_gradient_checkpointing_gives_the_adapter_of_a_run_without_it_with_lora_on_unet_and_text(
    tiny_model, tmp_path
):
    from safetensors.torch import load_file

    options = dict(steps=2, lora=4, lora_targets="unet+text", train_text_encoder=None, lr=1e-2)
    train(full(tmp_path / "plain", tiny_model, **options), show_progress=False)
    train(full(tmp_path / "ckpt", tiny_model, gradient_checkpointing=True, **options), show_progress=False)
    plain, ckpt = (load_file(tmp_path / n / "pytorch_lora_weights.safetensors") for n in ("plain", "ckpt"))
    assert plain.keys() == ckpt.keys() and any(k.startswith("text_encoder") for k in plain)
    assert all(torch.allclose(plain[k], ckpt[k], rtol=1e-5, atol=1e-6) for k in plain)


def test_checkpointing_covers_the_text_encoder_only_when_it_trains(tiny_model):
    from diffusers import StableDiffusionPipeline

    for trains in (False, True):
        pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
        parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "train_text_encoder": trains}
        checkpoint_activations(parts)
        encoder = pipe.text_encoder
        assert pipe.unet.is_gradient_checkpointing
        on = getattr(encoder, "is_activation_checkpointing", None)  # transformers 5 (older: is_gradient_...)
        assert (encoder.is_gradient_checkpointing if on is None else on) is trains


def test_a_resume_may_switch_gradient_checkpointing_on(tiny_model, tmp_path):
    train(full(tmp_path / "whole", tiny_model), show_progress=False)
    train(full(tmp_path / "cut", tiny_model, steps=2), show_progress=False)
    train(full(tmp_path / "cut", tiny_model, resume=True, gradient_checkpointing=True), show_progress=False)
    whole, cut = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.allclose(whole[k], cut[k], rtol=1e-5, atol=1e-6) for k in whole)


def test_adafactor_trains_and_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(tiny_model, tmp_path):
    train(full(tmp_path / "adamw", tiny_model), show_progress=False)
    train(full(tmp_path / "whole", tiny_model, optimizer="adafactor"), show_progress=False)
    train(full(tmp_path / "cut", tiny_model, optimizer="adafactor", steps=2), show_progress=False)
    state = sorted((tmp_path / "cut" / "_work" / "checkpoints").glob("step-*"))[-1] / "medisyn_state.json"
    assert json.loads(state.read_text())["optimizer"] == "adafactor"
    train(full(tmp_path / "cut", tiny_model, optimizer="adafactor", resume=True), show_progress=False)
    whole, cut, adamw = (weights(tmp_path / n) for n in ("whole", "cut", "adamw"))
    base = weights(tiny_model)
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")
    assert sum(not torch.equal(whole[k], base[k]) for k in base) > len(base) / 2  # it trained
    assert any(not torch.equal(whole[k], adamw[k]) for k in whole)  # with another optimiser
    # factored second moments and no first moment: far less state than AdamW's two moments per weight
    assert optimizer_state_bytes(tmp_path / "whole") < optimizer_state_bytes(tmp_path / "adamw") / 2


def test_a_resume_with_another_optimizer_is_refused(tiny_model, tmp_path):
    out = tmp_path / "run"
    train(full(out, tiny_model, steps=2), show_progress=False)
    with pytest.raises(MedisynError, match="options differ .*optimizer"):
        train(full(out, tiny_model, optimizer="adafactor", resume=True), show_progress=False)
    work = tmp_path / "older"  # a checkpoint whose run folder lost its options file: the checkpoint says
    (work / "checkpoints" / "step-000002").mkdir(parents=True)
    (work / "checkpoints" / "step-000002" / "medisyn_state.json").write_text('{"step": 2, "losses": [1, 1]}')
    with pytest.raises(MedisynError, match="--optimizer adafactor: the checkpoint .* holds adamw state"):
        restore(None, work, "adafactor")


def test_an_unknown_optimizer_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app, ["train", str(DATA), "--out", str(tmp_path / "o"), "--optimizer", "sgd", "--no-progress"]
    )
    assert result.exit_code == 2
    assert "--optimizer: 'sgd' is not one of adamw, adamw8bit, adafactor" in result.output
    assert not (tmp_path / "o" / "_work").exists()


def test_adamw8bit_without_bitsandbytes_says_what_to_use_instead(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as where it is not installed
    out = tmp_path / "o"
    result = CliRunner().invoke(
        app,
        ["train", str(DATA), "--out", str(out), "--base", str(tiny_model), "--resolution", "16"]
        + ["--optimizer", "adamw8bit", "--no-progress"],
    )
    assert result.exit_code == 2, result.output
    message = [line for line in result.output.splitlines() if "--optimizer adamw8bit" in line]
    assert len(message) == 1 and "pip install bitsandbytes" in message[0] and "adafactor" in message[0]
    assert not (out / "_work").exists()  # refused before any data was read


def test_adamw8bit_trains_and_resumes_where_bitsandbytes_runs(tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")  # not a dependency: pip install bitsandbytes
    options = dict(optimizer="adamw8bit", lr=1e-3)
    train(full(tmp_path / "whole", tiny_model, **options), show_progress=False)
    train(full(tmp_path / "cut", tiny_model, steps=2, **options), show_progress=False)
    train(full(tmp_path / "cut", tiny_model, resume=True, **options), show_progress=False)
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")
    checkpoint = sorted((tmp_path / "whole" / "_work" / "checkpoints").glob("step-*"))[-1]
    state = torch.load(checkpoint / "optimizer.bin", weights_only=False)["state"]
    bnb_keys = {
        "state1",
        "__bnb_optimizer_quant_state__",
    }  # 8-bit moments (as bitsandbytes saves them), no exp_avg
    assert all(bnb_keys & set(s) and "exp_avg" not in s for s in state.values())
