"""Model loading: folders, files and hub ids; device, dtype and scheduler choices; clear errors."""

import pytest
import torch

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.pipeline.load import (
    check_model_source,
    load_pipeline,
    make_scheduler,
    resolve_device,
    resolve_dtype,
    weight_hashes,
)


def test_device_and_dtype_defaults_on_cpu():
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_unavailable_device_is_a_clear_error():
    with pytest.raises(MedisynError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(MedisynError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(MedisynError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_loads_a_saved_folder_with_the_chosen_scheduler_and_no_safety_checker(tiny_model):
    pipe = load_pipeline(str(tiny_model), torch.device("cpu"), torch.float32, scheduler="ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert getattr(pipe, "safety_checker", None) is None
    assert pipe.unet.dtype == torch.float32
    hashes = weight_hashes(str(tiny_model))
    assert set(hashes) == {
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    }
    assert all(len(h) == 64 for h in hashes.values())


@pytest.mark.parametrize("name", ["dpm++", "ddim", "euler", "euler-a", "unipc", "pndm", "ddpm"])
def test_every_named_scheduler_builds(tiny_model, name):
    from diffusers import DDPMScheduler

    config = DDPMScheduler.from_pretrained(tiny_model / "scheduler").config
    assert make_scheduler(name, config).config.num_train_timesteps == 1000


def test_bad_model_sources_are_clear_errors(tmp_path):
    with pytest.raises(MedisynError, match="does not exist"):
        check_model_source(str(tmp_path / "missing"))
    with pytest.raises(MedisynError, match="no model_index.json"):
        check_model_source(str(tmp_path))
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(MedisynError, match="not a .safetensors/.ckpt"):
        check_model_source(str(text))


def test_hub_id_offline_says_how_to_get_the_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MedisynError) as err:
        load_pipeline("hiesingerlab/MediSyn-not-cached", torch.device("cpu"), torch.float32)
    assert "huggingface-cli download hiesingerlab/MediSyn-not-cached" in str(err.value)


def test_broken_single_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(MedisynError, match="could not load single-file checkpoint"):
        load_pipeline(str(path), torch.device("cpu"), torch.float32)
