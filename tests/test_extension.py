"""Extending medisyn from outside the package (#28): a third-party package adds an embedder, an output format
and an image check through entry points, and the installed `medisyn` command uses them end to end; the registries'
rules (unknown names, duplicates) as units."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.plugins import reset_plugins
from medisyn_cli.dataset.formats import get_format, register_format
from medisyn_cli.screening.checks import (
    Checks,
    NearCopyCheck,
    Verdict,
    check_names,
    get_check,
    parse_check_list,
    register_check,
    unregister_check,
)
from medisyn_cli.screening.embed import (
    PixelEmbedder,
    embedder_names,
    embedders_help,
    get_embedder,
    register_embedder,
    unregister_embedder,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "fixtures" / "images" / "images"
MANIFEST = ROOT / "prompts" / "mini_chest_xray.csv"

TOY_PACKAGE = '"""A toy medisyn plug-in: an embedder, an output format and an image check, from outside the package."""\n\nimport csv\nimport os\nimport shutil\nfrom pathlib import Path\n\nimport numpy as np\n\nfrom medisyn_cli.dataset.base import publish\nfrom medisyn_cli.screening.checks import Verdict\nfrom medisyn_cli.screening.embed import Embedder, l2_normalise\n\n\nclass ToyEmbedder(Embedder):\n    """8x8 grey thumbnail, centred, L2-normalised (toy plug-in)."""\n\n    def __init__(self):\n        self.name, self.dim, self.default_threshold = "toy", 64, 0.99\n\n    def settings(self) -> dict:\n        return {"side": 8}\n\n    def _embed(self, images):\n        rows = np.stack([np.asarray(i.convert("L").resize((8, 8)), np.float32).ravel() for i in images])\n        return l2_normalise(rows - rows.mean(axis=1, keepdims=True))\n\n\nclass ToyFormat:\n    name, folder, help = "toy", "toy", "one ids.csv of image ids and labels (toy plug-in)"\n\n    def write_batch(self, work, batch, items, run):\n        folder = Path(work) / "toy"\n        folder.mkdir(parents=True, exist_ok=True)\n        tmp = folder / f".{batch}.csv.tmp"\n        with open(tmp, "w", newline="") as handle:\n            writer = csv.writer(handle)\n            for row, png in items:\n                writer.writerow([row["id"], row["label"], len(png)])\n        os.replace(tmp, folder / f"{batch}.csv")\n        return {"rows": len(items)}\n\n    def consolidate(self, work, out, batches, run):\n        def build(staged):\n            staged.mkdir(parents=True)\n            lines = [Path(work, "toy", f"{b}.csv").read_text() for b in batches]\n            (staged / "ids.csv").write_text("id,label,png_bytes\\n" + "".join(lines))\n            return self.describe(staged)\n\n        return publish(Path(work) / "toy-staged", Path(out) / self.folder, build, self.describe)\n\n    def describe(self, folder):\n        rows = len((Path(folder) / "ids.csv").read_text().splitlines()) - 1\n        return {"format": self.name, "rows": rows, "files": ["ids.csv"]}\n\n    def files(self, out):\n        return {"toy/ids.csv"} if (Path(out) / "toy" / "ids.csv").exists() else set()\n\n    def keep_out(self, out, target, drop):\n        lines = (Path(out) / "toy" / "ids.csv").read_text().splitlines(keepends=True)\n        kept = [lines[0]] + [line for line in lines[1:] if line.split(",")[0] not in drop]\n        Path(target, "toy").mkdir(parents=True, exist_ok=True)\n        Path(target, "toy", "ids.csv").write_text("".join(kept))\n        return {"format": self.name, "rows": len(kept) - 1, "files": ["ids.csv"]}\n\n    def card_lines(self, output, run):\n        return [f"- `toy/ids.csv`: {output[\'rows\']} image ids (toy plug-in)"]\n\n\nFORMAT = ToyFormat()\n\n\nclass ToyCheck:\n    """rejects images brighter than TOY_MAX_BRIGHTNESS (toy plug-in)."""\n\n    name = "toy"\n    columns = {"brightness": "float32"}\n\n    def __init__(self, config):\n        self.limit = float(os.environ.get("TOY_MAX_BRIGHTNESS", "255"))\n\n    def check(self, images, labels):\n        verdicts = []\n        for image in images:\n            level = float(np.asarray(image.convert("L"), np.float32).mean())\n            too = level > self.limit\n            reason = f"mean brightness {level:.1f} above {self.limit:g}" if too else ""\n            verdicts.append(Verdict(too, reason, {"brightness": level}))\n        return verdicts\n'

ENTRY_POINTS = """\
[medisyn.embedders]
toy = toy_medisyn_ext:ToyEmbedder

[medisyn.formats]
toy = toy_medisyn_ext:FORMAT

[medisyn.checks]
toy = toy_medisyn_ext:ToyCheck
"""


def install_toy(site: Path) -> Path:
    """toy_medisyn_ext and its dist-info (METADATA, entry_points.txt) in `site`, as pip would install them."""
    (site / "toy_medisyn_ext").mkdir(parents=True)
    (site / "toy_medisyn_ext" / "__init__.py").write_text(TOY_PACKAGE)
    info = site / "toy_medisyn_ext-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy_medisyn_ext\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def medisyn(
    site: Path, *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """The installed `medisyn` command in a real process, with the toy package on PYTHONPATH, output redirected."""
    environment = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        ["medisyn", *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=600
    )


def brightness(image: dict) -> float:
    """Mean grey level (0-255) of a Parquet image cell ({bytes, path}), as the toy check measures it."""
    import io

    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("L"), np.float32).mean())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install_toy(tmp_path_factory.mktemp("site"))


def test_help_lists_the_plugin_names(site):
    generate = medisyn(site, "generate", "--help")
    index = medisyn(site, "index", "build", "--help")
    assert generate.returncode == 0 and index.returncode == 0, generate.stderr + index.stderr
    text = " ".join(generate.stdout.split())
    assert "webdataset, toy" in text  # --format
    assert "near_copy, label, toy" in text  # --check
    assert "toy" in " ".join(index.stdout.split()).split("--embedder", 1)[1]


def test_index_build_and_screen_with_a_plugin_embedder(site, tmp_path):
    built = medisyn(
        site,
        "index",
        "build",
        str(IMAGES),
        "--out",
        str(tmp_path / "idx"),
        "--embedder",
        "toy",
        "--no-progress",
    )
    assert built.returncode == 0, built.stdout + built.stderr
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["embedder"]["spec"] == "toy" and meta["embedder"]["settings"] == {"side": 8}
    screened = medisyn(
        site,
        "screen",
        str(IMAGES),
        "--index",
        str(tmp_path / "idx"),
        "--out",
        str(tmp_path / "report"),
        "--no-progress",
    )
    assert screened.returncode == 0, screened.stdout + screened.stderr
    rows = pd.read_csv(tmp_path / "report" / "screen.csv")
    assert len(rows) == 12 and rows["near_copy"].all()  # every indexed image is its own copy
    assert (rows["nn_similarity"] > 0.999).all()
    unknown = medisyn(site, "index", "build", str(IMAGES), "--out", str(tmp_path / "x"), "--embedder", "toys")
    assert unknown.returncode == 2 and "unknown embedder 'toys'" in unknown.stderr + unknown.stdout
    assert "toy" in (unknown.stderr + unknown.stdout).split("valid:")[1]


@pytest.mark.slow  # ~40 s: the bundled model in this process and twice in a subprocess
def test_generate_writes_a_plugin_format_and_runs_a_plugin_check(site, tmp_path):
    from medisyn_cli.generate.config import GenerateConfig
    from medisyn_cli.generate.run import run_generate

    # the run's first attempts, made in this process without the plug-ins (same seed, same threads)
    first = run_generate(
        GenerateConfig(
            manifest=str(MANIFEST), n=4, out=str(tmp_path / "plain"), steps=2, threads=1, formats=("parquet",)
        ),
        show_progress=False,
    ).out
    plain = pd.read_parquet(first / "parquet")
    levels = sorted(brightness(png) for png in plain["image"])
    limit = (levels[1] + levels[2]) / 2  # the two brightest first attempts are rejected
    bright = set(plain["id"][[brightness(png) > limit for png in plain["image"]]])
    done = medisyn(
        site,
        "generate",
        "--manifest",
        str(MANIFEST),
        "--n",
        "4",
        "--steps",
        "2",
        "--threads",
        "1",
        "--format",
        "parquet,toy",
        "--check",
        "toy",
        "--max-attempts",
        "30",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        env={"TOY_MAX_BRIGHTNESS": f"{limit}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    kept = pd.read_parquet(out / "parquet")
    ids = pd.read_csv(out / "toy" / "ids.csv")
    assert list(ids["id"]) == list(kept["id"]) and len(kept) == 4  # the toy format, in plan order
    assert all(brightness(png) <= limit for png in kept["image"])
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert set(rejected["reason"]) == {"toy"} and (rejected["brightness"] > limit).all()
    assert set(rejected[rejected["attempt"] == 0]["id"]) == bright
    assert rejected["message"].str.fullmatch(r"mean brightness [0-9.]+ above [0-9.]+").all()
    assert "image" not in rejected.columns and rejected["nn_key"].isna().all()
    run = json.loads((out / "run.json").read_text())
    assert sum(c.get("toy_rejected", 0) for c in run["classes"].values()) == len(rejected)
    assert (
        run["key"]["checks"] == ["toy"]
        and {"format": "toy", "rows": 4, "files": ["ids.csv"]} in run["outputs"]
    )
    assert "`toy/ids.csv`: 4 image ids" in (out / "README.md").read_text()
    again = medisyn(
        site,
        "generate",
        "--manifest",
        str(MANIFEST),
        "--n",
        "4",
        "--steps",
        "2",
        "--threads",
        "1",
        "--format",
        "parquet,toy",
        "--max-attempts",
        "30",
        "--out",
        str(tmp_path / "out"),
        "--resume",
        "--no-progress",
    )
    assert again.returncode == 2 and "checks" in again.stdout + again.stderr  # the run key holds the checks


# --- the registries as units -------------------------------------------------------------------------------


def test_an_unknown_embedder_lists_every_registered_one():
    with pytest.raises(MedisynError, match=r"unknown embedder 'resnet' \(valid: pixel, phash, clip:<model>"):
        get_embedder("resnet")
    assert "learned:<index folder>" in embedder_names()
    assert embedders_help().splitlines()[0].startswith("pixel: ")


def test_registering_an_embedder_twice_is_refused_and_prefixes_pass_their_argument():
    with pytest.raises(ValueError, match="'pixel' is already registered"):
        register_embedder("pixel", PixelEmbedder, help="again")
    register_embedder(
        "sized",
        lambda side: PixelEmbedder(size=int(side)),
        help="pixel at a size",
        prefix=True,
        metavar="<side>",
    )
    try:
        assert "sized:<side>" in embedder_names() and get_embedder("sized:16").dim == 256
        with pytest.raises(MedisynError, match="unknown embedder 'sized'"):
            get_embedder("sized")
    finally:
        unregister_embedder("sized:<side>")
    assert "sized:<side>" not in embedder_names()


def test_features_are_embed_vectors_for_pixel_and_refused_for_hashes():
    from PIL import Image

    real_images = [Image.open(p) for p in sorted(IMAGES.glob("*.png"))[:2]]
    pixel = get_embedder("pixel")
    assert pixel.features_normalised and pixel.features(real_images).dtype == np.float32
    assert np.allclose(pixel.features(real_images[:2]), pixel.embed(real_images[:2]))
    with pytest.raises(MedisynError, match="binary hash codes"):
        get_embedder("phash").features(real_images[:1])


def test_an_unknown_or_duplicate_check_is_refused():
    assert check_names()[:2] == ("near_copy", "label")
    with pytest.raises(MedisynError, match="--check: 'nope' is not one of near_copy, label"):
        parse_check_list("label,nope")
    with pytest.raises(ValueError, match="'near_copy' is already registered"):
        register_check("near_copy", lambda config: None)
    assert get_check("label").__name__ == "label_check"  # judge/ is imported on first use


class Dark:
    """Rejects images darker than a level."""

    name, columns = "dark", {"level": "float32"}

    def check(self, images, labels):
        return [Verdict(i < 5, f"too dark ({i})" if i < 5 else "", {"level": float(i)}) for i in images]


class Odd:
    name = "odd"

    def check(self, images, labels):
        return [Verdict(i % 2 == 1, "odd" if i % 2 else "", {}) for i in images]


def test_checks_run_in_order_and_the_first_rejection_names_the_reason():
    register_check("dark", lambda config: Dark(), help="too dark")
    try:
        checks = Checks([get_check("dark")(None), Odd()])
        verdicts = checks.check([3, 6, 7], ["a", "b", "c"])
        assert [(v.rejected, v.check, v.reason) for v in verdicts] == [
            (True, "dark", "too dark (3)"),
            (False, "", ""),
            (True, "odd", "odd"),
        ]
        assert verdicts[2].details == {"level": 7.0} and checks.counter(verdicts[2]) == "odd_rejected"
        assert list(checks.columns())[-4:] == ["inliers", "reason", "level", "message"]
        assert checks.ended_reason(verdicts[0], "a-000001", "a", 3) == (
            "3 images in a row for a-000001 were rejected, the last by the dark check (too dark (3))"
        )
    finally:
        unregister_check("dark")
    assert list(Checks([NearCopyCheck(None)]).columns())[-1] == "inliers"  # a screened run: no reason column


def test_a_plugin_that_does_not_load_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    site = install_toy(tmp_path)
    (site / "toy_medisyn_ext-0.1.dist-info" / "entry_points.txt").write_text(
        "[medisyn.formats]\nbroken = toy_medisyn_ext:NO_SUCH_FORMAT\n"
    )
    monkeypatch.syspath_prepend(str(site))
    reset_plugins("medisyn.formats")
    try:
        with pytest.raises(MedisynError, match=r"plug-in 'broken' \(medisyn.formats, toy_medisyn_ext\)"):
            get_format("broken")
    finally:
        reset_plugins("medisyn.formats")
        sys.modules.pop("toy_medisyn_ext", None)


def test_registering_a_format_twice_is_refused():
    with pytest.raises(ValueError, match="'parquet' is already registered"):
        register_format("parquet", get_format("imagefolder"))
