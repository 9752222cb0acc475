"""Training: loss goes down, the saved pipeline loads and generates, resume continues, bad data is refused."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.train.loop import TrainConfig, train

DATA = Path(__file__).parent / "fixtures" / "images"


def tiny(out: Path, **options) -> TrainConfig:
    base = dict(
        data=(str(DATA),),
        out=str(out),
        config="tiny",
        resolution=32,
        steps=40,
        vae_steps=30,
        batch_size=8,
        lr=2e-3,
        checkpoint_every=20,
        validate_every=40,
        mixed_precision="no",
    )
    return TrainConfig(**{**base, **options})


def losses(out: Path) -> list[float]:
    with open(out / "loss.csv") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "model"
    return train(tiny(out), show_progress=False)


def test_training_lowers_the_loss_and_reports(trained):
    values = losses(trained.model_dir)
    assert len(values) == 40 == trained.steps
    assert np.mean(values[-10:]) < np.mean(values[:10])
    assert trained.vae_psnr > 12
    info = json.loads((trained.model_dir / "training.json").read_text())
    assert info["train_images"] == 12 and info["steps"] == 40
    assert (trained.model_dir / "loss.png").stat().st_size > 0
    assert (trained.model_dir / "samples" / "step-000040.png").exists()
    weights = trained.model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    mask = os.umask(0)
    os.umask(mask)
    assert weights.stat().st_mode & 0o777 == 0o666 & ~mask, (
        "the umask decides, not safetensors' owner-only mode"
    )


def test_saved_pipeline_loads_with_diffusers_and_generates(trained, tmp_path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(trained.model_dir)
    image = pipe(
        "light microscopy of a stained peripheral blood smear centred on a platelet",
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()

    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate

    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "label,prompt\nplatelet,light microscopy of a stained peripheral blood smear centred on a "
        "platelet\nnormal,frontal pediatric chest x-ray with no pneumonia\n"
    )
    summary = run_generate(
        GenerateConfig(
            manifest=str(manifest), n=2, out=str(tmp_path / "o"), model=str(trained.model_dir), steps=2
        ),
        show_progress=False,
    )
    assert sum(c.written for c in summary.counts.values()) == 2


def test_resume_continues_the_step_count(tmp_path):
    out = tmp_path / "model"
    train(tiny(out, steps=20, validate_every=0), show_progress=False)
    first = losses(out)
    result = train(tiny(out, steps=30, validate_every=0, resume=True), show_progress=False)
    resumed = losses(out)
    assert result.steps == 30 and len(resumed) == 30 and resumed[:20] == first


def test_resume_with_other_options_is_refused(tmp_path):
    out = tmp_path / "model"
    train(tiny(out, steps=2, vae_steps=2, validate_every=0), show_progress=False)
    with pytest.raises(MedisynError, match="options differ .*lr"):
        train(tiny(out, steps=4, vae_steps=2, validate_every=0, lr=1e-4, resume=True), show_progress=False)
    with pytest.raises(MedisynError, match="not empty"):
        train(tiny(out, steps=4, vae_steps=2, validate_every=0), show_progress=False)


def test_balance_draws_every_caption_equally_often():
    from medisyn_cli.train.step import caption_weights, draw_batch

    caption_index = torch.tensor([0] * 90 + [1] * 10)
    assert (
        draw_batch(None, 100, 5, torch.Generator().manual_seed(0)).tolist()
        == torch.randint(0, 100, (5,), generator=torch.Generator().manual_seed(0)).tolist()
    )
    assert torch.equal(caption_weights(caption_index, 0.0), torch.ones(100, dtype=torch.float64))
    share = {}
    for power in (0.5, 1.0):
        drawn = draw_batch(
            caption_weights(caption_index, power), 100, 20000, torch.Generator().manual_seed(0)
        )
        share[power] = float((caption_index[drawn] == 1).double().mean())
    assert abs(share[1.0] - 0.5) < 0.02
    assert (
        abs(share[0.5] - 0.25) < 0.02
    )  # weights 1/sqrt(90) vs 1/sqrt(10): 10/sqrt(10) : 90/sqrt(90) = 1 : 3


def test_balanced_run_resumes_and_old_runs_without_the_option_still_resume(tmp_path):
    out = tmp_path / "model"
    train(tiny(out, steps=2, vae_steps=2, validate_every=0, balance=1.0), show_progress=False)
    with pytest.raises(MedisynError, match="options differ .*balance"):
        train(tiny(out, steps=3, vae_steps=2, validate_every=0, resume=True), show_progress=False)
    assert (
        train(
            tiny(out, steps=3, vae_steps=2, validate_every=0, balance=1.0, resume=True), show_progress=False
        ).steps
        == 3
    )
    old = tmp_path / "old"
    train(tiny(old, steps=2, vae_steps=2, validate_every=0), show_progress=False)
    saved = old / "_work" / "config.json"
    options = json.loads(saved.read_text())
    del options["balance"]
    saved.write_text(json.dumps(options))
    assert (
        train(tiny(old, steps=3, vae_steps=2, validate_every=0, resume=True), show_progress=False).steps == 3
    )
    with pytest.raises(MedisynError, match="--balance: 2.0 is not between 0"):
        train(tiny(tmp_path / "bad", balance=2.0), show_progress=False)


def test_corrupt_images_are_skipped_and_listed(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    (data / "images" / "platelet_00004_12.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = train(
        tiny(tmp_path / "m", data=(str(data),), steps=2, vae_steps=2, validate_every=0), show_progress=False
    )
    assert result.images == 11 and [Path(k).name for k, _ in result.skipped] == ["platelet_00004_12.png"]


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(MedisynError, match="no such file or folder"):
        train(tiny(tmp_path / "m", data=(str(tmp_path / "nothing"),)), show_progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedisynError, match="no images found"):
        train(tiny(tmp_path / "m2", data=(str(empty),)), show_progress=False)
    nocap = tmp_path / "nocap"
    shutil.copytree(DATA / "images", nocap / "images")
    (nocap / "metadata.csv").write_text("file_name\nimages/platelet_00004_12.png\n")
    with pytest.raises(MedisynError, match="no caption"):
        train(tiny(tmp_path / "m3", data=(str(nocap),)), show_progress=False)
    with pytest.raises(MedisynError, match="only 12 readable images; need at least 50"):
        train(tiny(tmp_path / "m4", min_images=50), show_progress=False)
    assert not any((tmp_path / name).exists() for name in ("m", "m2", "m3", "m4"))


def test_label_folders_get_captions_from_the_template(tmp_path):
    from medisyn_cli.core.datasets import read_records

    for label in ("normal", "pneumonia"):
        (tmp_path / label).mkdir()
        shutil.copy(next((DATA / "images").glob("te_*")), tmp_path / label / "a.png")
    records = read_records([tmp_path], caption_template="chest x-ray, {label}")
    assert sorted(r.caption for r in records) == ["chest x-ray, normal", "chest x-ray, pneumonia"]


def test_fine_tuning_a_base_pipeline_keeps_vae_and_text_encoder_frozen(tiny_model, tmp_path):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    result = train(
        tiny(tmp_path / "ft", base=str(tiny_model), resolution=16, steps=4, validate_every=0),
        show_progress=False,
    )
    assert result.steps == 4 and result.vae_psnr is None
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        before, after = load_file(tiny_model / part), load_file(tmp_path / "ft" / part)
        assert all(torch.equal(before[k], after[k]) for k in before), part
    unet_before = load_file(tiny_model / "unet/diffusion_pytorch_model.safetensors")
    unet_after = load_file(tmp_path / "ft" / "unet/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    assert DiffusionPipeline.from_pretrained(tmp_path / "ft").unet.config.sample_size == 8


def test_fp16_saved_model_loads_and_samples_with_plain_diffusers(tiny_model, tmp_path):
    from diffusers import DiffusionPipeline

    train(
        tiny(
            tmp_path / "half",
            base=str(tiny_model),
            resolution=16,
            steps=2,
            validate_every=0,
            save_dtype="fp16",
        ),
        show_progress=False,
    )
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "half")  # no dtype argument, as a user would
    assert {pipe.text_encoder.dtype, pipe.unet.dtype} == {torch.float32}
    image = pipe(
        "frontal chest x-ray",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.shape == (16, 16, 3)


def test_cli_train_runs_and_reports_bad_data_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from medisyn_cli.cli.main import app

    args = [
        "train",
        str(DATA),
        "--out",
        str(tmp_path / "m"),
        "--config",
        "tiny",
        "--resolution",
        "32",
        "--steps",
        "2",
        "--vae-steps",
        "2",
        "--batch-size",
        "4",
        "--validate-every",
        "0",
        "--mixed-precision",
        "no",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "final_loss" in result.output and (tmp_path / "m" / "model_index.json").exists()
    bad = CliRunner().invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "n")])
    assert bad.exit_code == 2 and "no such file or folder" in bad.output
    bad = CliRunner().invoke(app, [*args[:3], str(tmp_path / "o"), "--config", "huge"])
    assert bad.exit_code == 2 and "unknown config 'huge'" in bad.output
    again = CliRunner().invoke(
        app, [*args[:3], str(tmp_path / "p"), *args[4:-1], "bf16"]
    )  # same process, bf16
    assert again.exit_code == 0, again.output
