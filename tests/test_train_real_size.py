"""`medisyn train --lora` at real size (#26), on CPU: the SD-1.5-shaped pipeline with random weights
(benchmarks/real_size_models.py), 512 px training images, then `generate --lora` with the adapter it saved."""

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

# ~10 minutes and ~9 GB on a 2-core CPU: run on request, like tests/test_real_size.py
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
