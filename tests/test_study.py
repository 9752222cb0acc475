"""`medisyn study`: design, blinding, the page in headless Chromium, the server and the scoring."""

from __future__ import annotations

import http.client
import io
import json
import math
import random
import re
import shutil
import socket
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.study import StudyConfig, build_study, make_server, score_study
from medisyn_cli.study.design import PAIR_KINDS, draw_design, split_counts
from medisyn_cli.study.stats import binomial_greater, bootstrap_pooled, cohen_kappa, fleiss_kappa, wilson

CLASSES = ("benign", "malignant")
PER_CLASS = 20


def real_set(folder: Path) -> Path:
    """'Real' images: label folders of 40x48 RGB JPEGs with EXIF and telling names."""
    rng = np.random.default_rng(1)
    for label in CLASSES:
        (folder / label).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
            exif = Image.Exif()
            exif[0x010F] = "RealScanner"  # Make
            Image.fromarray(pixels).save(folder / label / f"real_patient_{i:03d}.jpg", exif=exif, quality=90)
    return folder


def synthetic_set(folder: Path) -> Path:
    """'Synthetic' images: a Parquet dataset of 32x32 grey PNGs with a text chunk, as medisyn writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    rows = []
    for label in CLASSES:
        for i in range(PER_CLASS):
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", f"synthetic {label} seed {i}")
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L").save(
                buffer, "PNG", pnginfo=info
            )
            rows.append(
                {
                    "image": {"bytes": buffer.getvalue(), "path": f"synthetic-{label}-{i}.png"},
                    "id": f"{label}-{i:06d}",
                    "label": label,
                }
            )
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000.parquet")
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("study-sets")
    return real_set(root / "real"), synthetic_set(root / "synthetic")


@pytest.fixture(scope="module")
def study(sets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "s"
    build_study(StudyConfig((str(sets[0]),), (str(sets[1]),), str(out), pairs=24, classify=16, seed=3))
    return out


def key_of(study: Path) -> dict:
    return json.loads((study / "key.json").read_text())


def answer_file(key: dict, reader: str, answers: dict, years=3, role="resident / trainee") -> dict:
    return {
        "format": "medisyn-study-answers",
        "version": 1,
        "study_id": key["study_id"],
        "reader": {"id": reader, "years": years, "role": role},
        "started": "2026-01-01T00:00:00Z",
        "updated": "2026-01-01T01:00:00Z",
        "answers": [{"item": i, "answer": a} for i, a in answers.items()],
    }


def perfect(key: dict) -> dict:
    return {item["id"]: item["answer"] for item in key["items"]}


def random_answers(key: dict, seed: int) -> dict:
    rng = random.Random(seed)
    options = lambda item: ["none", "left", "right", "both"] if item["task"] == "pair" else key["classes"]  # noqa: E731
    return {item["id"]: rng.choice(options(item)) for item in key["items"]}


# --- statistics ---------------------------------------------------------------------------------------------


def test_wilson_interval_matches_known_values_and_brackets_the_proportion():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson(0, 10)[0] == 0.0 and round(wilson(0, 10)[1], 4) == 0.2775
    assert all(math.isnan(x) for x in wilson(0, 0))
    for k, n in ((1, 3), (50, 100), (99, 100)):
        low, high = wilson(k, n)
        assert 0 <= low < k / n < high <= 1


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as on Wikipedia: 10 items, 14 raters, 5 categories -> kappa 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = [[c for c, count in enumerate(row) for _ in range(count)] for row in table]
    assert round(fleiss_kappa(ratings), 3) == 0.210
    assert fleiss_kappa([["a", "a"], ["b", "b"]]) == 1.0
    with pytest.raises(ValueError):
        fleiss_kappa([["a", "a"], ["a"]])


def test_cohen_kappa_matches_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(0)
    a = [rng.choice("xyz") for _ in range(60)]
    b = [x if rng.random() < 0.6 else rng.choice("xyz") for x in a]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    yes_no = (
        ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15,
        ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15,
    )
    assert cohen_kappa(*yes_no) == pytest.approx(0.4)


def test_binomial_test_and_reader_bootstrap():
    from math import comb

    assert binomial_greater(8, 10, 0.5) == pytest.approx(sum(comb(10, k) for k in range(8, 11)) / 2**10)
    assert binomial_greater(5, 10, 0.5) > 0.5
    low, high = bootstrap_pooled([(9, 10), (5, 10), (7, 10)], seed=1)
    assert 0.5 <= low < 0.7 < high <= 0.9
    assert all(math.isnan(x) for x in bootstrap_pooled([(9, 10)]))


# --- design ---------------------------------------------------------------------------------------------------


def pools(n: int = 30) -> dict:
    return {
        (s, c): [f"{s}-{c}-{i}" for i in range(n)] for s in ("real", "synthetic") for c in ("a", "b", "c")
    }


def test_design_is_balanced_seeded_and_uses_every_image_once():
    items = draw_design(pools(), ["a", "b", "c"], 40, 30, (0.5, 0.25, 0.25), seed=7)
    pairs = [i for i in items if i["task"] == "pair"]
    assert Counter(i["kind"] for i in pairs) == dict(zip(PAIR_KINDS, split_counts(40, [2, 1, 1])))
    assert all(len({p.label for p in i["images"]}) == 1 for i in pairs)  # same class within a pair
    mixed = [i for i in pairs if i["kind"] == "real+synthetic"]
    assert Counter(i["answer"] for i in mixed) == {"left": 10, "right": 10}  # left/right balanced
    assert Counter(i["answer"] for i in pairs if i["kind"] == "real+real") == {"none": 10}
    keys = [p.key for i in items for p in i["images"]]
    assert len(keys) == len(set(keys)) == 2 * 40 + 30
    classify = Counter((i["images"][0].source, i["label"]) for i in items if i["task"] == "classify")
    assert set(classify.values()) == {5}  # every class, real and synthetic
    assert [i["id"] for i in items][:2] == ["p001", "p002"] and items[-1]["id"] == "c030"
    again = draw_design(pools(), ["a", "b", "c"], 40, 30, (0.5, 0.25, 0.25), seed=7)
    other = draw_design(pools(), ["a", "b", "c"], 40, 30, (0.5, 0.25, 0.25), seed=8)
    assert again == items and other != items


def test_design_names_the_class_that_has_too_few_images():
    small = pools(30)
    small["synthetic", "b"] = small["synthetic", "b"][:3]
    with pytest.raises(MedisynError, match=r"synthetic class 'b': \d+ images needed .* 3 available"):
        draw_design(small, ["a", "b", "c"], 40, 30, (0.5, 0.25, 0.25), seed=0)


def test_build_writes_site_and_key_apart_and_is_reproducible(sets, study, tmp_path):
    key = key_of(study)
    assert sorted(p.name for p in (study / "site").iterdir()) == [
        "app.js",
        "img",
        "index.html",
        "study.js",
        "style.css",
    ]
    assert len(list((study / "site" / "img").iterdir())) == 2 * 24 + 16
    assert key["classes"] == list(CLASSES) and key["design"]["image_size"] == 32
    again = tmp_path / "again"
    build_study(StudyConfig((str(sets[0]),), (str(sets[1]),), str(again), pairs=24, classify=16, seed=3))
    assert key_of(again)["study_id"] == key["study_id"]
    assert all(
        (again / "site" / i["file"]).read_bytes() == (study / "site" / i["file"]).read_bytes()
        for item in key["items"]
        for i in item["images"]
    )


def test_build_bad_inputs_exit_2_with_one_line(sets, study, tmp_path):
    runner = CliRunner()
    base = ["study", "build", "--real", str(sets[0]), "--synthetic", str(sets[1])]
    cases = [
        (["--out", str(study)], "exists and is not empty"),
        (["--out", str(tmp_path / "a"), "--labels", "benign,cyst"], "class 'cyst' is not in the real set"),
        (["--out", str(tmp_path / "b"), "--pairs", "200"], "images needed for --pairs 200"),
        (["--out", str(tmp_path / "c"), "--pair-mix", "1,2"], "--pair-mix '1,2'"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".*tmp*"))
    same = runner.invoke(
        app,
        ["study", "build", "--real", str(sets[0]), "--synthetic", str(sets[0]), "--out", str(tmp_path / "d")],
    )
    assert same.exit_code == 2 and "in both --real and --synthetic" in " ".join(same.output.split())
    mapped = runner.invoke(
        app,
        base
        + [
            "--out",
            str(tmp_path / "m"),
            "--labels",
            "benign=malignant,malignant=benign",
            "--pairs",
            "4",
            "--classify",
            "4",
        ],
    )
    assert mapped.exit_code == 0, mapped.output
    swapped = {"benign": "malignant", "malignant": "benign"}
    images = [(item["label"], x) for item in key_of(tmp_path / "m")["items"] for x in item["images"]]
    assert {x["source"] for _, x in images} == {"real", "synthetic"}
    assert all(x["label"] == (swapped[label] if x["source"] == "synthetic" else label) for label, x in images)


# --- blinding -------------------------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[str]:
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append(data[at + 4 : at + 8].decode("ascii"))
        at += 12 + length
    return [c for c in chunks if c != "IDAT"] + ["IDAT"] * ("IDAT" in chunks)


def best_rule_accuracy(values: list[float], truth: list[bool]) -> float:
    """Accuracy of the best threshold rule (either direction) predicting `truth` from `values`."""
    order = np.argsort(values, kind="stable")
    t = np.asarray(truth)[order]
    below_true = np.concatenate([[0], np.cumsum(t)])
    below_false = np.concatenate([[0], np.cumsum(~t)])
    above_false = (~t).sum() - below_false
    above_true = t.sum() - below_true
    return float(max(((below_true + above_false).max()), (below_false + above_true).max()) / len(t))


def test_nothing_in_site_but_the_pixels_tells_which_image_is_synthetic(study, sets):
    key = key_of(study)
    site = study / "site"
    public = json.loads(re.sub(r"^window\.MEDISYN_STUDY = |;\s*$", "", (site / "study.js").read_text()))
    truth = {
        image["file"]: image["source"] == "synthetic" for item in key["items"] for image in item["images"]
    }
    files = sorted(truth)
    # attributes that must be identical for every image: size, format, mode, metadata, chunks, time stamp, mode bits
    attributes = {}
    for name in files:
        path = site / name
        data = path.read_bytes()
        with Image.open(path) as image:
            attributes[name] = (
                image.size,
                image.format,
                image.mode,
                tuple(sorted(image.info)),
                tuple(png_chunks(data)),
                path.stat().st_mtime,
                path.stat().st_mode,
            )
    assert len(set(attributes.values())) == 1, Counter(attributes.values())
    assert all(re.fullmatch(r"img/[0-9a-f]{16}\.png", name) for name in files)
    # names, place in the page's item list and left/right slot predict no better than label-permuted chance
    place = {f: (n, slot) for n, item in enumerate(public["items"]) for slot, f in enumerate(item["images"])}
    features = {
        "name": [int(f[4:20], 16) for f in files],
        "position": [place[f][0] for f in files],
        "slot": [place[f][1] for f in files],
    }
    labels = [truth[f] for f in files]
    rng = np.random.default_rng(0)
    for feature, values in features.items():
        observed = best_rule_accuracy(values, labels)
        null = [best_rule_accuracy(values, list(rng.permutation(labels))) for _ in range(300)]
        assert observed <= np.quantile(null, 0.99), (feature, observed)
    # the page's files hold no provenance: no source path, id, label word of the sets, or answer
    text = "".join((site / n).read_text() for n in ("index.html", "app.js", "style.css", "study.js"))
    leaks = [image["key"] for item in key["items"] for image in item["images"]] + [
        "real_patient",
        "RealScanner",
        "parquet",
        '"answer"',
        "kind",
    ]
    assert not [x for x in leaks if x in text]
    assert not re.search(r"(https?:)?//[a-z0-9]", text.replace("http://www.w3.org", ""))  # no external URL
    assert not (site / "key.json").exists() and (study / "key.json").exists()


# --- the page in headless Chromium ----------------------------------------------------------------------------

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (pip install .[test])"
    )
    return exe


def start_reader(page, reader: str, years: int, role: str) -> None:
    page.fill("#reader-id", reader)
    page.fill("#reader-years", str(years))
    page.select_option("#reader-role", role)
    page.click("#start")


def answer_items(page, choose, limit: int | None = None, keyboard: bool = False) -> int:
    """Answer items until the done screen (or `limit` answers); choose(item id) -> answer value."""
    done = 0
    while page.locator("#done").count() == 0 and (limit is None or done < limit):
        item = page.locator(".item").get_attribute("data-item")
        answer = choose(item)
        if keyboard:
            page.locator(f'.answers button[data-answer="{answer}"] kbd').wait_for()
            page.keyboard.press(page.locator(f'.answers button[data-answer="{answer}"] kbd').inner_text())
        else:
            page.click(f'.answers button[data-answer="{answer}"]')
        page.wait_for_function("id => !document.querySelector(`.item[data-item='${id}']`)", arg=item)
        done += 1
    return done


def download(page, folder: Path) -> Path:
    with page.expect_download() as info:
        page.click("#download")
    target = folder / info.value.suggested_filename
    info.value.save_as(target)
    return target


@pytest.mark.slow
def test_scripted_readers_in_headless_chromium_pause_resume_export_and_score(study, tmp_path):
    exe = chromium()
    from playwright.sync_api import sync_playwright

    key = key_of(study)
    right, guess = perfect(key), random_answers(key, seed=5)
    total = len(key["items"])
    url, answers, profile = (
        (study / "site" / "index.html").as_uri(),
        tmp_path / "answers",
        tmp_path / "profile",
    )
    answers.mkdir()
    requests = []
    with sync_playwright() as p:
        launch = dict(
            user_data_dir=str(profile),
            executable_path=exe,
            args=BROWSER_ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1024, "height": 768},
        )
        context = p.chromium.launch_persistent_context(**launch)
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        start_reader(page, "perfect", 12, "attending / consultant")
        loaded = page.eval_on_selector_all(".item img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
        assert loaded == [32, 32]
        assert answer_items(page, right.get, limit=10) == 10
        page.click("#pause")
        context.close()  # the browser is closed mid-study

        context = p.chromium.launch_persistent_context(**launch)  # a second run of the page
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        assert f"10 of {total} answered" in page.inner_text(".saved")
        page.click('[data-resume="perfect"]')
        assert page.inner_text("#progress") == f"10 / {total} answered"
        answer_items(page, right.get)
        perfect_file = download(page, answers)
        page.click("#next-reader")
        start_reader(page, "random", 2, "medical student")
        answer_items(page, guess.get, keyboard=True)
        download(page, answers)
        context.close()
    assert all(u.startswith(("file://", "blob:", "data:")) for u in requests), requests
    saved = json.loads(perfect_file.read_text())
    assert saved["complete"] and len(saved["answers"]) == total and saved["reader"]["years"] == 12
    result, written = score_study(study, [answers])
    rows = {r["reader"]: r for r in result["readers"]}
    assert result["problems"] == [] and set(rows) == {"perfect", "random"}
    for name in (
        "detection_accuracy",
        "detection_sensitivity",
        "detection_specificity",
        "pair_accuracy",
        "classify_real",
        "classify_synthetic",
    ):
        assert rows["perfect"]["metrics"][name]["value"] == 1.0
    accuracy = rows["random"]["metrics"]["detection_accuracy"]
    assert (
        accuracy["n"] == 48
        and abs(accuracy["value"] - 0.5) < 0.2
        and accuracy["low"] < 0.5 < accuracy["high"]
    )
    assert (
        rows["random"]["beats_chance"]["p_value"] > 0.01 and rows["perfect"]["beats_chance"]["p_value"] < 1e-9
    )
    assert (
        rows["random"]["metrics"]["classify_real"]["n"]
        == rows["random"]["metrics"]["classify_synthetic"]["n"]
        == 8
    )
    assert written["score.html"].exists()


@pytest.mark.slow
def test_served_page_goes_back_without_feedback_and_submits_to_the_server(sets, tmp_path):
    exe = chromium()
    from playwright.sync_api import sync_playwright

    study = tmp_path / "small"
    key = build_study(StudyConfig((str(sets[0]),), (str(sets[1]),), str(study), pairs=4, classify=4, seed=1))
    httpd = make_server(study, port=0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    right = perfect(key)
    first = key["items"][0]
    wrong = next(a for a in ("none", "left", "right", "both") if a != first["answer"])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/")
            start_reader(page, "served", 4, "fellow")
            answer_items(page, lambda item: wrong, limit=1)
            page.keyboard.press("Backspace")  # back to the first item
            assert page.locator(".item").get_attribute("data-item") == first["id"]
            assert (
                page.locator("button.chosen").get_attribute("data-answer") == wrong
            )  # own answer, no verdict
            answer_items(page, right.get)
            page.wait_for_function(
                "() => /Saved on the study server/.test(document.querySelector('#status').textContent)"
            )
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    saved = [json.loads(f.read_text()) for f in (study / "answers").glob("*.json")]
    assert len(saved) == 1 and {a["item"]: a["answer"] for a in saved[0]["answers"]} == right


@pytest.mark.slow
def test_study_serve_runs_without_a_terminal_and_stops_on_ctrl_c(study, tmp_path):
    import signal
    import subprocess
    import sys

    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "medisyn_cli", "study", "serve", str(study), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
                if found or process.poll() is not None:
                    break
                threading.Event().wait(0.05)
            assert found, log.read_text()
            assert request(int(found.group(1)), "GET", "/")[0] == 200
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=20)
    assert code == 0, log.read_text()


def test_unlabelled_folders_make_pairs_only(tmp_path):
    for name, seed in (("real", 1), ("synthetic", 2)):
        (tmp_path / name).mkdir()
        rng = np.random.default_rng(seed)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").save(
                tmp_path / name / f"{i}.png"
            )
    key = build_study(
        StudyConfig((str(tmp_path / "real"),), (str(tmp_path / "synthetic"),), str(tmp_path / "s"), pairs=6)
    )
    assert key["classes"] == [] and key["design"]["classify"] == 0 and key["design"]["image_mode"] == "L"
    assert Counter(i["kind"] for i in key["items"]) == {
        "real+synthetic": 3,
        "real+real": 2,
        "synthetic+synthetic": 1,
    }
    with pytest.raises(MedisynError, match="--classify needs two or more classes"):
        build_study(
            StudyConfig(
                (str(tmp_path / "real"),),
                (str(tmp_path / "synthetic"),),
                str(tmp_path / "t"),
                pairs=6,
                classify=4,
            )
        )


# --- the server -----------------------------------------------------------------------------------------------


@pytest.fixture
def server(study, tmp_path):
    local = tmp_path / "served"
    shutil.copytree(study, local)
    (local / "site" / "leak.json").symlink_to(local / "key.json")
    httpd = make_server(local, port=0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield local, httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest(method, path, skip_accept_encoding=True)  # the path goes out exactly as written
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    if body is not None and "Content-Length" not in (headers or {}):
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    return response.status, response.read()


def test_server_serves_site_only_and_refuses_traversal(server):
    folder, port = server
    key = key_of(folder)
    assert request(port, "GET", "/")[0] == 200 and b"study.js" in request(port, "GET", "/")[1]
    image = key["items"][0]["images"][0]["file"]
    assert request(port, "GET", "/" + image)[1] == (folder / "site" / image).read_bytes()
    for path in (
        "/key.json",
        "/../key.json",
        "/%2e%2e/key.json",
        "/img/../../key.json",
        "/..%2fkey.json",
        "/img/..%2f..%2fkey.json",
        "/%2e%2e%5ckey.json",
        "/leak.json",
        "/img/",
        "/answers/",
        "//etc/passwd",
        "/..%00/key.json",
    ):
        status, body = request(port, "GET", path)
        assert status == 404 and key["study_id"].encode() not in body, path


def test_server_saves_valid_answers_and_refuses_bad_or_oversized_posts(server):
    folder, port = server
    key = key_of(folder)
    good = json.dumps(answer_file(key, "dr/one", perfect(key))).encode()
    status, body = request(port, "POST", "/answers", good, {"Content-Type": "application/json"})
    assert status == 201 and json.loads(body)["answers"] == len(key["items"])
    saved = list((folder / "answers").glob("*.json"))
    assert [p.name for p in saved] == ["dr_one-20260101000000.json"]
    other = dict(json.loads(good), study_id="000000000000")
    cases = [
        (b"{not json", 400, "not JSON"),
        (json.dumps(other).encode(), 400, "this study is"),
        (
            json.dumps({**json.loads(good), "answers": [{"item": "p999", "answer": "none"}]}).encode(),
            400,
            "unknown items: p999",
        ),
    ]
    for body, expected, message in cases:
        status, reply = request(port, "POST", "/answers", body)
        assert status == expected and message in json.loads(reply)["error"]
    assert request(port, "POST", "/elsewhere", good)[0] == 404
    assert request(port, "POST", "/answers", None)[0] == 411
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # announces 50 MB: refused unread
        raw.sendall(b"POST /answers HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n")
        reply = b""
        while chunk := raw.recv(4096):
            reply += chunk
        assert reply.split(b"\r\n")[0].endswith(b"413 Request Entity Too Large") and b"larger than" in reply
    assert len(list((folder / "answers").glob("*.json"))) == 1


# --- scoring --------------------------------------------------------------------------------------------------


def write_answers(folder: Path, name: str, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1))
    return path


def test_score_reports_each_bad_file_precisely_and_keeps_the_good_ones(study, tmp_path):
    key = key_of(study)
    folder = tmp_path / "answers"
    write_answers(
        folder, "a.json", answer_file(key, "alice", perfect(key), years=15, role="attending / consultant")
    )
    write_answers(folder, "b.json", answer_file(key, "bob", random_answers(key, 1), years=1))
    write_answers(folder, "bad-json.json", '{"format": "medisyn-study-answers",\n "study_id": ')
    write_answers(folder, "other-study.json", {**answer_file(key, "carol", {}), "study_id": "abc"})
    unknown = answer_file(key, "dan", {"p001": "none", "x42": "left"})
    write_answers(folder, "unknown.json", unknown)
    twice = answer_file(key, "erin", {"p001": "none"})
    twice["answers"].append({"item": "p001", "answer": "left"})
    write_answers(folder, "twice.json", twice)
    write_answers(folder, "value.json", answer_file(key, "fay", {"p002": "maybe"}))
    write_answers(folder, "z-bob-again.json", answer_file(key, "bob", {"p001": "none"}, years=1))
    result = CliRunner().invoke(app, ["study", "score", str(study), "--answers", str(folder)])
    assert result.exit_code == 0, result.output
    score = json.loads((study / "score" / "score.json").read_text())
    assert [r["reader"] for r in score["readers"]] == ["alice", "bob"]
    problems = "\n".join(score["problems"])
    for expected in (
        "bad-json.json: not JSON: line 2 column 14",
        f"other-study.json: answers for study 'abc', this study is '{key['study_id']}'",
        "unknown.json: 1 unknown items: x42",
        "twice.json: items answered more than once: p001 (2 times)",
        "value.json: item p002: answer 'maybe' is not one of none, left, right, both",
        "z-bob-again.json: reader 'bob' again (1 answers); kept",
    ):
        assert expected in problems, problems
    assert len(score["problems"]) == 6 and "left out:" in result.output
    groups = {(g["by"], g["group"]): g["readers"] for g in score["groups"]}
    assert groups[("experience", "0-4 years")] == 1 and groups[("experience", "10+ years")] == 1
    assert set(score["agreement"]) >= {"pair_answers", "image_flags", "classify_answers"}
    assert "cohen_kappa" in score["agreement"]["pair_answers"]
    page = (study / "score" / "score.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # self-contained
    for name in ("readers.csv", "classes.csv", "groups.csv"):
        assert (study / "score" / name).read_text().count("\n") > 2


def test_score_of_a_reader_who_never_flags_anything(study, tmp_path):
    key = key_of(study)
    never = {i["id"]: ("none" if i["task"] == "pair" else i["answer"]) for i in key["items"]}
    write_answers(tmp_path / "a", "never.json", answer_file(key, "never", never))
    result, _ = score_study(study, [tmp_path / "a"], tmp_path / "out")
    m = result["readers"][0]["metrics"]
    assert m["detection_accuracy"]["value"] == 0.5 and m["detection_sensitivity"]["value"] == 0.0
    assert m["detection_specificity"]["value"] == 1.0 and m["pair_specificity"]["value"] == 1.0
    assert m["pair_sensitivity"]["value"] == 0.0 and result["readers"][0]["beats_chance"]["p_value"] > 0.5
    assert "fleiss_kappa" not in json.dumps(result["agreement"])


def test_score_with_no_usable_file_exits_2_naming_the_files(study, tmp_path):
    write_answers(tmp_path / "a", "x.json", "[]")
    result = CliRunner().invoke(app, ["study", "score", str(study), "--answers", str(tmp_path / "a")])
    assert result.exit_code == 2 and "x.json: not a medisyn study answer file" in result.output
