"""Synthetic-content marks: machine-readable statements, inside each file medisyn writes, that an image is made.

    mark = Mark(run_id="3f2a9c1b7d4e", image_id="melanoma-000012", model="medisyn-mini", model_sha256="ab..")
    png = mark_png(png, mark)            # an iTXt chunk "XML:com.adobe.xmp" right after IHDR; same input, same bytes
    read_mark(png)                       # {"mark": "xmp-iptc", "digital_source_type": "http://cv.iptc...", ...}

PNG and JPEG carry an XMP packet (PNG: iTXt chunk, JPEG: APP1 segment, where exiftool, Pillow's `getxmp()` and
Adobe's tools look) with the IPTC digital source type `trainedAlgorithmicMedia` (the marker IPTC, C2PA and the
EU AI Act's code of practice name for generated images) and medisyn's own fields in its XMP namespace: tool,
version, run id, image id, model name and a sha256 over the model's weight files. Parquet carries the run's mark
in its schema metadata (key `medisyn.mark`) and the source type in a row column; DICOM its own attributes
(dataset.dicom). The packet is plain text: a re-save, screenshot or crop drops it, which is why `provenance`
also matches images against an index of one's outputs.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from medisyn_cli.core.errors import MedisynError

IPTC_CODES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
DIGITAL_SOURCE_TYPE = IPTC_CODES + "trainedAlgorithmicMedia"
# IPTC source types that say the pixels were made, wholly or in part, by an algorithm (not captured)
SYNTHETIC_SOURCE_TYPES = frozenset(
    IPTC_CODES + code
    for code in (
        "trainedAlgorithmicMedia",
        "compositeWithTrainedAlgorithmicMedia",
        "algorithmicMedia",
        "compositeSynthetic",
    )
)
IPTC_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
MEDISYN_NS = "https://medisyn.dev/ns/xmp/1.0/"  # a name, not a page: XMP namespaces need not resolve
XMP_KEYWORD = b"XML:com.adobe.xmp"
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
PARQUET_KEY = "medisyn.mark"
MARK_COLUMNS = {"digital_source_type": "string"}  # the row field Parquet rows carry (Arrow type)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PACKET = 1 << 20  # a compressed XMP chunk is inflated to at most this many bytes

# Mark field -> its XMP property (medisyn namespace)
XMP_FIELDS = {
    "tool": "Tool",
    "version": "Version",
    "run_id": "RunId",
    "image_id": "ImageId",
    "model": "Model",
    "model_sha256": "ModelSha256",
}


@dataclass(frozen=True)
class Mark:
    """What a mark says about one image: made by this tool and model, in this run."""

    run_id: str
    image_id: str
    model: str
    model_sha256: str
    version: str
    tool: str = "medisyn"
    digital_source_type: str = DIGITAL_SOURCE_TYPE

    def for_image(self, image_id: str) -> Mark:
        """The same run's mark for another image."""
        return Mark(**{**asdict(self), "image_id": image_id})


def weights_digest(hashes: dict[str, str] | str | None) -> str:
    """One sha256 for a model from its per-file weight hashes (run.json's weights_sha256); '' for none."""
    if not hashes:
        return ""
    if isinstance(hashes, str):
        return hashes
    lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# --- XMP ----------------------------------------------------------------------------------------------------


def xmp_packet(mark: Mark) -> bytes:
    """The XMP packet of a mark (UTF-8, attributes in a fixed order: same mark, same bytes)."""
    attributes = [
        ("Iptc4xmpExt:DigitalSourceType", mark.digital_source_type),
        ("xmp:CreatorTool", f"{mark.tool} {mark.version}".strip()),
        *((f"medisyn:{name}", getattr(mark, field)) for field, name in XMP_FIELDS.items()),
    ]
    lines = "".join(f"\n   {name}={quoteattr(str(value))}" for name, value in attributes)
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'   xmlns:Iptc4xmpExt="{IPTC_NS}"\n'
        f'   xmlns:xmp="{XMP_NS}"\n'
        f'   xmlns:medisyn="{MEDISYN_NS}"{lines}/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )
    return text.encode("utf-8")


def parse_xmp(packet: bytes) -> dict | None:
    """The digital source type and medisyn fields an XMP packet holds; None if it is not XML or names neither.

    Packets with a DOCTYPE are refused (no entity expansion from untrusted files)."""
    import xml.etree.ElementTree as ET

    if b"<!DOCTYPE" in packet.upper() or b"<!ENTITY" in packet.upper():
        return None
    try:
        root = ET.fromstring(packet.decode("utf-8", errors="replace").lstrip("\ufeff"))
    except ET.ParseError:
        return None
    wanted = {f"{{{IPTC_NS}}}DigitalSourceType": "digital_source_type"}
    wanted.update({f"{{{MEDISYN_NS}}}{name}": field for field, name in XMP_FIELDS.items()})
    found = {}
    for description in root.iter(f"{{{RDF_NS}}}Description"):
        for tag, value in description.attrib.items():
            if tag in wanted:
                found[wanted[tag]] = value
        for child in description:
            if child.tag in wanted:  # element form: text, or rdf:resource for a URI value
                value = child.get(f"{{{RDF_NS}}}resource") or (child.text or "").strip()
                found[wanted[child.tag]] = value
    return found or None


def is_synthetic(found: dict | None) -> bool:
    """True if a read mark states made (not captured) content."""
    return bool(found) and found.get("digital_source_type") in SYNTHETIC_SOURCE_TYPES


# --- PNG ----------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_chunks(data: bytes):
    """(type, payload, start, end) of every chunk; MedisynError if `data` is not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise MedisynError("not a PNG (no PNG signature)")
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, end = data[position + 4 : position + 8], position + 12 + length
        yield kind, data[position + 8 : position + 8 + length], position, end
        if kind == b"IEND":
            return
        position = end


def _is_xmp_itxt(kind: bytes, payload: bytes) -> bool:
    return kind == b"iTXt" and payload.startswith(XMP_KEYWORD + b"\x00")


def mark_png(png: bytes, mark: Mark) -> bytes:
    """`png` with the mark's XMP packet as an uncompressed iTXt chunk right after IHDR (an older XMP chunk is
    replaced; pixels and other chunks untouched): the same PNG and mark give the same bytes."""
    chunks = list(_png_chunks(png))
    if not chunks or chunks[0][0] != b"IHDR":
        raise MedisynError("not a PNG (IHDR is not its first chunk)")
    itxt = _chunk(b"iTXt", XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + xmp_packet(mark))
    kept = [png[start:end] for kind, payload, start, end in chunks[1:] if not _is_xmp_itxt(kind, payload)]
    return PNG_SIGNATURE + png[chunks[0][2] : chunks[0][3]] + itxt + b"".join(kept)


def png_xmp(png: bytes) -> bytes | None:
    """The XMP packet of a PNG's iTXt chunk, or None."""
    for kind, payload, _, _ in _png_chunks(png):
        if _is_xmp_itxt(kind, payload):
            rest = payload[len(XMP_KEYWORD) + 1 :]
            compressed, _method, rest = rest[0], rest[1], rest[2:]
            text = rest.split(b"\x00", 2)[-1]  # after the language tag and translated keyword
            if compressed:
                inflater = zlib.decompressobj()
                text = inflater.decompress(text, MAX_PACKET)
            return text
    return None


# --- JPEG ---------------------------------------------------------------------------------------------------


def _jpeg_segments(data: bytes):
    """(marker, start, end) of each segment before the scan; MedisynError if `data` is not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        raise MedisynError("not a JPEG (no SOI marker)")
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image: no more metadata
            return
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        yield marker, position, position + 2 + length
        position += 2 + length


def _is_xmp_app1(data: bytes, marker: int, start: int) -> bool:
    return marker == 0xE1 and data[start + 4 : start + 4 + len(JPEG_XMP_HEADER)] == JPEG_XMP_HEADER


def mark_jpeg(jpeg: bytes, mark: Mark) -> bytes:
    """`jpeg` with the mark's XMP packet as an APP1 segment after SOI and the JFIF APP0 / Exif APP1 segments that
    lead the file (older XMP replaced)."""
    segments = list(_jpeg_segments(jpeg))
    payload = JPEG_XMP_HEADER + xmp_packet(mark)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    cut = 2
    for marker, start, end in segments:
        if not (marker == 0xE0 or marker == 0xE1 and jpeg[start + 4 : start + 10] == b"Exif\x00\x00"):
            break
        cut = end
    drop = [(s, e) for m, s, e in segments if _is_xmp_app1(jpeg, m, s)]
    body = jpeg[cut:]
    for start, end in sorted(drop, reverse=True):
        body = body[: start - cut] + body[end - cut :]
    return jpeg[:cut] + app1 + body


def jpeg_xmp(jpeg: bytes) -> bytes | None:
    """The XMP packet of a JPEG's APP1 segment, or None."""
    for marker, start, end in _jpeg_segments(jpeg):
        if _is_xmp_app1(jpeg, marker, start):
            return jpeg[start + 4 + len(JPEG_XMP_HEADER) : end]
    return None


# --- any image file -----------------------------------------------------------------------------------------


def read_mark(source: bytes | str | Path) -> dict | None:
    """The XMP mark of a PNG or JPEG (bytes or a path): {"mark": "xmp-iptc", "digital_source_type", "run_id",
    ...}, or None when it has none (or is neither format, or is malformed)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        packet = png_xmp(data) if data.startswith(PNG_SIGNATURE) else jpeg_xmp(data)
    except (MedisynError, struct.error, zlib.error, IndexError):
        return None
    found = parse_xmp(packet) if packet else None
    return {"mark": "xmp-iptc", **found} if found else None


def read_png_mark(source: bytes | str | Path) -> dict | None:
    """The XMP mark of a PNG, or None (see read_mark)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return read_mark(data) if data.startswith(PNG_SIGNATURE) else None


def read_jpeg_mark(source: bytes | str | Path) -> dict | None:
    """The XMP mark of a JPEG, or None (see read_mark)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return read_mark(data) if data.startswith(b"\xff\xd8") else None


# --- Parquet ------------------------------------------------------------------------------------------------


def parquet_metadata(mark: Mark) -> dict[str, str]:
    """The run's mark as Parquet schema metadata (merge into the schema's metadata; no image id)."""
    fields = {k: v for k, v in asdict(mark).items() if k != "image_id"}
    return {PARQUET_KEY: json.dumps(fields, sort_keys=True)}


def row_mark(mark: Mark | None) -> dict:
    """The MARK_COLUMNS values of one Parquet row (None: an unmarked run)."""
    return {"digital_source_type": mark.digital_source_type if mark else None}


def read_parquet_mark(path: str | Path) -> dict | None:
    """The run's mark in a Parquet file's schema metadata (footer only), or None."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(PARQUET_KEY.encode())
    if raw is None:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        return None
    return {"mark": "parquet-metadata", **found} if isinstance(found, dict) else None


# --- the dataset card ---------------------------------------------------------------------------------------


def card_lines(mark: Mark | None, formats: tuple[str, ...] = ()) -> list[str]:
    """The card's sentences on what the images are and how each file says so (`mark` None: --no-mark)."""
    lines = [
        "Every image in this dataset is synthetic: made by a generative model, not taken from a patient."
    ]
    if mark is None:
        lines.append(
            "This run was made with `--no-mark`: PNG files and Parquet rows carry no synthetic-content mark, so "
            "keep this card with them."
        )
    else:
        model = f"`{mark.model}`" + (
            f" (weights sha256 `{mark.model_sha256[:16]}...`)" if mark.model_sha256 else ""
        )
        lines.append(
            f"Each PNG carries an XMP packet (iTXt chunk `XML:com.adobe.xmp`) with the IPTC digital source type "
            f"`{mark.digital_source_type}` and medisyn's fields (run `{mark.run_id}`, image id, model {model}); "
            f"the Parquet files carry the same in their schema metadata (`{PARQUET_KEY}`) and a "
            "`digital_source_type` column."
        )
    if "dicom" in formats:
        lines.append(
            "Each DICOM object has Synthetic Data (0008,001C) = YES, Conversion Type SYN and a Contributing "
            'Equipment item with purpose (109100, DCM, "Synthesizing Equipment").'
        )
    lines.append(
        "A re-save or crop removes a file's mark; `medisyn provenance FILES --index INDEX` still finds copies "
        "when INDEX is built from this dataset (`medisyn index build`)."
    )
    return lines
