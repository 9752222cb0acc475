"""Options for small GPUs (#26): attention slicing is recorded and part of the run key; CPU offload is refused on
CPU in one line and recorded where it runs."""

import json
from dataclasses import replace
from io import BytesIO

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.generate.config import GenerateConfig, command_line
from medisyn_cli.generate.run import run_generate
from medisyn_cli.pipeline.load import load_pipeline


def config(tiny_model, manifest, out, **options) -> GenerateConfig:
    return GenerateConfig(
        manifest=str(manifest), n=4, out=str(out), model=str(tiny_model), steps=2, batch_size=2, **options
    )


def pixels(out) -> list:
    rows = pd.read_parquet(out / "parquet").sort_values("id")
    return [np.asarray(Image.open(BytesIO(r["image"]["bytes"])), int) for _, r in rows.iterrows()]


def test_attention_slicing_keeps_the_images_is_recorded_and_keyed(tiny_model, manifest, tmp_path):
    plain = run_generate(config(tiny_model, manifest, tmp_path / "plain"), show_progress=False)
    sliced_config = config(tiny_model, manifest, tmp_path / "sliced", attention_slicing=True)
    sliced = run_generate(sliced_config, show_progress=False)
    for a, b in zip(pixels(plain.out), pixels(sliced.out)):
        assert np.abs(a - b).max() <= 2
    run = json.loads((sliced.out / "run.json").read_text())
    assert run["speed"]["attention_slicing"] is True and run["speed"]["offload"] == "none"
    assert run["key"]["attention_slicing"] is True
    assert "attention_slicing" not in json.loads((plain.out / "run.json").read_text())["key"]
    assert "--attention-slicing" in command_line(sliced_config)
    with pytest.raises(MedisynError, match="attention_slicing: True there, None now"):
        run_generate(replace(sliced_config, attention_slicing=False, resume=True), show_progress=False)


def test_offload_on_cpu_or_an_unknown_mode_is_one_line_exit_2(tiny_model, manifest, tmp_path):
    for mode, words in (("model", "needs a GPU"), ("layers", "unknown mode 'layers'")):
        result = CliRunner().invoke(
            app,
            [
                "generate",
                "--manifest",
                str(manifest),
                "--n",
                "3",
                "--model",
                str(tiny_model),
                "--device",
                "cpu",
                "--offload",
                mode,
                "--out",
                str(tmp_path / mode),
                "--no-progress",
            ],
        )
        assert result.exit_code == 2 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / mode / "run.json").exists()


def test_load_pipeline_without_offload_puts_the_pipeline_on_the_device(tiny_model):
    pipe = load_pipeline(str(tiny_model), torch.device("cpu"), torch.float32, offload="none")
    assert pipe.device.type == "cpu" and pipe._execution_device.type == "cpu"


def test_weight_hashes_are_read_once_per_file_version(tiny_model, tmp_path, monkeypatch):
    import shutil

    import medisyn_cli.pipeline.load as load

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    monkeypatch.setenv("MEDISYN_CACHE", str(tmp_path / "cache"))
    reads = []
    hash_file = load.file_sha256
    monkeypatch.setattr(load, "file_sha256", lambda path: reads.append(path) or hash_file(path))
    first = load.weight_hashes(str(model))
    assert len(reads) == len(first) >= 3 and load.weight_hashes(str(model)) == first
    assert len(reads) == len(first)  # the second time from the cache
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")  # same size, new content and mtime
    changed = load.weight_hashes(str(model))
    assert len(reads) == len(first) + 1
    assert (
        changed["unet/diffusion_pytorch_model.safetensors"]
        != first["unet/diffusion_pytorch_model.safetensors"]
    )
    (tmp_path / "cache" / "weights-sha256.json").write_text("[not json")
    assert load.weight_hashes(str(model)) == changed  # a broken cache is hashed again, not an error
