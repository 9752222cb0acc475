"""DICOM output: one Secondary Capture Image object per image, `OUT/dicom/<label>/<id>.dcm`, marked as synthetic.

    data = to_dicom(png, row, run)            # bytes of a DICOM file (Part 10, explicit VR little endian)
    pydicom.dcmread(io.BytesIO(data)).SyntheticData == "YES"

What each object says, and why:
- Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7), Modality OT, Conversion Type SYN ("synthetic
  image"), Image Type DERIVED\\SECONDARY: the IOD for images not acquired by a modality. 8-bit MONOCHROME2 for
  mode L (16-bit for I;16), 8-bit RGB (interleaved) otherwise; uncompressed, so every reader loads it.
- Synthetic Data (0008,001C) = YES, and a Contributing Equipment Sequence (0018,A001) item with purpose
  (109100, DCM, "Synthesizing Equipment"), Manufacturer "medisyn", Manufacturer's Model Name = the model,
  Software Versions = medisyn's version, Device Serial Number = sha256 over the model's weight files; the
  same four in the General Equipment module. DICOM objects are always marked, also under `--no-mark`: a DICOM
  file without Synthetic Data in a PACS cannot be told from a patient's.
- No patient identifiers. A PACS files every object under a patient and refuses or merges objects without a
  Patient ID, so each image is its own synthetic patient: Patient's Name `SYNTHETIC^<label>`, Patient ID
  `SYN-<run id>-<image id>` (a prefix no hospital MRN has; one patient per image, because two generated
  images are not of one person); birth date and sex empty; Patient Identity Removed YES. One study and one
  series per image.
- The label in Series Description and Study Description ("Synthetic: <label>"), the prompt in Image
  Comments, run id and seed in Derivation Description.
- Study, series and instance UIDs are 2.25.<uuid5> UIDs of (run id, image id, kind): the same in every resume
  and shard, different across runs. Dates and times are the run's start (run record), the preamble is 128 zero
  bytes and the implementation UID is medisyn's: the same image gives the same bytes.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.names import safe_name
from medisyn_cli.dataset.base import RunInfo, batch_paths, fresh, link_or_copy, publish
from medisyn_cli.dataset.marks import MEDISYN_NS, Mark

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SYNTHESIZING_EQUIPMENT = ("109100", "DCM", "Synthesizing Equipment")
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, MEDISYN_NS)
IMPLEMENTATION_UID = f"2.25.{uuid.uuid5(UID_NAMESPACE, 'implementation').int}"
DICM = b"DICM"


def derived_uid(run_id: str, image_id: str, kind: str) -> str:
    """A DICOM UID (2.25.<uuid5 as an integer>) for one (run, image, kind): stable across resumes, distinct
    across runs, images and kinds (study, series, instance)."""
    name = "\x1f".join((run_id, image_id, kind))
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


def dicom_date_time(started: str) -> tuple[str, str]:
    """(YYYYMMDD, HHMMSS) in UTC of an ISO 8601 time (the run's start); MedisynError if it is not one."""
    try:
        moment = datetime.fromisoformat(started)
    except (TypeError, ValueError) as exc:
        raise MedisynError(f"run record: 'started' is not an ISO 8601 time: {started!r}") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _pixels(png: bytes):
    """(array, photometric interpretation, bits) of a PNG: 8-bit grey for L, 16-bit for I;16, RGB otherwise."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.clip(np.asarray(image), 0, 65535).astype("<u2"), "MONOCHROME2", 16
    if image.mode in ("L", "1", "LA"):
        return np.asarray(image.convert("L"), dtype=np.uint8), "MONOCHROME2", 8
    return np.asarray(image.convert("RGB"), dtype=np.uint8), "RGB", 8


def _text(value, limit: int) -> str:
    """DICOM text: no backslash (the value separator), at most `limit` characters."""
    return str(value if value is not None else "").replace("\\", "/")[:limit]


def _patient(ds, row: dict, mark: Mark) -> None:
    label = _text(row.get("label"), 64).replace("^", " ").replace("=", " ")
    ds.PatientName = f"SYNTHETIC^{label}"
    patient_id = f"SYN-{mark.run_id}-{mark.image_id}"
    ds.PatientID = patient_id if len(patient_id) <= 64 else f"SYN-{uuid.uuid5(UID_NAMESPACE, patient_id).hex}"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image: made by a generative model, of no patient"


def _equipment(ds, mark: Mark, when: str) -> None:
    from pydicom.dataset import Dataset

    for target in (ds, item := Dataset()):
        target.Manufacturer = mark.tool
        target.ManufacturerModelName = _text(mark.model, 64)
        target.SoftwareVersions = _text(f"{mark.tool} {mark.version}".strip(), 64)
        target.DeviceSerialNumber = _text(mark.model_sha256, 64)
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SYNTHESIZING_EQUIPMENT
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.ContributionDateTime = when
    item.ContributionDescription = "image synthesized by a text-guided latent diffusion model"
    ds.ContributingEquipmentSequence = [item]
    ds.SyntheticData = "YES"
    ds.ConversionType = "SYN"


def _study(ds, row: dict, mark: Mark, date: str, time: str) -> None:
    ds.StudyInstanceUID = derived_uid(mark.run_id, mark.image_id, "study")
    ds.SeriesInstanceUID = derived_uid(mark.run_id, mark.image_id, "series")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.StudyID = _text(mark.run_id, 16)  # the run, as PACS study lists show it
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.StudyDescription = _text(f"Synthetic: {row.get('label')}", 64)
    ds.SeriesDescription = _text(row.get("label"), 64)
    ds.Modality = "OT"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ImageComments = _text(row.get("prompt"), 10240)
    ds.DerivationDescription = _text(
        f"synthesized by {mark.tool} {mark.version}, model {mark.model}, run {mark.run_id}, seed {row.get('seed')}",
        1024,
    )
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"


def _image_pixel(ds, png: bytes) -> None:
    array, photometric, bits = _pixels(png)
    ds.Rows, ds.Columns = array.shape[:2]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.LossyImageCompression = "00"
    data = array.tobytes()
    ds.PixelData = data + b"\x00" * (len(data) % 2)
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"


def to_dicom(png: bytes, row: dict, run: RunInfo) -> bytes:
    """One image as the bytes of a DICOM Part 10 file (see the module docstring for every attribute)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    mark = run.mark(str(row["id"]))
    date, time = dicom_date_time(run.started)
    instance = derived_uid(mark.run_id, mark.image_id, "instance")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SECONDARY_CAPTURE, instance
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = _text(f"MEDISYN_{mark.version}", 16)
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: labels and prompts may be any text
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, instance
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    _patient(ds, row, mark)
    _study(ds, row, mark, date, time)
    _equipment(ds, mark, date + time)
    _image_pixel(ds, png)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (128-byte preamble, then DICM)."""
    return data[128:132] == DICM


def read_dicom_mark(source: bytes | str | Path) -> dict | None:
    """{"mark": "dicom-synthetic", model fields...} when a DICOM object says it is synthetic (Synthetic Data YES
    or a Synthesizing Equipment contributor); None otherwise, and for files that are not DICOM."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    synthesizers = [
        item
        for item in ds.get("ContributingEquipmentSequence", [])
        for code in item.get("PurposeOfReferenceCodeSequence", [])
        if (code.get("CodeValue"), code.get("CodingSchemeDesignator")) == SYNTHESIZING_EQUIPMENT[:2]
    ]
    if str(ds.get("SyntheticData", "")).upper() != "YES" and not synthesizers:
        return None
    source_item = synthesizers[0] if synthesizers else ds
    return {
        "mark": "dicom-synthetic",
        "synthetic_data": str(ds.get("SyntheticData", "")),
        "tool": str(source_item.get("Manufacturer", "")),
        "model": str(source_item.get("ManufacturerModelName", "")),
        "model_sha256": str(source_item.get("DeviceSerialNumber", "")),
        "version": str(source_item.get("SoftwareVersions", "")),
    }


def dicom_image(source: bytes | str | Path):
    """The pixels of a single-frame DICOM image as a PIL image (grey scaled to 8 bits, MONOCHROME1 inverted)."""
    import numpy as np
    from PIL import Image
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    array = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        array = array[0]
    if array.ndim == 3:
        return Image.fromarray(array.astype(np.uint8), "RGB")
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) * (255.0 / max(high - low, 1e-9))).round().astype(np.uint8)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        array = 255 - array
    return Image.fromarray(array, "L")


# --- the format: OUT/dicom/<label>/<id>.dcm -----------------------------------------------------------------


class DicomFormat:
    """OUT/dicom/<label>/<id>.dcm; each batch under OUT/_work/dicom/<batch>/ (renamed in when complete)."""

    name = folder = "dicom"
    help = "dicom/<label>/<id>.dcm: DICOM Secondary Capture, Synthetic Data = YES (PACS, radiology tools)"

    def write_batch(self, work: Path, batch: str, items: Sequence[tuple[dict, bytes]], run: RunInfo) -> dict:
        """Write the batch's objects into a hidden folder, then rename it to OUT/_work/dicom/<batch>."""
        final = work / self.folder / batch
        partial = fresh(work / self.folder / f".{batch}-partial")
        for row, png in items:
            target = partial / safe_name(str(row["label"])) / f"{row['id']}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(to_dicom(png, row, run))
        partial.mkdir(parents=True, exist_ok=True)
        fresh(final)
        partial.rename(final)
        return {"format": self.name, "rows": len(items)}

    def consolidate(self, work: Path, out: Path, batches: Sequence[str], run: RunInfo) -> dict:
        """Every batch's objects (in plan order) into OUT/dicom, published by one rename."""

        def build(staged: Path) -> dict:
            staged.mkdir(parents=True)
            for folder in batch_paths(work / self.folder, batches):
                for file in sorted(folder.rglob("*.dcm")):
                    link_or_copy(file, staged / file.relative_to(folder))
            return self.describe(staged)

        return publish(work / f"{self.folder}-out", out / self.folder, build, self.describe)

    def describe(self, folder: Path) -> dict:
        """The run.json entry of a dicom folder."""
        return {"format": self.name, "folder": self.folder, "rows": sum(1 for _ in folder.rglob("*.dcm"))}

    def files(self, out: Path) -> set[str]:
        """The files of this format in OUT, relative to it."""
        return {p.relative_to(out).as_posix() for p in (out / self.folder).rglob("*.dcm")}

    def keep_out(self, out: Path, target: Path, drop: set[str]) -> dict:
        """Copy OUT/dicom to target/dicom without the objects whose image id is in `drop` (bytes unchanged)."""
        source, copy = out / self.folder, target / self.folder
        copy.mkdir(parents=True, exist_ok=True)
        for file in sorted(source.rglob("*.dcm")):
            if file.stem not in drop:
                link_or_copy(file, copy / file.relative_to(source))
        return self.describe(copy)

    def card_lines(self, output: dict, run: RunInfo) -> list[str]:
        """The card's lines on the dicom folder."""
        return [
            f"- `dicom/<label>/<id>.dcm`: {output.get('rows', 0)} DICOM Secondary Capture objects (grey for mode L, "
            "RGB otherwise), Synthetic Data (0008,001C) = YES, the generator in the Contributing Equipment "
            "Sequence (Synthesizing Equipment), Patient's Name `SYNTHETIC^<label>`, no patient identifiers; "
            "read with `pydicom.dcmread(path)`."
        ]


FORMAT = DicomFormat()
