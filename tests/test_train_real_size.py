"""`medisyn train --lora` at real size (#26), on CPU: the SD-1.5-shaped pipeline with random weights
(benchmarks/real_size_models.py), 512 px training images, then `generate --lora` with the adapter it saved; and full
fine-tuning (--gradient-checkpointing --optimizer adafactor) that checkpoints and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# ~10 minutes and ~9 GB (LoRA), ~8 minutes and ~11 GB (full fine-tuning) on a 2-core CPU: run on request, like tests/test_real_size.py
# (`MEDISYN_REAL_SIZE=1 pytest -m slow tests/test_train_real_size.py`), not in CI's suite
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MEDISYN_REAL_SIZE") != "1", reason="real-size pipelines: set MEDISYN_REAL_SIZE=1"
    ),
]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def models():
    sys.path.insert(0, str(BENCHMARKS))
    import real_size_models

    return real_size_models


def medisyn(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """`medisyn ARGS` without a terminal; fails the test with its output on a non-zero exit."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-m", "medisyn_cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert done.returncode == 0, f"medisyn {' '.join(args)}: {done.stdout[-1500:]} {done.stderr[-3000:]}"
    return done


def test_sd15_lora_trains_at_512_px_and_generate_uses_the_adapter(tmp_path):
    build = models()
    model = build.real_size_model("sd15")
    data = build.training_images(tmp_path / "train", 512, per_class=2)  # 3 classes of dermoscopy
    adapter = tmp_path / "adapter"
    medisyn(
        "train", str(data), "--out", str(adapter), "--base", str(model), "--lora", "4", "--steps", "2",
        "--batch-size", "1", "--resolution", "512", "--validate-every", "0", "--mixed-precision", "no",
        "--caption-template", "dermoscopy image of {label}",
    )  # fmt: skip
    record = json.loads((adapter / "adapter.json").read_text())
    assert record["steps"] == 2 and record["train_images"] == 6 and np.isfinite(record["final_loss"])
    shapes = build_shapes(adapter / "pytorch_lora_weights.safetensors")
    assert shapes and all(4 in shape for shape in shapes.values())  # rank-4 factors only, no base weights
    assert len(list((adapter / "_work" / "latents").glob("*/chunk-*.npy"))) <= 2  # one image a chunk at 512

    manifest = tmp_path / "one.csv"
    manifest.write_text("label,prompt,mode\nmelanoma,dermoscopy image of melanoma,RGB\n")
    out = tmp_path / "generated"
    medisyn(
        "generate", "--manifest", str(manifest), "--n", "1", "--model", str(model), "--lora", str(adapter),
        "--steps", "2", "--device", "cpu", "--out", str(out), "--no-progress",
    )  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert str(adapter) in json.dumps(run)  # the adapter is recorded with the run
    rows = pd.read_parquet(out / "parquet")
    image = np.asarray(Image.open(BytesIO(rows.iloc[0]["image"]["bytes"])), np.float32) / 255
    assert (
        len(rows) == 1 and image.shape[:2] == (512, 512) and np.isfinite(image).all() and image.std() > 0.02
    )


def build_shapes(file: Path) -> dict:
    """Tensor name -> shape of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def test_sd15_full_fine_tuning_checkpoints_and_resumes_with_adafactor_and_gradient_checkpointing(tmp_path):
    """Every UNet weight trains (no --lora) at 512 px: 1 step and a checkpoint, then a --resume to step 2. Prints
    each run's seconds and peak RSS (benchmarks/results/real_size/full_finetune.txt)."""
    build = models()
    model = build.real_size_model("sd15")
    data = build.training_images(tmp_path / "train", 512, per_class=2)
    out = tmp_path / "model"
    options = [
        "train", str(data), "--out", str(out), "--base", str(model), "--batch-size", "1", "--resolution", "512",
        "--validate-every", "0", "--mixed-precision", "no", "--checkpoint-every", "1", "--no-ema",
        "--gradient-checkpointing", "--optimizer", "adafactor", "--caption-template", "dermoscopy image of {label}",
    ]  # fmt: skip
    measured(*options, "--steps", "1")
    checkpoint = out / "_work" / "checkpoints" / "step-000001"
    assert json.loads((checkpoint / "medisyn_state.json").read_text())["optimizer"] == "adafactor"
    unet = out / "unet" / "diffusion_pytorch_model.safetensors"
    trained_once, loss_once = one_tensor(unet), (out / "loss.csv").read_text().splitlines()
    # Adafactor's factored second moments: 0.53 of the UNet's size (a 3x3 kernel factors over its last two axes
    # only), a quarter of AdamW's two full fp32 moments
    assert (checkpoint / "optimizer.bin").stat().st_size < 0.6 * unet.stat().st_size
    second = measured(*options, "--steps", "2", "--resume")
    assert "resumed from" in second.stdout + second.stderr and "at step 1" in second.stdout + second.stderr
    loss = (out / "loss.csv").read_text().splitlines()
    assert loss[:2] == loss_once and len(loss) == 3 and np.isfinite(float(loss[2].split(",")[1]))
    assert not np.array_equal(one_tensor(unet), trained_once)  # step 2 changed the weights
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and record["config"]["gradient_checkpointing"] is True
    assert record["config"]["optimizer"] == "adafactor" and record["config"]["lora"] is None


def one_tensor(file: Path, name: str = "conv_in.weight") -> np.ndarray:
    """One tensor of a safetensors file, read without loading the rest."""
    from safetensors import safe_open

    with safe_open(str(file), framework="np") as handle:
        return handle.get_tensor(name)


def measured(*args: str) -> subprocess.CompletedProcess:
    """`medisyn ARGS` as medisyn() runs it, printing its seconds and peak RSS (the child's own, from wait4)."""
    import tempfile
    import time

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "medisyn_cli", *args], stdout=stdout, stderr=stderr, env=env
        )
        _, status, usage = os.wait4(child.pid, 0)  # reaps the child: its own peak RSS, unlike RUSAGE_CHILDREN
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)
        done = subprocess.CompletedProcess(
            args, child.returncode, stdout.read().decode(), stderr.read().decode()
        )
    seconds = time.perf_counter() - start
    print(f"medisyn {' '.join(args)}\n  seconds {seconds:.0f}  peak RSS {usage.ru_maxrss / 2**20:.2f} GB")
    assert done.returncode == 0, f"medisyn {' '.join(args)}: {done.stdout[-1500:]} {done.stderr[-3000:]}"
    return done
