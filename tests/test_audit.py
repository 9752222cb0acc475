"""`medisyn screen`: audit tables, the HTML report (rendered in headless Chromium), --keep-out, bad inputs."""

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate
from medisyn_cli.screening.build import build_index

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "index"
    build_index([FIXTURES / "images"], out, show_progress=False)
    return out


@pytest.fixture
def dataset(tmp_path) -> Path:
    """The 7 screening fixtures (6 distinct images, 1 resized copy) plus a flipped copy and a corrupt file."""
    folder = tmp_path / "ds"
    shutil.copytree(FIXTURES / "screen", folder)
    source = FIXTURES / "images" / "images" / "platelet_00005_16.png"
    ImageOps.mirror(Image.open(source)).save(folder / "distinct" / "flipped.png")
    (folder / "distinct" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with open(folder / "metadata.csv", "a", newline="") as handle:
        csv.writer(handle).writerows(
            [
                ["distinct/flipped.png", "platelet", "copy", "", ""],
                ["distinct/corrupt.png", "platelet", "corrupt", "", ""],
            ]
        )
    return folder


def screen(*args):
    return CliRunner().invoke(app, ["screen", *map(str, args), "--no-progress"])


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_screen_flags_planted_copies_and_reports_corrupt_files_as_rows(index, dataset, tmp_path):
    result = screen(dataset, "--index", index, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "rep" / "screen.parquet").set_index("image")
    assert len(rows) == 9 and len(pd.read_csv(tmp_path / "rep" / "screen.csv")) == 9
    copies = {Path(k).name for k in rows.index[rows["near_copy"].fillna(False).astype(bool)]}
    assert copies == {"te_person11_virus_38.png", "flipped.png"}
    flipped = rows.loc[str(dataset / "distinct" / "flipped.png")]
    assert flipped["nn_key"].endswith("platelet_00005_16.png") and flipped["view"] == "hflip"
    assert flipped["inliers"] >= 20  # its keypoints, mirrored, verify it too
    distinct = rows[~rows["near_copy"].fillna(True).astype(bool)]
    assert len(distinct) == 6 and (distinct["inliers"] == 0).all()
    corrupt = rows.loc[str(dataset / "distinct" / "corrupt.png")]
    assert corrupt["error"] and pd.isna(corrupt["near_copy"])
    summary = json.loads((tmp_path / "rep" / "screen.json").read_text())
    assert summary["screened"] == 8 and summary["near_copies"] == 2 and summary["errors"] == 1


def test_report_html_shows_the_closest_pairs_and_the_histogram(index, dataset, tmp_path):
    screen(dataset, "--index", index, "--out", tmp_path / "rep")
    parser = Tags()
    parser.feed((tmp_path / "rep" / "report.html").read_text())
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    pairs = [attrs for tag, attrs in parser.tags if tag == "div" and "pair" in attrs.get("class", "").split()]
    assert len(pairs) == 8 and sum("copy" in p["class"] for p in pairs) == 2
    assert len(images) == 1 + 2 * 8 and all(i["src"].startswith("data:image/png;base64,") for i in images)


def test_report_says_it_holds_training_images_and_can_leave_them_out(index, dataset, tmp_path):
    """A report for sharing (#27): --no-training-thumbnails embeds no training image, and each page says which it is."""
    screen(dataset, "--index", index, "--out", tmp_path / "with")
    screen(dataset, "--index", index, "--out", tmp_path / "without", "--no-training-thumbnails")
    with_page = (tmp_path / "with" / "report.html").read_text()
    without_page = (tmp_path / "without" / "report.html").read_text()
    assert "embeds thumbnails of real training images" in with_page
    assert "Training images are left out of this page" in without_page
    parser = Tags()
    parser.feed(without_page)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert [i["alt"] for i in images].count("training") == 0 and [i["alt"] for i in images].count(
        "screened"
    ) == 8
    assert without_page.count("&harr;") == 8  # every pair still names its training image's key


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return exe


def render(exe: str, page: Path, tmp_path: Path) -> tuple[str, np.ndarray]:
    flags = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path}/c",
        "--virtual-time-budget=5000",
        "--window-size=1000,1400",
    ]
    dom = subprocess.run(
        flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    shot = tmp_path / f"{page.stem}.png"
    subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    return dom, np.asarray(Image.open(shot).convert("RGB"))


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_every_image_loaded(index, dataset, tmp_path):
    exe = chromium()
    screen(dataset, "--index", index, "--out", tmp_path / "rep")
    page = tmp_path / "rep" / "report.html"
    dom, shot = render(exe, page, tmp_path)
    loaded = re.search(r'data-images="(\d+)" data-loaded="(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) == "17"
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]+"', 'src="missing.png"', page.read_text()))
    broken_dom, broken_shot = render(exe, broken, tmp_path)
    assert 'data-loaded="0"' in broken_dom
    ink = lambda image: float(np.mean(image.min(axis=2) < 200))  # noqa: E731  share of non-white pixels
    assert ink(shot) > 2 * ink(broken_shot)  # the pictures, not just the text, were drawn


def test_keep_out_writes_the_dataset_without_near_copies(index, dataset, tmp_path):
    result = screen(dataset, "--index", index, "--out", tmp_path / "rep", "--keep-out", tmp_path / "kept")
    assert result.exit_code == 0, result.output
    kept = pd.read_csv(tmp_path / "kept" / "metadata.csv")
    assert sorted(kept["file_name"]) == sorted(
        f"distinct/{p.name}" for p in (dataset / "distinct").glob("*.png") if p.name != "flipped.png"
    )  # corrupt files stay: not copies
    assert all((tmp_path / "kept" / name).is_file() for name in kept["file_name"])
    assert not (tmp_path / "kept" / "resized").exists()


def test_screen_a_medisyn_output_fail_on_copies_and_keep_out_both_formats(tiny_model, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("label,prompt\nmelanoma,dermoscopy image of melanoma\nnevus,frontal chest x-ray\n")
    out = run_generate(
        GenerateConfig(
            manifest=str(manifest), n=6, out=str(tmp_path / "synth"), model=str(tiny_model), steps=2
        ),
        show_progress=False,
    ).out
    build_index([out / "imagefolder" / "melanoma"], tmp_path / "melanoma-index", show_progress=False)
    result = screen(
        out, "--index", tmp_path / "melanoma-index", "--keep-out", tmp_path / "kept", "--fail-on-copies"
    )
    assert result.exit_code == 1, result.output
    rows = pd.read_parquet(out / "screen" / "screen.parquet")
    assert rows.groupby("label")["near_copy"].sum().to_dict() == {"melanoma": 3, "nevus": 0}
    from datasets import load_dataset

    kept = load_dataset("parquet", data_files=str(tmp_path / "kept" / "parquet" / "*.parquet"), split="train")
    assert sorted(set(kept["label"])) == ["nevus"] and len(kept) == 3 and kept[0]["image"].size == (16, 16)
    folder = pd.read_csv(tmp_path / "kept" / "imagefolder" / "metadata.csv")
    assert list(folder["label"]) == ["nevus"] * 3 and (tmp_path / "kept" / "run.json").exists()
    assert len(list((tmp_path / "kept" / "imagefolder").rglob("*.png"))) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--index", "{tmp}/none"], "no such index folder"),
        (["--index", "{index}", "--embedder", "phash"], "built with embedder 'pixel', not 'phash'"),
        (["--index", "{index}", "--threshold", "1.5"], "outside (0, 1]"),
        (["--index", "{index}", "--keep-out", "{dataset}"], "--keep-out"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_write_no_report(index, dataset, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, index=index, dataset=dataset) for a in args]
    result = screen(dataset, *args, "--out", tmp_path / "rep")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and not (tmp_path / "rep").exists()


def test_an_empty_dataset_is_a_clear_error(index, tmp_path):
    (tmp_path / "empty").mkdir()
    result = screen(tmp_path / "empty", "--index", index, "--out", tmp_path / "rep")
    assert result.exit_code == 2 and "no images found" in result.output


def test_image_grid_wraps_long_row_labels_inside_the_label_column(tmp_path):
    from medisyn_cli.core.images import image_grid

    label = "light microscopy of a stained peripheral blood smear centred on a white blood cell"
    tiles = [Image.new("RGB", (64, 64), (0, 200, 0))] * 4
    grid = np.asarray(Image.open(image_grid(tiles, rows=2, path=tmp_path / "g.png", labels=[label, "x"])))
    assert grid.shape == (128, 220 + 2 * 64, 3)
    ink = (grid[:64, :220] < 128).all(axis=2)
    lines = ink.any(axis=1)
    bands = np.count_nonzero(np.diff(lines.astype(int)) == 1) + int(lines[0])
    assert bands >= 3, "the long label is wrapped onto several lines"
    assert ink[:, :60].any(axis=0).sum() > 20, "the label starts at the left edge, not cut to its last words"
    assert not ink[:, 200:].any(), "text stays inside its column"
    assert (grid[:, 220:] == (0, 200, 0)).all()
