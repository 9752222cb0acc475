"""Bad input that can be caught without a model is caught before one loads: exit 2, one line, nothing written."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.files import to_json, write_json
from medisyn_cli.core.progress import make_progress
from medisyn_cli.dataset.manifest import load_manifest
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate
from medisyn_cli.generate.validate import prompt_warnings

REPO = Path(__file__).resolve().parents[1]
GOOD = "label,prompt\nmelanoma,dermoscopy image of melanoma\nnevus,dermoscopy image of benign melanocytic nevus\n"


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def one_line(output: str) -> bool:
    return output.count("error:") == 1


@pytest.mark.parametrize(
    "manifest, extra, message",
    [
        (GOOD, ["--height", "7"], "--height: 7 is not a multiple of 8"),
        (GOOD, ["--guidance", "nan"], "--guidance: must be a number"),
        (GOOD, ["--threshold", "inf", "--index", "idx"], "--threshold: inf is outside"),
        (GOOD, ["--threads", "0"], "--threads: must be at least 1"),
        ("label,prompt\n" + "x" * 300 + ",dermoscopy image\n", [], "must be at most 200 characters"),
        ("label,prompt,weight\nmelanoma,melanoma,1e308\nnevus,nevus,1\n", [], "column 'weight': '1e308'"),
        (
            "label,prompt\nmelanoma,{label:>99999999999}\n",
            [],
            "placeholder {label:>99999999999} has a format",
        ),
        (
            "label,prompt,label\nmelanoma,dermoscopy image,nevus\n",
            [],
            "column 'label' appears more than once",
        ),
    ],
)
def test_bad_generate_input_exits_2_before_the_model_loads(tmp_path, manifest, extra, message):
    (tmp_path / "m.csv").write_text(manifest)
    code, output = invoke(
        "generate",
        "--manifest",
        tmp_path / "m.csv",
        "--n",
        "4",
        "--out",
        tmp_path / "o",
        "--model",
        REPO / "medisyn_cli" / "bundled" / "mini",
        *extra,
    )
    assert code == 2 and message in output and one_line(output), output
    assert not (tmp_path / "o").exists()


def test_broken_models_are_one_line_errors(tmp_path):
    (tmp_path / "m.csv").write_text(GOOD)
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    only_index = tmp_path / "half"
    only_index.mkdir()
    shutil.copy(REPO / "medisyn_cli" / "bundled" / "mini" / "model_index.json", only_index)
    for model, message in (
        (garbage, "not a readable .safetensors file"),
        (only_index, "has no scheduler/ folder"),
    ):
        code, output = invoke(
            "generate",
            "--manifest",
            tmp_path / "m.csv",
            "--n",
            "4",
            "--out",
            tmp_path / "o",
            "--model",
            model,
        )
        assert code == 2 and message in output and one_line(output), output
        assert not (tmp_path / "o").exists()


def _no_unet_weights(model: Path) -> None:
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()


def _unet_config_of_another_size(model: Path) -> None:
    config = json.loads((model / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 7}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_no_unet_weights, "unet has config.json but no weights file"),
        (
            lambda m: (m / "unet" / "config.json").write_text('{"_class_name": "UNet2D'),
            "config.json: not valid JSON",
        ),
        (lambda m: (m / "unet" / "config.json").write_text("[]"), "config.json: holds a JSON list"),
        (lambda m: (m / "model_index.json").write_text(""), "model_index.json: not valid JSON"),
        (lambda m: (m / "model_index.json").write_text("{}"), "model_index.json: names no pipeline class"),
        (_unet_config_of_another_size, "not a loadable diffusers pipeline"),  # found only by loading it
    ],
)
def test_a_damaged_model_folder_is_one_line_naming_the_file_exit_2(tmp_path, damage, message):
    (tmp_path / "m.csv").write_text(GOOD)
    model = tmp_path / "model"
    shutil.copytree(REPO / "medisyn_cli" / "bundled" / "mini", model)
    damage(model)
    args = ["--manifest", tmp_path / "m.csv", "--n", "2", "--out", tmp_path / "o", "--model", model]
    code, output = invoke("generate", *args, "--steps", "1", "--no-progress")
    assert code == 2 and message in output and one_line(output), output
    assert str(model) in output and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "row, message",
    [
        (
            '{"label": "melanoma", "prompt": ["dermoscopy", "melanoma"]}',
            "column 'prompt': expected a string, got a JSON list",
        ),
        (
            '{"label": {"name": "melanoma"}, "prompt": "dermoscopy"}',
            "column 'label': expected a string, got a JSON object",
        ),
        ('{"label": 3, "prompt": "dermoscopy"}', "column 'label': expected a string, got a JSON number"),
        (
            '{"label": "melanoma", "prompt": "x", "negative_prompt": true}',
            "column 'negative_prompt': expected a string",
        ),
        (
            '{"label": "melanoma", "prompt": "{finding}", "finding": [1]}',
            "column 'finding': expected a string or a number",
        ),
    ],
)
def test_a_jsonl_value_that_is_not_text_is_one_line_naming_file_and_line(tmp_path, row, message):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"label": "nevus", "prompt": "dermoscopy image of benign nevus", "weight": 2}\n' + row + "\n"
    )
    code, output = invoke("generate", "--manifest", path, "--n", "4", "--out", tmp_path / "o", "--dry-run")
    assert code == 2 and f"{path}:2: {message}" in output and one_line(output), output
    path.write_text('{"label": "nevus", "prompt": "image of {finding}", "finding": 3, "weight": 2.5}\n')
    assert load_manifest(path).rows[0].prompt == "image of 3"


@pytest.mark.parametrize("scale", ["1e9", "-5", "4.01"])
def test_a_lora_scale_that_saturates_images_is_refused_before_the_model_loads(tmp_path, scale):
    from medisyn_cli.pipeline.lora import parse_spec

    (tmp_path / "m.csv").write_text(GOOD)
    adapter = tmp_path / "adapter"
    args = [
        "--manifest",
        tmp_path / "m.csv",
        "--n",
        "2",
        "--out",
        tmp_path / "o",
        "--lora",
        f"{adapter}:{scale}",
    ]
    code, output = invoke("generate", *args)
    assert code == 2 and f"scale {scale} is outside -4..4" in output and one_line(output), output
    assert not (tmp_path / "o").exists()
    assert [parse_spec(f"{adapter}:{s}")[1] for s in ("-4", "0.5", "4")] == [-4.0, 0.5, 4.0]


def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "m.csv").write_text(GOOD)
    (tmp_path / "file").write_text("")
    code, output = invoke(
        "generate", "--manifest", tmp_path / "m.csv", "--n", "4", "--out", tmp_path / "file" / "o"
    )
    assert code == 2 and "is a file, not a folder" in output


def test_train_and_screen_refuse_zero_counts(tmp_path):
    code, output = invoke(
        "train", REPO / "tests" / "fixtures" / "images", "--out", tmp_path / "m", "--steps", "0"
    )
    assert (
        code == 2
        and "--steps: must be at least 1" in output
        and not (tmp_path / "m" / "training.json").exists()
    )
    code, output = invoke(
        "screen", REPO / "tests" / "fixtures" / "images", "--index", tmp_path / "none", "--batch-size", "0"
    )
    assert code == 2 and "batch-size" in output


def test_a_hundred_million_image_dry_run_streams_the_plan(tmp_path):
    (tmp_path / "m.csv").write_text(GOOD)
    config = GenerateConfig(
        manifest=str(tmp_path / "m.csv"), n=10**8, batch_size=16, out=str(tmp_path / "o"), dry_run=True
    )
    summary = run_generate(config, show_progress=False)
    assert summary.counts["melanoma"].planned == 5 * 10**7 and len(summary.preview) == 20
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "n, extra, message",
    [
        (10**12, [], "--n: 1000000000000 images is more than one run makes (100,000,000)"),
        (5 * 10**7, [], "makes 50,000,000 batches, more than 10,000,000; give --batch-size 5 or more"),
        (5 * 10**7, ["--batch-size", "2"], "--batch-size 2 makes 25,000,000 batches"),
    ],
)
def test_an_n_one_run_cannot_make_is_refused_by_the_dry_run_too(tmp_path, n, extra, message):
    (tmp_path / "m.csv").write_text(GOOD)
    for dry in (["--dry-run"], []):  # refused before the model loads, so the dry run says it as well
        code, output = invoke(
            "generate", "--manifest", tmp_path / "m.csv", "--n", n, "--out", tmp_path / "o", *extra, *dry
        )
        assert code == 2 and message in output and one_line(output), output
        assert not (tmp_path / "o").exists()


def test_the_batches_left_are_counted_without_a_set_of_every_batch():
    import tracemalloc

    from medisyn_cli.core.shards import Shard
    from medisyn_cli.generate.run import Pending

    tracemalloc.start()
    pending = Pending(10**7, Shard(0, 3), done={3, 4, 5})  # shard 0 of 3: batches 0, 3, ..., 9999999
    images = pending.images(total=10**8 - 3, size=10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100_000  # bytes: a set of 3.3 million batch numbers takes over 100 MB
    # 3333334 batches of 10 images, one done, the last holding 7
    assert images == (3_333_334 - 1) * 10 - 3 and 6 in pending and 3 not in pending and 4 not in pending


def test_json_never_holds_nan(tmp_path):
    write_json(tmp_path / "a.json", {"loss": math.nan, "values": [1.0, math.inf], "ok": 2.5})
    assert json.loads((tmp_path / "a.json").read_text()) == {"loss": None, "values": [1.0, None], "ok": 2.5}
    assert "NaN" not in to_json({"x": float("nan")})


def test_manifests_far_from_the_bundled_model_warn_and_its_own_do_not():
    fundus = load_manifest(REPO / "prompts" / "fundus.csv")
    warnings = prompt_warnings(fundus, None)
    assert len(warnings) == len(fundus.labels) and "fundus" in " ".join(warnings)
    for manifest in sorted((REPO / "prompts").glob("mini_*.csv")):
        assert prompt_warnings(load_manifest(manifest), None) == [], manifest


def test_the_warning_reaches_the_dry_run_output(tmp_path):
    code, output = invoke("generate", "--manifest", REPO / "prompts" / "fundus.csv", "--n", "10", "--dry-run")
    assert code == 0 and "warning:" in output and "not in the model's training captions" in output


def test_progress_without_a_terminal_prints_counts_of_unknown_totals(capsys):
    with make_progress() as progress:
        task = progress.add_task("screen", total=None, rate="", info="")
        progress.update(task, completed=5, info="1 near-copies")
    assert "screen: 5 1 near-copies" in capsys.readouterr().err


@pytest.mark.slow
def test_screen_runs_in_a_batch_job_with_output_redirected(tmp_path):
    fixtures = REPO / "tests" / "fixtures"
    exe = shutil.which("medisyn") or str(Path(sys.executable).with_name("medisyn"))
    log = open(tmp_path / "log", "w")
    built = subprocess.run(
        [exe, "index", "build", str(fixtures / "images"), "--out", str(tmp_path / "idx")],
        stdout=log,
        stderr=log,
    )
    assert built.returncode == 0, (tmp_path / "log").read_text()
    screened = subprocess.run(
        [
            exe,
            "screen",
            str(fixtures / "screen"),
            "--index",
            str(tmp_path / "idx"),
            "--out",
            str(tmp_path / "rep"),
        ],
        stdout=log,
        stderr=log,
    )
    assert screened.returncode == 0, (tmp_path / "log").read_text()
    assert (tmp_path / "rep" / "screen.json").exists() and "screen:" in (tmp_path / "log").read_text()


def test_an_out_on_a_read_only_file_system_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "m.csv").write_text(GOOD)
    code, output = invoke(
        "generate", "--manifest", tmp_path / "m.csv", "--n", "4", "--out", "/proc/medisyn-test/out"
    )
    assert code == 2 and "--out /proc/medisyn-test/out: cannot write into /proc" in output, output
