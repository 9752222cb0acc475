"""Screenshots of the reader page and of score.html for the README's "Reader study" section.

The bundled model's dermoscopy images against the real ISIC 2017 images of ../shared/data. The answers come
from SIMULATED readers driven through the page in headless Chromium (each answers correctly with a fixed
probability, otherwise at random): they show what the score page looks like, not how physicians do.

    medisyn generate --manifest prompts/mini_dermoscopy.csv --n 60 --out /tmp/derm-synth
    python docs/study/make_screenshots.py --synthetic /tmp/derm-synth --real ../shared/data/isic2017_dermoscopy
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

from medisyn_cli.study import StudyConfig, build_study, score_study

HERE = Path(__file__).resolve().parent
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]
READERS = [
    ("sim-A", 15, "attending / consultant", 0.9),
    ("sim-B", 8, "attending / consultant", 0.75),
    ("sim-C", 3, "resident / trainee", 0.6),
    ("sim-D", 1, "medical student", 0.5),
]


def simulated(key: dict, p_right: float, seed: int) -> dict:
    """Right with probability p_right, else a uniformly random answer."""
    rng = random.Random(seed)
    answers = {}
    for item in key["items"]:
        options = (
            ["none", "left", "right", "both"] if item["task"] == "pair" else key["classes"] + ["cannot tell"]
        )
        answers[item["id"]] = item["answer"] if rng.random() < p_right else rng.choice(options)
    return answers


def run_reader(page, reader: tuple, answers: dict, folder: Path, shots: dict) -> None:
    name, years, role, _ = reader
    page.fill("#reader-id", name)
    page.fill("#reader-years", str(years))
    page.select_option("#reader-role", role)
    page.click("#start")
    while page.locator("#done").count() == 0:
        item = page.locator(".item").get_attribute("data-item")
        task = page.locator(".item").get_attribute("data-task")
        if task in shots:
            page.mouse.move(0, 0)
            page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth)")
            page.screenshot(path=str(shots.pop(task)))
        page.click(f'.answers button[data-answer="{answers[item]}"]')
        page.wait_for_function("id => !document.querySelector(`.item[data-item='${id}']`)", arg=item)
    with page.expect_download() as info:
        page.click("#download")
    info.value.save_as(folder / f"{name}.json")
    page.click("#next-reader")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", default=str(HERE.parents[1].parent / "shared/data/isic2017_dermoscopy"))
    parser.add_argument("--synthetic", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="medisyn-study-"))
    study = work / "derm-study"
    key = build_study(
        StudyConfig(
            (args.real,),
            (args.synthetic,),
            str(study),
            pairs=40,
            classify=30,
            title="Dermoscopy: real or synthetic?",
            seed=0,
        )
    )
    answers = study / "answers"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_context(
            viewport={"width": 1100, "height": 860}, device_scale_factor=1, accept_downloads=True
        ).new_page()
        page.goto((study / "site" / "index.html").as_uri())
        shots = {"pair": HERE / "pair.png"}
        for n, reader in enumerate(READERS):
            run_reader(page, reader, simulated(key, reader[3], seed=n), answers, shots)
        score_study(study, [answers])
        page.set_viewport_size({"width": 1200, "height": 1000})
        page.goto((study / "score" / "score.html").as_uri())
        page.screenshot(path=str(HERE / "score.png"), full_page=True)
        browser.close()
    shutil.copy(study / "score" / "readers.csv", HERE / "readers-simulated.csv")
    print(json.dumps({"study": str(study), "screenshots": sorted(p.name for p in HERE.glob("*.png"))}))


if __name__ == "__main__":
    main()
