"""What a dataset card may say about where its model came from: portable names and the model's licence.

A card travels (the Hub, a collaborator, a reviewer), so it names files by their name, never by the absolute path
they had on the machine that made them, and it carries the licence of the model that made the images: MediSyn's
weights are CC BY-NC-ND 4.0, and images made with them inherit its terms, which a blanket licence would hide.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

# Models whose licence is known without their card (hub ids; a local folder's own README.md header is read).
KNOWN_LICENCES = {
    "hiesingerlab/medisyn": ("cc-by-nc-nd-4.0", "CC BY-NC-ND 4.0: non-commercial use only, no derivatives"),
    "runwayml/stable-diffusion-v1-5": ("creativeml-openrail-m", "CreativeML OpenRAIL-M"),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("creativeml-openrail-m", "CreativeML OpenRAIL-M"),
    "stabilityai/stable-diffusion-2-1": ("openrail++", "CreativeML OpenRAIL++-M"),
    "stabilityai/stable-diffusion-xl-base-1.0": ("openrail++", "CreativeML OpenRAIL++-M"),
}
LICENCE_FIELDS = ("license", "license_name", "license_link")


def portable(value: str | None) -> str:
    """A path as a card may show it: its last component if it is a local path, anything else as it is."""
    if not value:
        return ""
    text = str(value)
    windows = PureWindowsPath(text)
    if windows.drive or text.startswith(("/", "~", "./", "../", ".\\")) or Path(text).exists():
        name = windows.name if windows.drive else PurePosixPath(text.rstrip("/")).name
        return name or text
    return text


def model_licence(model: dict) -> dict:
    """The model's licence: from run.json's record, its folder's README.md header, or the known hub ids; {} if none."""
    if model.get("licence"):
        return dict(model["licence"])
    source = str(model.get("source") or "")
    card = Path(source) / "README.md" if source else None
    if card is not None and card.is_file():
        found = _header_fields(card.read_text(encoding="utf-8", errors="replace"))
        if found.get("license"):
            return found
    known = KNOWN_LICENCES.get(source.lower())
    return {"license": known[0], "license_name": known[1]} if known else {}


def licence_header(model: dict) -> str:
    """The card header's licence lines (Hugging Face keys): the model's, or `other` with a pointer."""
    found = model_licence(model)
    if not found:
        return "license: other\nlicense_name: synthetic-see-model-licence"
    return "\n".join(f"{key}: {found[key]}" for key in LICENCE_FIELDS if found.get(key))


def licence_lines(model: dict) -> list[str]:
    """The card's Licence section: the model's licence terms, which the images inherit."""
    found = model_licence(model)
    name = portable(model.get("source")) or model.get("name", "the model")
    if not found:
        return [
            f"The images inherit the terms of the model that generated them (`{name}`) and of its training data; "
            "its licence was not recorded: check the model card before sharing."
        ]
    terms = found.get("license_name") or found["license"]
    link = f" ({found['license_link']})" if found.get("license_link") else ""
    return [
        f"The images were made with `{name}`, whose licence is **{terms}** (`{found['license']}`){link}. "
        "They inherit its terms and those of its training data: check them before any use beyond research."
    ]


def _header_fields(text: str) -> dict:
    """The licence keys of a model card's YAML header (a simple `key: value` read, no YAML library)."""
    match = re.match(r"---\n(.*?)\n---", text, re.S)
    fields = {}
    for line in (match.group(1) if match else "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in LICENCE_FIELDS and value.strip():
            fields[key.strip()] = value.strip().strip("'\"")
    return fields
