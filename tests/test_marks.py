"""Synthetic-content marks (#27): the XMP packet in PNG and JPEG, the Parquet metadata, what readers find."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from dataset_samples import MARK, encode, real_png
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.dataset.marks import (
    DIGITAL_SOURCE_TYPE,
    PARQUET_KEY,
    Mark,
    card_lines,
    is_synthetic,
    mark_jpeg,
    mark_png,
    parquet_metadata,
    parse_xmp,
    read_jpeg_mark,
    read_mark,
    read_parquet_mark,
    read_png_mark,
    row_mark,
    weights_digest,
    xmp_packet,
)


@pytest.mark.parametrize("dataset", ["brain_tumor_mri", "isic2017_dermoscopy"])  # mode L and RGB
def test_marked_png_keeps_its_pixels_and_reads_back(dataset):
    png = real_png(dataset)
    marked = mark_png(png, MARK)
    before, after = Image.open(io.BytesIO(png)), Image.open(io.BytesIO(marked))
    assert after.mode == before.mode and np.array_equal(np.asarray(after), np.asarray(before))
    found = read_mark(marked)
    assert found == {
        "mark": "xmp-iptc",
        "digital_source_type": DIGITAL_SOURCE_TYPE,
        "tool": "medisyn",
        "version": "0.1.0",
        "run_id": MARK.run_id,
        "image_id": MARK.image_id,
        "model": MARK.model,
        "model_sha256": MARK.model_sha256,
    }
    assert is_synthetic(found) and read_png_mark(marked) == found and read_jpeg_mark(marked) is None
    assert read_mark(png) is None


def test_marking_is_deterministic_and_replaces_an_older_mark():
    png = real_png("brain_tumor_mri")
    assert mark_png(png, MARK) == mark_png(png, MARK)
    twice = mark_png(mark_png(png, MARK.for_image("other")), MARK)
    assert twice == mark_png(png, MARK)
    assert twice.count(b"XML:com.adobe.xmp") == 1


def test_pillow_finds_the_packet_where_exiftool_style_readers_look(tmp_path):
    pytest.importorskip("defusedxml")  # Pillow's getxmp parses with it
    path = tmp_path / "a.png"
    path.write_bytes(mark_png(real_png("isic2017_dermoscopy"), MARK))
    image = Image.open(path)
    assert "trainedAlgorithmicMedia" in image.info["XML:com.adobe.xmp"]
    description = image.getxmp()["xmpmeta"]["RDF"]["Description"]
    assert description["DigitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert description["RunId"] == MARK.run_id and description["ImageId"] == MARK.image_id
    assert description["CreatorTool"] == "medisyn 0.1.0"
    assert read_mark(path) == read_mark(path.read_bytes())


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_exiftool_reads_the_png_and_jpeg_marks(tmp_path):
    image = Image.open(io.BytesIO(real_png("isic2017_dermoscopy")))
    (tmp_path / "a.png").write_bytes(mark_png(encode(image), MARK))
    (tmp_path / "a.jpg").write_bytes(mark_jpeg(encode(image, "JPEG", quality=90), MARK))
    for name in ("a.png", "a.jpg"):
        result = subprocess.run(
            ["exiftool", "-j", "-XMP:all", str(tmp_path / name)], capture_output=True, text=True, check=True
        )
        tags = json.loads(result.stdout)[0]
        assert tags["DigitalSourceType"] == DIGITAL_SOURCE_TYPE, name
        assert tags["RunId"] == MARK.run_id and tags["ModelSha256"] == MARK.model_sha256, name


def test_jpeg_mark_after_jfif_header_and_pixels_unchanged():
    pytest.importorskip("defusedxml")
    jpeg = encode(Image.open(io.BytesIO(real_png("brain_tumor_mri"))), "JPEG", quality=92)
    marked = mark_jpeg(jpeg, MARK)
    assert marked[2:4] == b"\xff\xe0"  # JFIF APP0 stays first, XMP APP1 after it
    assert read_jpeg_mark(marked)["image_id"] == MARK.image_id and read_mark(jpeg) is None
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(marked))), np.asarray(Image.open(io.BytesIO(jpeg)))
    )
    assert Image.open(io.BytesIO(marked)).getxmp()["xmpmeta"]["RDF"]["Description"]["RunId"] == MARK.run_id
    assert mark_jpeg(marked, MARK) == marked


def test_a_resave_or_crop_strips_the_mark():
    marked = mark_png(real_png("brain_tumor_mri"), MARK)
    image = Image.open(io.BytesIO(marked))
    assert read_mark(encode(image)) is None
    assert read_mark(encode(image.crop((4, 4, 60, 60)))) is None


def test_text_with_markup_and_unicode_survives():
    mark = Mark('run"<&>', "läsion-000001", "model 'x' & <y>", "", "0.1.0")
    found = read_mark(mark_png(real_png("brain_tumor_mri"), mark))
    assert (found["run_id"], found["image_id"], found["model"]) == (mark.run_id, mark.image_id, mark.model)


def test_compressed_xmp_written_by_another_tool_is_read():
    image = Image.open(io.BytesIO(real_png("brain_tumor_mri")))
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp_packet(MARK).decode(), zip=True)
    assert read_mark(encode(image, pnginfo=info))["run_id"] == MARK.run_id


def test_other_source_types_and_hostile_packets_are_not_marks():
    captured = xmp_packet(
        Mark(
            "r",
            "i",
            "m",
            "",
            "1",
            digital_source_type="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture",
        )
    )
    assert not is_synthetic(parse_xmp(captured))
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>'
    assert parse_xmp(bomb) is None and parse_xmp(b"not xml <") is None
    assert read_mark(b"\x89PNG\r\n\x1a\n\x00\x00") is None and read_mark(b"plain text") is None


def test_mark_png_refuses_what_is_not_a_png():
    with pytest.raises(MedisynError, match="not a PNG"):
        mark_png(b"GIF89a....", MARK)
    with pytest.raises(MedisynError, match="not a JPEG"):
        mark_jpeg(b"\x89PNG", MARK)


def test_parquet_schema_metadata_and_row_field_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field("id", pa.string()), pa.field("digital_source_type", pa.string())])
    schema = schema.with_metadata({"huggingface": "{}", **parquet_metadata(MARK)})
    table = pa.Table.from_pylist([{"id": "a", **row_mark(MARK)}], schema=schema)
    pq.write_table(table, tmp_path / "part.parquet")
    found = read_parquet_mark(tmp_path / "part.parquet")
    assert found["mark"] == "parquet-metadata" and found["run_id"] == MARK.run_id
    assert "image_id" not in found and is_synthetic(found)
    assert json.loads(parquet_metadata(MARK)[PARQUET_KEY])["model_sha256"] == MARK.model_sha256
    assert (
        pq.read_table(tmp_path / "part.parquet").column("digital_source_type")[0].as_py()
        == DIGITAL_SOURCE_TYPE
    )
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "plain.parquet")
    assert read_parquet_mark(tmp_path / "plain.parquet") is None and row_mark(None) == {
        "digital_source_type": None
    }


def test_weights_digest_is_one_hash_whatever_the_file_order():
    hashes = {"unet/a.safetensors": "1" * 64, "vae/b.safetensors": "2" * 64}
    assert weights_digest(hashes) == weights_digest(dict(reversed(hashes.items())))
    assert (
        len(weights_digest(hashes)) == 64
        and weights_digest({}) == ""
        and weights_digest("c" * 64) == "c" * 64
    )
    assert weights_digest(hashes) != weights_digest({**hashes, "vae/b.safetensors": "3" * 64})


def test_card_lines_say_how_files_are_marked_or_that_they_are_not():
    marked = " ".join(card_lines(MARK, ("parquet", "dicom")))
    assert "synthetic" in marked and DIGITAL_SOURCE_TYPE in marked and "(0008,001C) = YES" in marked
    assert MARK.run_id in marked and "medisyn provenance" in marked
    unmarked = " ".join(card_lines(None, ("parquet",)))
    assert "--no-mark" in unmarked and "0008,001C" not in unmarked


def test_jpeg_mark_goes_after_a_leading_exif_segment_and_keeps_it():
    exif = Image.Exif()
    exif[0x0131] = "scanner 2.1"  # Software
    jpeg = encode(Image.open(io.BytesIO(real_png("isic2017_dermoscopy"))), "JPEG", exif=exif.tobytes())
    marked = mark_jpeg(jpeg, MARK)
    assert marked.find(b"Exif\x00\x00") < marked.find(b"http://ns.adobe.com/xap/1.0/\x00")
    assert Image.open(io.BytesIO(marked)).getexif()[0x0131] == "scanner 2.1"
    assert read_mark(marked)["run_id"] == MARK.run_id
