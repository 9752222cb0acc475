"""A reader study must not tell real from synthetic by anything but the pixels: not by a file's byte size (a
browser shows it as Content-Length), dimensions, mode, PNG chunks, name or place in the page."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageFilter, PngImagePlugin

from medisyn_cli.study import StudyConfig, build_study

DATA = Path("/work/shared/data/brain_tumor_mri")
if not DATA.exists():
    DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_tumor_mri"
CLASSES = ("glioma", "no_tumor")
PER_CLASS = 20
CHANCE = 0.25  # |AUC - 0.5| allowed: about 3.5 standard deviations at this study's size; a leak at 0.98 fails


def auc(values: list[float], synthetic: list[bool]) -> float:
    """Probability that a synthetic image's value is above a real one's (ties count half)."""
    pos = [v for v, s in zip(values, synthetic, strict=True) if s]
    neg = [v for v, s in zip(values, synthetic, strict=True) if not s]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def png_chunks(data: bytes) -> list[str]:
    """Chunk types of a PNG, in order."""
    chunks, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        chunks.append(data[offset + 4 : offset + 8].decode("ascii"))
        offset += 12 + length
    return chunks


def real_and_synthetic(root: Path) -> tuple[Path, Path]:
    """Real MRI slices (grey PNGs in label folders, as shipped) and stand-in synthetic ones: other slices of the
    same classes made smooth (as a diffusion model's are), stored as RGB PNGs with a text chunk in Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(DATA / "metadata.csv", newline="") as handle:
        listed = [(row["label"], DATA / row["file_name"]) for row in csv.DictReader(handle)]
    rows = []
    for label in CLASSES:
        files = sorted(path for name, path in listed if name == label)
        assert len(files) >= 2 * PER_CLASS, label
        (root / "real" / label).mkdir(parents=True)
        for path in files[:PER_CLASS]:
            shutil.copy(path, root / "real" / label / path.name)
        for i, path in enumerate(files[PER_CLASS : 2 * PER_CLASS]):
            smooth = Image.open(path).convert("RGB").filter(ImageFilter.GaussianBlur(2))
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", f"medisyn {label} seed {i}")
            buffer = io.BytesIO()
            smooth.save(buffer, "PNG", pnginfo=info)
            rows.append(
                {
                    "image": {"bytes": buffer.getvalue(), "path": None},
                    "id": f"{label}-{i:06d}",
                    "label": label,
                }
            )
    (root / "synthetic").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "synthetic" / "part-00000.parquet")
    return root / "real", root / "synthetic"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    if not DATA.exists():
        pytest.skip(f"{DATA}: the shared sample images are not here")
    root = tmp_path_factory.mktemp("blinding")
    real, synthetic = real_and_synthetic(root)
    out = root / "study"
    build_study(StudyConfig((str(real),), (str(synthetic),), str(out), pairs=24, classify=16, seed=5))
    return out, json.loads((out / "key.json").read_text())


def site_images(study: Path, key: dict) -> tuple[list[str], list[bool]]:
    truth = {
        image["file"]: image["source"] == "synthetic" for item in key["items"] for image in item["images"]
    }
    files = sorted(truth)
    return files, [truth[f] for f in files]


def test_the_sets_differ_in_compressed_size_as_real_studies_do(built):
    """The check below means something: compressed, these very site images would give themselves away."""
    study, key = built
    files, synthetic = site_images(study, key)
    sizes = []
    for name in files:
        buffer = io.BytesIO()
        Image.open(study / "site" / name).save(buffer, "PNG", compress_level=6)
        sizes.append(len(buffer.getvalue()))
    assert abs(auc(sizes, synthetic) - 0.5) > 0.4


def test_byte_size_dimensions_mode_and_chunks_are_one_value_for_every_image(built):
    study, key = built
    files, synthetic = site_images(study, key)
    assert sum(synthetic) >= 20 and len(files) - sum(synthetic) >= 20
    features: dict[str, list] = {
        "bytes": [],
        "dimensions": [],
        "mode": [],
        "chunks": [],
        "info": [],
        "stat": [],
    }
    for name in files:
        path = study / "site" / name
        data = path.read_bytes()
        with Image.open(path) as image:
            features["dimensions"].append(image.size)
            features["mode"].append(image.mode)
            features["info"].append(tuple(sorted(image.info)))
        features["bytes"].append(len(data))
        features["chunks"].append(tuple(png_chunks(data)))
        features["stat"].append((path.stat().st_mtime, path.stat().st_mode))
    for feature, values in features.items():
        assert len(set(values)) == 1, (feature, sorted(set(values))[:4])
        assert auc([hash(v) for v in values], synthetic) == 0.5, feature
    assert features["chunks"][0] == ("IHDR", "IDAT", "IEND")


def test_names_and_order_carry_no_signal(built):
    study, key = built
    files, synthetic = site_images(study, key)
    assert all(re.fullmatch(r"img/[0-9a-f]{16}\.png", name) for name in files)
    public = json.loads(
        re.sub(r"^window\.MEDISYN_STUDY = |;\s*$", "", (study / "site" / "study.js").read_text())
    )
    place = {f: (n, slot) for n, item in enumerate(public["items"]) for slot, f in enumerate(item["images"])}
    listing = sorted(p.name for p in (study / "site" / "img").iterdir())
    features = {
        "name": [int(f[4:20], 16) for f in files],
        "position in the page": [place[f][0] for f in files],
        "left or right": [place[f][1] for f in files],
        "place in the folder listing": [listing.index(Path(f).name) for f in files],
    }
    for feature, values in features.items():
        assert abs(auc(values, synthetic) - 0.5) <= CHANCE, (feature, auc(values, synthetic))
    pairs = [item for item in key["items"] if item["task"] == "pair" and item["kind"] == "real+synthetic"]
    left_synthetic = [item["images"][0]["source"] == "synthetic" for item in pairs]
    assert abs(sum(left_synthetic) - len(pairs) / 2) <= 1  # which side the synthetic image is on: balanced
