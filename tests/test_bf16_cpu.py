"""`generate --dtype bf16` on a CPU without bfloat16 instructions warns, before the model loads, that bf16 is
emulated there (a 512 px UNet convolution ran 208x slower than fp32 on this project's AVX2 machine, #26);
tests/test_bundled.py shows bf16 generation itself works."""

from __future__ import annotations

import pytest

import medisyn_cli.generate.run as run_module
from medisyn_cli.generate.config import GenerateConfig


class ModelLoads(Exception):
    """Raised where the model would load: the test needs only what happens before."""


def load_pipeline(*args, **kwargs):
    raise ModelLoads


@pytest.mark.parametrize("native", [False, True], ids=["emulated", "native"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_bf16_on_a_cpu_without_bfloat16_instructions_warns(tmp_path, monkeypatch, capsys, native, dtype):
    monkeypatch.setattr(run_module, "native_bf16", lambda: native)
    monkeypatch.setattr(run_module, "load_pipeline", load_pipeline)
    manifest = tmp_path / "one.csv"
    manifest.write_text("label,prompt,mode\nnormal,frontal pediatric chest x-ray with no pneumonia,L\n")
    config = GenerateConfig(
        manifest=str(manifest), n=1, out=str(tmp_path / "out"), steps=1, dtype=dtype, device="cpu"
    )
    with pytest.raises(ModelLoads):
        run_module.run_generate(config, show_progress=False)
    warned = "no bfloat16 instructions" in capsys.readouterr().err
    assert warned == (dtype == "bf16" and not native)
