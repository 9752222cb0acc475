"""`medisyn train` is reproducible: the same seed and data give the same adapter (or model), bit for bit, on CPU."""

from pathlib import Path

import pytest
import torch

from medisyn_cli.train.loop import TrainConfig, train

DATA = Path(__file__).parent / "fixtures" / "images"


def lora(out: Path, base: Path, **options) -> TrainConfig:
    """A few steps of LoRA with every random draw the loop makes: batches by weight, caption and LoRA dropout."""
    settings = dict(
        data=(str(DATA),),
        out=str(out),
        base=str(base),
        resolution=16,
        steps=6,
        batch_size=8,
        lr=0.1,
        checkpoint_every=100,
        validate_every=0,
        mixed_precision="no",
        lora=4,
        lora_dropout=0.2,
        caption_dropout=0.3,
        balance=0.5,
    )
    return TrainConfig(**{**settings, **options})


def weights(file: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(file)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_two_lora_trainings_with_one_seed_give_the_same_adapter(tiny_model, tmp_path, restore_determinism):
    adapters = []
    for name, options in (("a", {}), ("b", {}), ("c", {"deterministic": True}), ("d", {"seed": 1})):
        train(lora(tmp_path / name, tiny_model, **options), show_progress=False)
        adapters.append(weights(tmp_path / name / "pytorch_lora_weights.safetensors"))
    first, again, deterministic, other_seed = adapters
    assert same(first, again)
    assert same(first, deterministic)  # on CPU, torch's deterministic algorithms change nothing
    assert not same(first, other_seed)
    relative = sum((first[k] - other_seed[k]).double().norm() ** 2 for k in first) ** 0.5
    assert relative / sum(first[k].double().norm() ** 2 for k in first) ** 0.5 > 0.1


def test_a_resumed_lora_training_ends_with_the_adapter_of_an_unbroken_one(tiny_model, tmp_path):
    train(lora(tmp_path / "whole", tiny_model, checkpoint_every=3), show_progress=False)
    train(lora(tmp_path / "cut", tiny_model, steps=3, checkpoint_every=3), show_progress=False)
    train(lora(tmp_path / "cut", tiny_model, checkpoint_every=3, resume=True), show_progress=False)
    whole, cut = (weights(tmp_path / n / "pytorch_lora_weights.safetensors") for n in ("whole", "cut"))
    assert same(whole, cut)


def test_two_trainings_from_scratch_with_one_seed_give_the_same_model(tmp_path):
    settings = dict(data=(str(DATA),), config="tiny", resolution=16, steps=3, vae_steps=3, batch_size=8)
    settings.update(checkpoint_every=100, validate_every=0, mixed_precision="no", ema=False)
    models = []
    for name in ("a", "b"):
        train(TrainConfig(out=str(tmp_path / name), **settings), show_progress=False)
        models.append(
            {part: weights(next((tmp_path / name / part).glob("*.safetensors"))) for part in ("unet", "vae")}
        )
    assert all(same(models[0][part], models[1][part]) for part in ("unet", "vae"))
