"""`medisyn study build`: draw a blinded design from a real and a synthetic set; write STUDY/site/ and STUDY/key.json.

Steps: 1. list every image of both sets (keys and labels only) -> 2. match their classes -> 3. draw the seeded
design -> 4. decode the chosen images and normalise them (one size, one mode, no metadata) -> 5. write the site
and the key into a temporary folder, renamed to STUDY when complete.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medisyn_cli.core.datasets import find_sources, iter_source_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import to_8bit
from medisyn_cli.core.ownership import (
    claim,
    holds_files,
    refuse_foreign,
    remove_temp,
    replace_in_place,
)
from medisyn_cli.core.progress import Task, current, reporting
from medisyn_cli.study.design import DEFAULT_MIX, REAL, SYNTHETIC, Pick, draw_design
from medisyn_cli.study.site import KEY_FORMAT, normalise, png_of, public_study, write_site

DEFAULT_CLASSIFY = 60
MAX_AUTO_SIZE = 512


@dataclass(frozen=True)
class StudyConfig:
    """Options of `medisyn study build` (one source of defaults for the CLI and the API)."""

    real: tuple[str, ...] = field(
        metadata={
            "help": "Real images: medisyn output, Parquet, ImageFolder with metadata.csv, or image folder "
            "(labels from folder names)."
        }
    )
    synthetic: tuple[str, ...] = field(
        metadata={
            "help": "Synthetic images: medisyn output, Parquet, ImageFolder with metadata.csv, or image folder "
            "(labels from folder names)."
        }
    )
    out: str = field(metadata={"help": "Study folder to write (site/, key.json, answers/)."})
    pairs: int = field(
        default=40, metadata={"help": "Pair items: real+synthetic, real+real and synthetic+synthetic."}
    )
    classify: int | None = field(
        default=None,
        metadata={
            "help": "Single-image classification items, real and synthetic of every class (default 60 when "
            "both sets share two or more classes, else 0)."
        },
    )
    labels: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Classes to use, comma-separated; real=synthetic maps differently named classes (default: "
            "every class in both sets)."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the design (which images, order, left/right, file names)."}
    )
    title: str = field(default="Real or synthetic?", metadata={"help": "Title shown to readers."})
    size: int | None = field(
        default=None,
        metadata={
            "help": "Side in px every image is resized to (default: the smallest side of the chosen images, at "
            "most 512)."
        },
    )
    mix: tuple[float, float, float] = field(
        default=DEFAULT_MIX,
        metadata={"help": "Shares of real+synthetic, real+real and synthetic+synthetic pairs."},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an existing study (not one with answers)."}
    )
    notes: list[str] = field(default_factory=list, compare=False)


def build_study(config: StudyConfig, show_progress: bool = True) -> dict:
    """Build the study folder; returns its key (design, answers, provenance)."""
    with reporting(show_progress):
        return _build_study(config)


def _build_study(config: StudyConfig) -> dict:
    out = Path(config.out)
    _check_out(out, config.overwrite)
    if config.pairs < 0 or (config.classify or 0) < 0:
        raise MedisynError("--pairs and --classify must be 0 or more")
    real, synthetic = list_images(config.real, "--real"), list_images(config.synthetic, "--synthetic")
    both = set(_all(real)) & set(_all(synthetic))
    if both:
        raise MedisynError(f"{len(both)} images are in both --real and --synthetic, e.g. {min(both)}")
    classes = match_classes(real, synthetic, config.labels)
    classify = _classify_count(config.classify, classes)
    if config.pairs + classify == 0:
        raise MedisynError("--pairs and --classify are both 0: the study would have no items")
    pools = {(REAL, r): real[r] if r is not None else _all(real) for r, _ in classes}
    pools.update({(SYNTHETIC, r): synthetic[s] if s is not None else _all(synthetic) for r, s in classes})
    items = draw_design(pools, [r for r, _ in classes], config.pairs, classify, config.mix, config.seed)
    images = load_picks([p for item in items for p in item["images"]], config)
    size, mode = _geometry(images.values(), config.size)
    files = _file_names(images, config.seed)
    key = _key(config, classes, items, files, size, mode)
    task, pngs = Task(current(), "study: encoding images", len(images)), {}
    for pick, image in images.items():
        pngs[files[pick]] = png_of(normalise(image, size, mode))
        task.advance(1)
    _write(out, key, pngs, config.overwrite)
    return key


def _legacy_study_files(folder: Path) -> set[str]:
    """The files an older `study build` wrote (key.json and site/, no record of its files)."""
    if not (folder / "key.json").is_file():
        return set()
    return {"key.json"} | {
        p.relative_to(folder).as_posix() for p in (folder / "site").rglob("*") if p.is_file()
    }


def _check_out(out: Path, overwrite: bool) -> None:
    refuse_foreign(out, "study build", _legacy_study_files)
    if holds_files(
        out, lambda p: p.name.startswith(".medisyn") or p.name == "answers" and not any(p.iterdir())
    ):
        if not overwrite:
            raise MedisynError(f"{out}: exists and is not empty (pass --overwrite to replace a study)")
        answers = list((out / "answers").glob("*.json"))
        if answers:
            raise MedisynError(
                f"{out / 'answers'}: holds {len(answers)} readers' answer files; move them out "
                "before replacing the study"
            )


def list_images(paths: tuple[str, ...], option: str) -> dict:
    """{label or None: [keys]} of every image of the datasets (nothing decoded)."""
    if not paths:
        raise MedisynError(f"{option}: no dataset given")
    pools: dict = defaultdict(list)
    for source in find_sources(list(paths)):
        for record in iter_source_records(source):
            pools[record.label].append(record.key)
    return dict(pools)


def _all(pools: dict) -> list[str]:
    return [key for keys in pools.values() for key in keys]


def match_classes(real: dict, synthetic: dict, labels: tuple[str, ...]) -> list[tuple]:
    """[(real class, synthetic class)]: --labels, else the classes of both sets, else one unlabelled class."""
    if labels:
        pairs = [tuple(x.split("=", 1)) if "=" in x else (x, x) for x in labels]
        for pools, side, index in ((real, REAL, 0), (synthetic, SYNTHETIC, 1)):
            for wanted in (pair[index] for pair in pairs):
                if wanted not in pools:
                    raise MedisynError(
                        f"--labels: class {wanted!r} is not in the {side} set (classes: {_names(pools)})"
                    )
        return pairs
    shared = sorted(set(real) & set(synthetic) - {None})
    if shared:
        return [(c, c) for c in shared]
    if set(real) == {None} or set(synthetic) == {None}:
        return [(None, None)]
    raise MedisynError(
        f"no class is in both sets (real: {_names(real)}; synthetic: {_names(synthetic)}); "
        "name them with --labels real=synthetic,..."
    )


def _names(pools: dict) -> str:
    return ", ".join(sorted(str(k) for k in pools if k is not None)) or "none (unlabelled)"


def _classify_count(classify: int | None, classes: list[tuple]) -> int:
    labelled = [c for c in classes if c[0] is not None]
    if classify is None:
        return DEFAULT_CLASSIFY if len(labelled) >= 2 else 0
    if classify and len(labelled) < 2:
        raise MedisynError("--classify needs two or more classes in both sets (pass --classify 0)")
    return classify


def load_picks(picks: list[Pick], config: StudyConfig) -> dict:
    """{pick: PIL image} for the chosen images, reading each set once more (MedisynError if one won't decode)."""
    wanted = {(p.source, p.key): p for p in picks}
    found, task = {}, Task(current(), "study: reading the chosen images", len(wanted))
    for source_name, paths in ((REAL, config.real), (SYNTHETIC, config.synthetic)):
        for source in find_sources(list(paths)):
            for record in iter_source_records(source):
                pick = wanted.get((source_name, record.key))
                if pick is not None and pick not in found:
                    try:
                        found[pick] = record.open()
                        task.advance(1)
                    except Exception as exc:  # PIL raises many types for corrupt data
                        raise MedisynError(
                            f"{record.key}: cannot decode ({type(exc).__name__}: {exc}); "
                            "remove it or pick another --seed"
                        ) from exc
    return {p: found[p] for p in picks}


def _geometry(images, size: int | None) -> tuple[int, str]:
    """The study's image side (given, or the smallest side of the chosen images) and mode (RGB if any has colour)."""
    import numpy as np

    images = list(images)
    side = size or min(MAX_AUTO_SIZE, min(min(im.size) for im in images))
    if side < 8:
        raise MedisynError(f"--size {side}: images of at least 8 px needed")
    colour = False
    for image in images:
        array = np.asarray(to_8bit(image).convert("RGB"), dtype=np.int16)
        colour = colour or bool(
            np.any(array[..., 0] != array[..., 1]) or np.any(array[..., 1] != array[..., 2])
        )
    return side, "RGB" if colour else "L"


def _file_names(images: dict, seed: int) -> dict:
    """{pick: 'img/<16 random hex digits>.png'}: names that say nothing about an image."""
    rng = random.Random(f"medisyn-study-names-{seed}")
    names: dict = {}
    used = set()
    for pick in images:
        name = f"{rng.getrandbits(64):016x}"
        while name in used:
            name = f"{rng.getrandbits(64):016x}"
        used.add(name)
        names[pick] = f"img/{name}.png"
    return names


def _key(
    config: StudyConfig, classes: list[tuple], items: list[dict], files: dict, size: int, mode: str
) -> dict:
    """The answer key: design, every item's answer and its images' provenance, and the study id derived from them."""
    key_items, synthetic_label = [], dict(classes)
    for item in items:
        images = [
            {
                "file": files[p],
                "source": p.source,
                "key": p.key,
                "label": p.label if p.source == REAL else synthetic_label[p.label],
            }
            for p in item["images"]
        ]
        entry = {
            "id": item["id"],
            "task": item["task"],
            "label": item["label"],
            "answer": item["answer"],
            "images": images,
        }
        if item["task"] == "pair":
            entry["kind"] = item["kind"]
        key_items.append(entry)
    design = {
        "pairs": sum(i["task"] == "pair" for i in items),
        "classify": sum(i["task"] == "classify" for i in items),
        "pair_mix": dict(zip(("real+synthetic", "real+real", "synthetic+synthetic"), config.mix)),
        "seed": config.seed,
        "image_size": size,
        "image_mode": mode,
    }
    body = {
        "title": config.title,
        "classes": [r for r, _ in classes if r is not None],
        "class_map": {str(r): s for r, s in classes},
        "design": design,
        "items": key_items,
        "inputs": {
            "real": [str(Path(p).resolve()) for p in config.real],
            "synthetic": [str(Path(p).resolve()) for p in config.synthetic],
        },
    }
    study_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    return {
        "format": KEY_FORMAT,
        "version": 1,
        "study_id": study_id,
        **body,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write(out: Path, key: dict, pngs: dict[str, bytes], overwrite: bool) -> None:
    """Write site/ and key.json into a temp folder of this run inside `out`, then rename them in over the old
    study's recorded files (anything else in `out` stays)."""
    with claim(out, "study build", fallback=_legacy_study_files, adopt=True) as owner:
        _check_out(owner.path, overwrite)  # again under the lock
        tmp = owner.temp("new")
        try:
            write_site(tmp / "site", public_study(key), pngs)
            (tmp / "key.json").write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
            names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            replace_in_place(owner, tmp, names)
        finally:
            remove_temp(tmp)
        (owner.path / "answers").mkdir(exist_ok=True)
