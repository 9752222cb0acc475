"""How fast the model runs: memory layout, attention, compilation, VAE slicing/tiling, the batch size."""

from __future__ import annotations

from medisyn_cli.core.errors import MedisynError

CPU_BATCH = 16  # at 64 px on CPU, 2.7x batch 1's images/s; 32 adds 4% (benchmarks/batch_scaling.py)
CPU_PIXELS = 128 * 128  # up to this image size CPU_BATCH; larger images get proportionally smaller batches
MAX_BATCH = 64
HEADROOM = 0.8  # share of the free device memory a batch may use
# accelerate's CPU offload: one whole model on the GPU at a time, or one layer at a time
OFFLOAD = ("none", "model", "sequential")


def apply_speed_options(
    pipe,
    channels_last: bool = False,
    compile: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    attention_slicing: bool = False,
) -> dict:
    """Set the speed options on a loaded pipeline; returns what was applied (recorded in run.json)."""
    import torch

    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if attention_slicing:
        pipe.enable_attention_slicing()
    if compile:
        try:
            pipe.unet = torch.compile(pipe.unet, fullgraph=False)
        except RuntimeError as exc:  # e.g. a Python or platform torch.compile does not support
            raise MedisynError(f"--compile: torch.compile is not available here ({exc})") from exc
    return {
        "attention": attention_name(pipe),
        "channels_last": channels_last,
        "compile": compile,
        "vae_slicing": vae_slicing,
        "vae_tiling": vae_tiling,
        "attention_slicing": attention_slicing,
    }


def check_offload(offload: str, device) -> None:
    """--offload names one of OFFLOAD and needs an accelerator: on CPU the weights are in CPU memory already."""
    if offload not in OFFLOAD:
        raise MedisynError(f"--offload: unknown mode '{offload}' (choose from {', '.join(OFFLOAD)})")
    if offload != "none" and device.type == "cpu":
        raise MedisynError(
            f"--offload {offload}: needs a GPU (it keeps the weights in CPU memory and moves them to the GPU "
            f"when used); on CPU they are in CPU memory already"
        )


def offload_to(pipe, offload: str, device):
    """The pipeline on `device`, or with its weights in CPU memory moved to `device` when used (accelerate)."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    return pipe


def attention_name(pipe) -> str:
    """The UNet's attention implementation: diffusers uses PyTorch's scaled_dot_product_attention (SDPA) by default."""
    processors = getattr(pipe.unet, "attn_processors", {}) or {}
    names = sorted({type(p).__name__ for p in processors.values()})
    return ",".join(names) or "none"


def fit_batch(free_bytes: int, per_image_bytes: int, cap: int = MAX_BATCH, headroom: float = HEADROOM) -> int:
    """The largest power of two of images whose memory fits in `headroom` of the free memory (1 to `cap`).

    A power of two keeps the choice the same on identical GPUs whose free memory differs a little, so the shards of
    one run agree on the batch size.
    """
    if per_image_bytes <= 0:
        return cap
    fits = int(free_bytes * headroom // per_image_bytes)
    batch = 1
    while batch * 2 <= min(fits, cap):
        batch *= 2
    return batch


def choose_batch_size(render, device, pixels: int) -> tuple[int, str]:
    """The batch size when --batch-size is not given, and how it was chosen.

    On CUDA: two probe images measure the memory one image needs; the batch fills the free memory. On CPU and
    MPS: CPU_BATCH for images up to CPU_PIXELS, proportionally fewer for larger ones (memory grows with pixels).
    """
    if device.type != "cuda":
        return cpu_batch(pixels), f"{device.type}: by image size"
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    render(["probe", "probe"], ["", ""], [0, 1])
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - before) // 2)
    free, _ = torch.cuda.mem_get_info(device)
    batch = fit_batch(free, per_image)
    return batch, f"cuda: {per_image / 2**20:.0f} MiB per image, {free / 2**30:.1f} GiB free"


def cpu_batch(pixels: int) -> int:
    """CPU_BATCH up to CPU_PIXELS per image, then halved as the image grows (a power of two, at least 1)."""
    return fit_batch(CPU_BATCH * CPU_PIXELS, max(pixels, CPU_PIXELS), cap=CPU_BATCH, headroom=1.0)
