"""bf16 on a CPU: one UNet-sized convolution and linear layer at 512 px (64x64 latents), fp32 vs bf16 autocast
(what `generate --dtype bf16` runs on CPU), to show whether this CPU has bfloat16 instructions or emulates them.

    OMP_NUM_THREADS=1 python benchmarks/bf16_cpu.py

Writes benchmarks/results/real_size/bf16_cpu.txt.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "real_size" / "bf16_cpu.txt"


def seconds(call, bf16: bool, repeats: int = 2) -> float:
    """Mean seconds of `call` after one warm-up, under bf16 autocast or not."""
    import torch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    import torch

    torch.manual_seed(0)
    conv, latents = torch.nn.Conv2d(320, 320, 3, padding=1), torch.randn(1, 320, 64, 64)
    linear, tokens = torch.nn.Linear(1280, 1280), torch.randn(4096, 1280)
    lines = [
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"bfloat16 instructions: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}",
    ]
    for name, call in (
        ("conv2d 320->320 3x3 on 64x64 latents", lambda: conv(latents)),
        ("linear 1280->1280 on 4096 tokens", lambda: linear(tokens)),
    ):
        fp32, bf16 = seconds(call, False), seconds(call, True)
        lines.append(
            f"{name:<40} fp32 {fp32 * 1000:9.1f} ms  bf16 {bf16 * 1000:9.1f} ms  ({bf16 / fp32:.0f}x)"
        )
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
