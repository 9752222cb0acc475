"""The static reader page: normalised images under opaque names, the public item list (study.js) and the assets."""

from __future__ import annotations

import html
import io
import json
import os
from importlib import resources
from pathlib import Path

from medisyn_cli.core.images import to_8bit
from medisyn_cli.study.design import CANNOT_TELL, PAIR_ANSWERS

KEY_FORMAT = "medisyn-study-key"
STUDY_FORMAT = "medisyn-study"
ANSWERS_FORMAT = "medisyn-study-answers"
ASSETS = ("index.html", "app.js", "style.css")
FIXED_MTIME = 946684800  # 2000-01-01: every file of site/ gets the same time stamp


def normalise(image, size: int, mode: str):
    """The image as `mode` ('L' or 'RGB'), centre-cropped square, resized to size x size, with no metadata."""
    from PIL import Image

    image = to_8bit(image).convert(mode)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return Image.frombytes(mode, (size, size), image.tobytes())  # a fresh image: no info, ICC profile or EXIF


def png_of(image) -> bytes:
    """PNG bytes written the same way for every image: no text, time, gamma or physical-size chunks, and no
    compression, so every image of one size and mode has one byte size (a compressed size would tell smooth
    synthetic images from real ones, and a browser shows it as Content-Length)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def public_study(key: dict) -> dict:
    """What the page may know: item ids, tasks, image files and the class list; no source, label or answer."""
    items = [
        {"id": item["id"], "task": item["task"], "images": [image["file"] for image in item["images"]]}
        for item in key["items"]
    ]
    classes = [{"value": c, "text": c.replace("_", " ")} for c in key["classes"]]
    return {
        "format": STUDY_FORMAT,
        "version": 1,
        "study_id": key["study_id"],
        "title": key["title"],
        "classes": classes,
        "pair_answers": list(PAIR_ANSWERS),
        "cannot_tell": CANNOT_TELL,
        "answers_format": ANSWERS_FORMAT,
        "items": items,
    }


def write_site(folder: Path, study: dict, pngs: dict[str, bytes]) -> None:
    """index.html, app.js, style.css, study.js and img/*.png; files written in name order, one time stamp."""
    (folder / "img").mkdir(parents=True)
    assets = resources.files(__package__) / "assets"
    for name in ASSETS:
        text = (assets / name).read_text(encoding="utf-8")
        if name == "index.html":
            text = text.replace("{{title}}", html.escape(study["title"]))
        (folder / name).write_text(text, encoding="utf-8")
    script = "window.MEDISYN_STUDY = " + json.dumps(study, indent=1).replace("</", "<\\/") + ";\n"
    (folder / "study.js").write_text(script, encoding="utf-8")
    for name in sorted(pngs):
        (folder / name).write_bytes(pngs[name])
    for path in [folder, folder / "img", *folder.rglob("*")]:
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
