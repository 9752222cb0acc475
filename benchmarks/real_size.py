"""medisyn at real size on CPU: an SD-1.5-shaped pipeline (random weights, benchmarks/real_size_models.py) at 512 px.

1. Stages: seconds per image in text encoding, UNet, VAE decode, screening and writing (the rest of
   `finish`: PNG encoding, both writers, done marker), measured inside `run_generate` by timing wrappers.
2. Overhead: `medisyn generate` (screening against a pixel index of 512 px training images, Parquet +
   ImageFolder) vs a bare loop of the same diffusers pipeline (same prompts, seeds, steps, guidance, batch
   size; images kept as PIL images), each in a fresh process, alternating, `--repeats` times; medians and
   their ratio. Both are timed from before the model loads to the last image.
3. Memory: peak RSS (ru_maxrss) of each of those processes and of `generate` at 2x --n (flat in n?); in one
   more process, the RSS above the loaded model while one batch of 2 renders (sampled every 5 ms) under each
   memory option (--attention-slicing, --vae-slicing, --vae-tiling).
4. Screening cost per image at 64, 512 and 1024 px (the embedder shrinks an image once, first).

    python benchmarks/real_size.py --n 1 --more-n 3 --steps 1 --repeats 2 --threads 1

Writes benchmarks/results/real_size/results.json and results.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from real_size_models import REPO, real_size_model, training_images

# two classes of the dermoscopy manifest, so that --n 2 makes one image of each
MANIFEST_TEXT = (
    "label,prompt,mode\n"
    "melanoma,dermoscopy image of melanoma,RGB\n"
    "nevus,dermoscopy image of benign melanocytic nevus,RGB\n"
)
RESULTS = REPO / "benchmarks" / "results" / "real_size"
GUIDANCE = 7.5
STAGES = ("text encoding", "unet", "vae decode", "screening", "writing")
RUN_STAGES = ("index", "consolidate")  # once a run, not per image


class Clock:
    """Seconds spent in each stage, added up by wrappers around the pipeline's modules and medisyn's steps."""

    def __init__(self):
        self.seconds = {stage: 0.0 for stage in STAGES + RUN_STAGES + ("load",)}

    def wrap(self, owner, name: str, stage: str) -> None:
        """Replace owner.name by a function that adds its run time to `stage`."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        setattr(owner, name, timed)

    def pipeline(self, pipe):
        """Time the text encoder(s), the UNet and the VAE decoder of a loaded pipeline."""
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                self.wrap(getattr(pipe, name), "forward", "text encoding")
        self.wrap(pipe.unet, "forward", "unet")
        self.wrap(pipe.vae, "decode", "vae decode")
        return pipe


def bare_loop(
    model: str, manifest: str, n: int, steps: int, size: int, batch_size: int, device: str, dtype: str
) -> dict:
    """The model's own cost: plain diffusers over the plan's prompts and seeds, images kept in memory."""
    start = time.perf_counter()
    import torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    from medisyn_cli.core.batching import batched
    from medisyn_cli.dataset.manifest import load_manifest
    from medisyn_cli.generate.plan import iter_jobs, quotas

    loading = time.perf_counter()  # imports are outside the model on both sides
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype, safety_checker=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++"
    )
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    clock = Clock()
    clock.pipeline(pipe)
    clock.seconds["load"] = time.perf_counter() - loading
    plan = load_manifest(manifest)
    images = []
    for jobs in batched(iter_jobs(plan, quotas(plan.weights(), n), 0), batch_size):
        generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
        negatives = [job.negative_prompt for job in jobs]
        images += pipe(
            prompt=[job.prompt for job in jobs],
            negative_prompt=negatives if any(negatives) else None,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            height=size,
            width=size,
            generator=generators,
        ).images
    _synchronize(device)
    return {"seconds": time.perf_counter() - start, "images": len(images), "stages": clock.seconds}


def medisyn_run(
    model: str, manifest: str, n: int, steps: int, size: int, index: str | None, out: str, **options
) -> dict:
    """`run_generate` with screening and both writers, its stages timed."""
    start = time.perf_counter()
    import medisyn_cli.generate.run as run_module
    import medisyn_cli.generate.worker as worker_module
    import medisyn_cli.pipeline.load as load_module
    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.screening.screener import Screener

    clock = Clock()
    # load: reading the weights (DiffusionPipeline.from_pretrained), as in the bare loop; imports are outside
    clock.wrap(load_module, "_load_folder", "load")
    load = run_module.load_pipeline
    run_module.load_pipeline = lambda *args, **kwargs: clock.pipeline(load(*args, **kwargs))
    clock.wrap(run_module, "open_index", "index")
    clock.wrap(run_module, "finish_run", "consolidate")
    clock.wrap(Screener, "check", "screening")
    clock.wrap(worker_module.BatchWorker, "finish", "writing")
    config = GenerateConfig(
        manifest=manifest,
        n=n,
        out=out,
        model=model,
        steps=steps,
        guidance=GUIDANCE,
        height=size,
        width=size,
        index=index,
        **options,
    )
    summary = run_module.run_generate(config, show_progress=False)
    _synchronize(options.get("device", "cpu"))
    seconds = dict(clock.seconds)
    seconds["writing"] -= seconds["screening"]  # finish = screening + writing (CPU: no overlap)
    run = json.loads((Path(out) / "run.json").read_text())
    return {
        "seconds": time.perf_counter() - start,
        "images": sum(c.written for c in summary.counts.values()),
        "rejected": sum(c.rejected for c in summary.counts.values()),
        "batch_size": run["options"]["batch_size"],
        "batch_size_from": run["speed"]["batch_size_from"],
        "stages": seconds,
    }


def memory_options(model: str, size: int, batch_size: int = 2) -> dict:
    """RSS above the loaded model, and seconds, of the stage each memory option changes: one UNet call with
    guidance (2 x batch_size rows) plain vs --attention-slicing; one VAE decode of batch_size latents plain vs
    --vae-slicing (--vae-tiling only acts above the VAE's tile size, 512 px for SD 1.5: not measured at 512)."""
    import torch

    from medisyn_cli.pipeline.load import load_pipeline

    pipe = load_pipeline(model, torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(0)
    side = size // pipe.vae_scale_factor
    latents = torch.randn(2 * batch_size, 4, side, side, generator=generator)
    text = torch.randn(2 * batch_size, 77, pipe.text_encoder.config.hidden_size, generator=generator)
    steps = {
        "unet": lambda: pipe.unet(latents, 999, encoder_hidden_states=text),
        "vae decode": lambda: pipe.vae.decode(latents[:batch_size] / pipe.vae.config.scaling_factor),
    }
    switches = {
        "unet": (pipe.enable_attention_slicing, pipe.disable_attention_slicing, "attention_slicing"),
        "vae decode": (pipe.vae.enable_slicing, pipe.vae.disable_slicing, "vae_slicing"),
    }
    results = {}
    for stage, call in steps.items():
        enable, disable, name = switches[stage]
        for option in ("none", name):
            (enable if option == name else disable)()
            start = time.perf_counter()
            with torch.inference_mode(), PeakRSS() as peak:
                call()
            results[f"{stage}: {option}"] = {
                "extra_gb": peak.extra / 2**30,
                "seconds": time.perf_counter() - start,
            }
            print(f"{stage}: {option}", results[f"{stage}: {option}"], file=sys.stderr, flush=True)
    return results


class PeakRSS:
    """Highest resident set size above the one at entry, sampled every 5 ms by a thread."""

    def __enter__(self):
        import threading

        self.start = self.peak = _rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.extra = max(self.peak, _rss()) - self.start


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def child(args) -> None:
    """Run one measurement in this fresh process; print its JSON result with the process's peak RSS."""
    spec = json.loads(args.child)
    kind = spec.pop("kind")
    run = {"bare": bare_loop, "medisyn": medisyn_run, "options": memory_options}[kind]
    result = run(**spec)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    import torch

    if torch.cuda.is_available():
        result["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result), flush=True)


def run_child(spec: dict, threads: int | None) -> dict:
    """One measurement in a fresh process (model load, caches and peak RSS its own)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"child {spec} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def screening_cost(index: Path, sizes: tuple[int, ...], count: int, work: Path) -> dict:
    """Seconds per image of Screener.check (embedding + search) on `count` real images upsampled to each size."""
    from PIL import Image

    from medisyn_cli.screening.index import load_index
    from medisyn_cli.screening.screener import Screener

    screener = Screener(load_index(index))
    costs = {}
    for size in sizes:
        folder = training_images(work / f"queries-{size}", size, per_class=count // 3 + 1, offset=40)
        images = [Image.open(p).convert("RGB") for p in sorted(folder.rglob("*.png"))][:count]
        screener.check(images[:2])  # warm-up
        start = time.perf_counter()
        results = screener.check(images)
        costs[size] = {
            "seconds_per_image": (time.perf_counter() - start) / len(images),
            "images": len(images),
            "near_copies": sum(r.near_copy for r in results),
        }
    return costs


def measure(args, work: Path) -> dict:
    """Every measurement of the module docstring, most telling first; raw results saved after each step."""
    from medisyn_cli.screening.build import build_index

    model = str(real_size_model("sd15"))
    train = training_images(work / "train", args.size, per_class=args.train_per_class)
    index = work / "index"
    build_index([train], index, show_progress=False)
    manifest = work / "derm.csv"
    lines = MANIFEST_TEXT.splitlines()
    manifest.write_text("\n".join(lines[: 1 + args.classes]) + "\n")
    common = {"model": model, "manifest": str(manifest), "n": args.n, "steps": args.steps, "size": args.size}
    medisyn = {**common, "kind": "medisyn", "index": str(index), "batch_size": 1}
    bare = {**common, "kind": "bare", "batch_size": 1, "device": "cpu", "dtype": "fp32"}
    raw: dict = {"runs": {"bare diffusers loop": [], "medisyn generate": []}}
    if not args.overhead_only:
        raw["screening"] = screening_cost(index, (64, 512, 1024), args.screen_images, work)
        save(args, raw)
    raw["load_average"] = [round(x, 2) for x in os.getloadavg()]
    for repeat in range(args.repeats):
        pair = [
            ("bare diffusers loop", bare),
            ("medisyn generate", {**medisyn, "out": str(work / f"out-{repeat}")}),
        ]
        for name, spec in pair if repeat % 2 == 0 else pair[::-1]:  # alternating: neither side always first
            raw["runs"][name].append(run_child(spec, args.threads))
            save(args, raw)
        if repeat == 0 and not args.overhead_only:
            raw["options"] = run_child({"kind": "options", "model": model, "size": args.size}, args.threads)
            save(args, raw)
            more = {**medisyn, "n": args.more_n, "out": str(work / "out-more")}
            raw["more_n"] = run_child(more, args.threads)
            save(args, raw)
    return raw


def save(args, raw: dict) -> None:
    """The raw results so far (a run cut short keeps what it measured)."""
    (args.out / f"{_stem(args)}raw.json").write_text(json.dumps(raw, indent=2) + "\n")
    print(json.dumps(raw)[:2000], flush=True)


def _stem(args) -> str:
    """File name prefix: the overhead-only runs keep their own files (overhead_n2_steps2_raw.json ...)."""
    return f"overhead_n{args.n}_steps{args.steps}_" if args.overhead_only else ""


def summarise(raw: dict, args) -> dict:
    """Medians, the overhead ratio, per-image stage seconds and the memory table."""
    median = {name: statistics.median(r["seconds"] for r in runs) for name, runs in raw["runs"].items()}
    generate = raw["runs"]["medisyn generate"]
    images = generate[0]["images"]
    stages = {s: statistics.median(r["stages"][s] for r in generate) / images for s in STAGES}
    once = {s: statistics.median(r["stages"].get(s, 0.0) for r in generate) for s in RUN_STAGES}
    outside = {name: statistics.median(_outside_model(r) for r in runs) for name, runs in raw["runs"].items()}
    pairs = [
        m["seconds"] / b["seconds"]
        for b, m in zip(raw["runs"]["bare diffusers loop"], raw["runs"]["medisyn generate"])
    ]
    return {
        "model": "sd15-shaped (random weights): UNet 860M, CLIP ViT-L/14 text encoder, VAE 84M; fp32",
        "size": args.size,
        "n": args.n,
        "steps": args.steps,
        "guidance": GUIDANCE,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "seconds_median": median,
        "load_average": raw.get("load_average"),
        "ratio": median["medisyn generate"] / median["bare diffusers loop"],
        "ratios_per_repeat": pairs,
        "ratio_median_of_repeats": statistics.median(pairs),
        # on a shared CPU the model's own compute varies between processes by more than medisyn adds; this ratio
        # charges the bare loop's time with what medisyn spends outside the model's compute (imports, reading the
        # weights, index, screening, writing, run records, consolidation) beyond what the bare loop spends there
        "seconds_outside_model_median": outside,
        "ratio_outside_model": 1
        + (outside["medisyn generate"] - outside["bare diffusers loop"]) / median["bare diffusers loop"],
        "seconds_per_image_by_stage": stages,
        "stage_share": {s: v / (median["medisyn generate"] / images) for s, v in stages.items()},
        "seconds_per_run_by_stage": once,
        "peak_rss_gb": {
            f"generate --n {args.n}": generate[0]["peak_rss_gb"],
            f"generate --n {args.more_n}": raw["more_n"]["peak_rss_gb"] if "more_n" in raw else None,
            "bare diffusers loop": raw["runs"]["bare diffusers loop"][0]["peak_rss_gb"],
        },
        "extra_rss_gb_batch_2_by_option": {
            k: v["extra_gb"] for k, v in raw.get("options", {}).items() if isinstance(v, dict)
        },
        "seconds_batch_2_by_option": {
            k: v["seconds"] for k, v in raw.get("options", {}).items() if isinstance(v, dict)
        },
        "screening_seconds_per_image_by_px": {
            size: v["seconds_per_image"] for size, v in raw.get("screening", {}).items()
        },
        "raw": raw,
    }


def _outside_model(run: dict) -> float:
    """Seconds of a run outside the model's compute (text encoding, UNet, VAE decode): imports and reading the
    weights (the same work on both sides, whichever side of the split each library's import falls), index,
    screening, writing, run records, consolidation."""
    model = ("text encoding", "unet", "vae decode")
    return run["seconds"] - sum(run["stages"][stage] for stage in model)


def text_table(result: dict) -> str:
    """The results as a few aligned lines."""
    lines = [
        f"{result['model']}, {result['size']} px, n={result['n']}, steps={result['steps']}, "
        f"guidance {result['guidance']}, {result['repeats']} repeats (alternating), threads "
        f"{result['threads']}, {result['machine']}, load average {result['load_average']}",
        "",
        "seconds (median):",
    ]
    lines += [f"  {k:<24} {v:8.1f}" for k, v in result["seconds_median"].items()]
    lines += [
        f"  ratio medisyn / bare: {result['ratio']:.3f} "
        f"(per repeat {', '.join(f'{r:.3f}' for r in result['ratios_per_repeat'])}; "
        f"median of repeats {result['ratio_median_of_repeats']:.3f})",
        "  seconds outside the model's compute, loading included (median): "
        + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds_outside_model_median"].items()),
        f"  ratio with the model's compute seconds taken from the bare loop: {result['ratio_outside_model']:.3f}",
        "",
        "seconds per image by stage (medisyn generate):",
    ]
    lines += [
        f"  {k:<16} {v:8.2f}  ({100 * result['stage_share'][k]:.1f}%)"
        for k, v in result["seconds_per_image_by_stage"].items()
    ]
    lines += [f"  {k:<16} {v:8.2f}  (once a run)" for k, v in result["seconds_per_run_by_stage"].items()]
    if not result["seconds_batch_2_by_option"] and not result["screening_seconds_per_image_by_px"]:
        return "\n".join(lines) + "\n"  # --overhead-only
    lines += ["", "peak RSS (GB):"]
    lines += [f"  {k:<24} {v:6.2f}" for k, v in result["peak_rss_gb"].items() if v is not None]
    lines += ["", "batch of 2 images, by stage and memory option: RSS above the loaded model (GB), seconds:"]
    lines += [
        f"  {k:<18} {v:6.2f} GB  {result['seconds_batch_2_by_option'][k]:7.1f} s"
        for k, v in result["extra_rss_gb_batch_2_by_option"].items()
    ]
    lines += ["", "screening (embed + search), seconds per image:"]
    lines += [
        f"  {k:>5} px  {v * 1000:8.1f} ms" for k, v in result["screening_seconds_per_image_by_px"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--more-n", type=int, default=3, help="--n of the run that shows RSS flat in n")
    parser.add_argument("--classes", type=int, default=1, choices=(1, 2))
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--screen-images", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="Only the alternating bare/medisyn runs (no memory options, --more-n or screening cost); "
        "writes overhead_n{N}_steps{S}_{raw,results}.json and .txt.",
    )
    parser.add_argument("--child", default=None)
    parser.add_argument(
        "--from-raw", type=Path, default=None, help="Summarise a raw.json again; measure nothing."
    )
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_raw:
        raw = json.loads(args.from_raw.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="medisyn-real-size-") as work:
            raw = measure(args, Path(work))
    result = summarise(raw, args)
    (args.out / f"{_stem(args)}results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{_stem(args)}results.txt").write_text(text_table(result))
    print(text_table(result))


if __name__ == "__main__":
    main()
