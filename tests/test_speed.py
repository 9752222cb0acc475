"""Speed work (#7): prompts encoded once per run, writing overlapped with generation, speed options, batch size."""

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import medisyn_cli.generate.worker as runner_module
from medisyn_cli.cli.main import app
from medisyn_cli.core.batching import batched
from medisyn_cli.dataset.manifest import load_manifest
from medisyn_cli.generate.config import GenerateConfig, command_line
from medisyn_cli.generate.plan import iter_jobs, quotas
from medisyn_cli.generate.run import run_generate
from medisyn_cli.generate.sampler import PromptCache, Renderer, Settings, generate_batch
from medisyn_cli.generate.worker import Lane
from medisyn_cli.pipeline.load import load_pipeline
from medisyn_cli.pipeline.speed import CPU_BATCH, choose_batch_size, cpu_batch, fit_batch

SETTINGS = Settings(steps=2, guidance=7.5, height=16, width=16)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return load_pipeline(str(tiny_model), torch.device("cpu"), torch.float32)


def jobs_of(manifest: Path, n: int):
    m = load_manifest(manifest)
    return list(iter_jobs(m, quotas(m.weights(), n), seed=0))


def count_text_encoder_calls(pipe) -> list:
    calls = []
    handle = pipe.text_encoder.register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0])
    )
    return calls, handle


def test_each_distinct_prompt_is_encoded_once_per_run(pipe, manifest):
    jobs = jobs_of(manifest, 12)
    distinct = {(j.prompt, j.negative_prompt) for j in jobs}
    batches = list(batched(iter(jobs), 4))
    calls, handle = count_text_encoder_calls(pipe)
    try:
        cached = Renderer(pipe, SETTINGS)
        with_cache = [g for batch in batches for g in generate_batch(cached, batch)]
        encoded_with_cache = len(calls)
        calls.clear()
        plain = Renderer(pipe, SETTINGS, cache_prompts=False)
        without = [g for batch in batches for g in generate_batch(plain, batch)]
    finally:
        handle.remove()
    assert 1 < len(distinct) < len(jobs)
    assert encoded_with_cache == 2 * len(distinct)  # the prompt and its negative, once each
    assert len(calls) == 2 * len(batches)  # without the cache: every batch, every time
    assert cached.prompts.encoded == len(distinct) and cached.prompts.hits == len(jobs) - len(distinct)
    for a, b in zip(with_cache, without):
        assert a.job.id == b.job.id and a.seed == b.seed
        assert np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).max() <= 1


def test_prompt_cache_forgets_the_least_recently_used_beyond_its_size(pipe):
    cache = PromptCache(pipe, guidance=7.5, size=2)
    for prompt in (
        "frontal chest x-ray",
        "dermoscopy image of melanoma",
        "frontal chest x-ray",
        "dermoscopy image of benign melanocytic nevus",
    ):
        cache.embeddings([prompt], [""])
    assert list(cache.cache) == [
        ("frontal chest x-ray", ""),
        ("dermoscopy image of benign melanocytic nevus", ""),
    ]
    assert cache.encoded == 3 and cache.hits == 1
    assert PromptCache(pipe, guidance=1.0).embeddings(["frontal chest x-ray"], [""]).keys() == {
        "prompt_embeds"
    }


def test_pipelines_without_prompt_embeddings_get_strings():
    class Plain:
        def __call__(self, prompt, negative_prompt=None, **kwargs):
            return None

    assert not PromptCache.supports(Plain())
    assert Renderer(Plain(), SETTINGS).prompts is None


def intervals(monkeypatch, pause: float) -> dict:
    """Record when the model renders and when a batch is screened and written (which is made slow)."""
    seen = {"render": [], "write": []}
    render_call, make_batch = Renderer.__call__, runner_module.BatchWorker.finish

    def render(self, *args):
        start = time.perf_counter()
        result = render_call(self, *args)
        seen["render"].append((start, time.perf_counter(), threading.current_thread().name))
        return result

    def write(*args, **kwargs):
        start = time.perf_counter()
        time.sleep(pause)
        record = make_batch(*args, **kwargs)
        seen["write"].append((start, time.perf_counter(), threading.current_thread().name))
        return record

    monkeypatch.setattr(Renderer, "__call__", render)
    monkeypatch.setattr(runner_module.BatchWorker, "finish", write)
    return seen


def overlapping(a: list, b: list) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1, _ in a for s2, e2, _ in b)


def generate(tiny_model, manifest, out: Path, **options):
    config = GenerateConfig(
        manifest=str(manifest),
        n=options.pop("n", 12),
        out=str(out),
        model=str(tiny_model),
        steps=2,
        batch_size=options.pop("batch_size", 3),
        **options,
    )
    return run_generate(config, show_progress=False)


def content(out: Path) -> list:
    frame = pd.read_parquet(out / "parquet")
    return [(r["id"], r["seed"], r["image"]["bytes"]) for _, r in frame.iterrows()]


def test_batches_are_written_while_the_model_makes_the_next_and_the_data_is_the_same(
    tiny_model, manifest, tmp_path, monkeypatch
):
    seen = intervals(monkeypatch, pause=0.3)
    generate(tiny_model, manifest, tmp_path / "overlap", overlap=True)
    assert len(seen["write"]) == 4 and {name for _, _, name in seen["write"]} == {"medisyn-write_0"}
    assert overlapping(seen["render"], seen["write"])
    seen["render"].clear(), seen["write"].clear()
    generate(tiny_model, manifest, tmp_path / "serial")  # on CPU the default is no overlap
    assert {name for _, _, name in seen["write"]} == {"MainThread"}
    assert not overlapping(seen["render"], seen["write"])
    assert content(tmp_path / "overlap") == content(tmp_path / "serial")
    assert (tmp_path / "overlap" / "imagefolder" / "metadata.csv").read_bytes() == (
        tmp_path / "serial" / "imagefolder" / "metadata.csv"
    ).read_bytes()


def test_a_failing_model_still_lets_the_batch_in_the_lane_finish(tiny_model, manifest, tmp_path, monkeypatch):
    render_call, calls = Renderer.__call__, []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return render_call(self, *args)

    monkeypatch.setattr(Renderer, "__call__", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        generate(tiny_model, manifest, tmp_path / "out", overlap=True)
    assert sorted(p.name for p in (tmp_path / "out" / "_work" / "done").iterdir()) == ["b-0000000.json"]
    monkeypatch.undo()
    summary = generate(tiny_model, manifest, tmp_path / "out", resume=True)
    assert summary.complete and sum(c.written for c in summary.counts.values()) == 12


def test_an_error_in_the_lane_is_raised_in_the_caller():
    with pytest.raises(ValueError, match="disk full"):
        with Lane() as lane:
            lane.submit(lambda: (_ for _ in ()).throw(ValueError("disk full")))
            lane.submit(lambda: None)
    order = []
    with Lane(enabled=False) as lane:
        lane.submit(lambda: order.append(threading.current_thread().name))
    assert order == ["MainThread"]


def test_speed_options_keep_the_images_and_are_recorded(tiny_model, manifest, tmp_path):
    plain = generate(tiny_model, manifest, tmp_path / "plain", n=6)
    fast = generate(
        tiny_model, manifest, tmp_path / "fast", n=6, channels_last=True, vae_slicing=True, vae_tiling=True
    )
    for (id_a, seed_a, png_a), (id_b, seed_b, png_b) in zip(content(plain.out), content(fast.out)):
        from io import BytesIO

        from PIL import Image

        a, b = (np.asarray(Image.open(BytesIO(png)), int) for png in (png_a, png_b))
        assert id_a == id_b and seed_a == seed_b and np.abs(a - b).max() <= 2
    speed = json.loads((fast.out / "run.json").read_text())["speed"]
    assert speed["channels_last"] and speed["vae_slicing"] and speed["vae_tiling"] and not speed["compile"]
    assert "AttnProcessor2_0" in speed["attention"] and speed["batch_size_from"] == "given"


def test_compile_runs_the_unet_through_torch_compile(tiny_model, manifest, tmp_path):
    pytest.importorskip("torch._dynamo")
    summary = generate(tiny_model, manifest, tmp_path / "compiled", n=3, compile=True)
    run = json.loads((summary.out / "run.json").read_text())
    assert run["speed"]["compile"] and sum(c.written for c in summary.counts.values()) == 3


def test_batch_size_fits_free_memory_as_a_power_of_two():
    gib = 2**30
    assert fit_batch(10 * gib, gib) == 8  # 8 GiB usable -> 8 images
    assert fit_batch(10 * gib, 3 * gib) == 2
    assert fit_batch(gib, 2 * gib) == 1  # never below one
    assert fit_batch(1000 * gib, gib) == 64  # capped
    assert fit_batch(79 * gib, gib) == fit_batch(70 * gib, gib) == 32  # identical GPUs agree


def test_batch_size_is_chosen_when_not_given_and_a_resume_keeps_the_recorded_one(
    tiny_model, manifest, tmp_path
):
    assert choose_batch_size(None, torch.device("cpu"), 64 * 64)[0] == CPU_BATCH == cpu_batch(128 * 128) == 16
    assert [cpu_batch(side * side) for side in (256, 512, 1024)] == [4, 1, 1]
    config = GenerateConfig(
        manifest=str(manifest), n=40, out=str(tmp_path / "out"), model=str(tiny_model), steps=2
    )
    summary = run_generate(config, show_progress=False)
    run = json.loads((summary.out / "run.json").read_text())
    assert run["options"]["batch_size"] == CPU_BATCH and run["batches"]["count"] == 3
    assert run["speed"]["batch_size_from"] == "chosen (cpu: by image size)"
    assert "--batch-size" not in command_line(config)
    first = GenerateConfig(
        manifest=str(manifest),
        n=12,
        out=str(tmp_path / "sharded"),
        model=str(tiny_model),
        steps=2,
        batch_size=4,
        shard="0/2",
    )
    assert not run_generate(first, show_progress=False).complete
    second = run_generate(replace(first, batch_size=None, shard="1/2"), show_progress=False)
    assert second.complete and sum(c.written for c in second.counts.values()) == 12
    assert json.loads((second.out / "run.json").read_text())["batches"] == {"count": 3, "size": 4}


def test_cli_passes_the_speed_switches(tiny_model, manifest, tmp_path):
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
            "--steps",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--no-overlap",
            "--no-prompt-cache",
            "--channels-last",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["options"]["overlap"] is False and run["options"]["cache_prompts"] is False
    assert run["speed"]["channels_last"] is True
    line = command_line(GenerateConfig(**{**run["options"], "formats": tuple(run["options"]["formats"])}))
    assert "--no-overlap" in line and "--no-prompt-cache" in line and "--channels-last" in line
