"""DICOM output (#27): valid Secondary Capture objects marked as synthetic, deterministic, read by two readers."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from dataset_samples import encode, real_png
from PIL import Image

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.dataset.base import RunInfo
from medisyn_cli.dataset.dicom import (
    SECONDARY_CAPTURE,
    derived_uid,
    dicom_date_time,
    dicom_image,
    is_dicom,
    read_dicom_mark,
    to_dicom,
)

pydicom = pytest.importorskip("pydicom")
RUN = RunInfo("3f2a9c1b7d4e", "2026-12-06T23:31:05.5+01:00", ("glioma",), "medisyn-mini", "ab" * 32, "0.1.0")
ROW = {
    "id": "glioma-000003",
    "label": "glioma",
    "label_id": 0,
    "prompt": "brain MRI slice, glioma",
    "seed": 7,
}


def read(data: bytes):
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize(
    "dataset, photometric", [("brain_tumor_mri", "MONOCHROME2"), ("isic2017_dermoscopy", "RGB")]
)
def test_object_is_marked_synthetic_and_holds_the_png_pixels(dataset, photometric):
    png = real_png(dataset, 3)
    ds = read(to_dicom(png, ROW, RUN))
    assert ds.SyntheticData == "YES" and ds.ConversionType == "SYN"
    assert ds.SOPClassUID == SECONDARY_CAPTURE == ds.file_meta.MediaStorageSOPClassUID
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.Modality == "OT"
    assert ds.PhotometricInterpretation == photometric and ds.BitsAllocated == 8
    assert np.array_equal(ds.pixel_array, np.asarray(Image.open(io.BytesIO(png))))
    (equipment,) = ds.ContributingEquipmentSequence
    (purpose,) = equipment.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109100",
        "DCM",
        "Synthesizing Equipment",
    )
    assert equipment.Manufacturer == ds.Manufacturer == "medisyn"
    assert equipment.ManufacturerModelName == "medisyn-mini" and equipment.DeviceSerialNumber == "ab" * 32
    assert ds.SeriesDescription == "glioma" and ds.ImageComments == ROW["prompt"]


def test_no_patient_identifiers():
    ds = read(to_dicom(real_png("brain_tumor_mri"), ROW, RUN))
    assert str(ds.PatientName) == "SYNTHETIC^glioma"
    assert ds.PatientID == f"SYN-{RUN.run_id}-{ROW['id']}"
    assert ds.PatientBirthDate == "" and ds.PatientSex == "" and ds.PatientIdentityRemoved == "YES"
    assert ds.AccessionNumber == "" and ds.ReferringPhysicianName == ""


def test_same_inputs_same_bytes_and_dates_from_the_run_record():
    png = real_png("brain_tumor_mri")
    data = to_dicom(png, ROW, RUN)
    assert data == to_dicom(png, dict(ROW), RunInfo(**vars(RUN)))
    assert data[:128] == b"\x00" * 128 and is_dicom(data)
    ds = read(data)
    assert (ds.StudyDate, ds.StudyTime, ds.ContentDate) == ("20261206", "223105", "20261206")  # UTC
    assert dicom_date_time("2026-01-02T03:04:05") == ("20260102", "030405")
    with pytest.raises(MedisynError, match="started"):
        dicom_date_time("yesterday")


def test_uids_are_stable_per_image_and_distinct_across_runs_and_images():
    png = real_png("brain_tumor_mri")
    first = read(to_dicom(png, ROW, RUN))
    other_run = read(to_dicom(png, ROW, RunInfo(**{**vars(RUN), "run_id": "000000000001"})))
    other_image = read(to_dicom(png, {**ROW, "id": "glioma-000004"}, RUN))
    uids = [
        (d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID) for d in (first, other_run, other_image)
    ]
    assert len({uid for triple in uids for uid in triple}) == 9
    assert first.SOPInstanceUID == derived_uid(RUN.run_id, ROW["id"], "instance")
    assert all(
        re.fullmatch(r"2\.25\.[1-9][0-9]*", uid) and len(uid) <= 64 for triple in uids for uid in triple
    )


def test_sixteen_bit_grey_is_kept_at_sixteen_bits():
    array = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 13) % 65535
    png = encode(Image.fromarray(array))  # Pillow: mode I;16
    ds = read(to_dicom(png, ROW, RUN))
    assert ds.BitsAllocated == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert np.array_equal(ds.pixel_array, array)


def test_simpleitk_loads_the_same_pixels(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    for dataset in ("brain_tumor_mri", "isic2017_dermoscopy"):
        png = real_png(dataset, 5)
        path = tmp_path / f"{dataset}.dcm"
        path.write_bytes(to_dicom(png, ROW, RUN))
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
        assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(png)))), dataset


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dciodvfy_finds_no_error_in_the_iod(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(to_dicom(real_png("isic2017_dermoscopy"), ROW, RUN))
    report = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True).stderr
    errors = [line for line in report.splitlines() if "Error" in line]
    # dicom3tools before 2023 does not know Synthetic Data (0008,001C); Laterality is 2C for paired body parts only
    known = ("(0008,001c)", "Laterality")
    assert [e for e in errors if not any(k in e for k in known)] == [], report


def test_mark_reader_tells_marked_objects_from_others():
    data = to_dicom(real_png("brain_tumor_mri"), ROW, RUN)
    found = read_dicom_mark(data)
    assert found["mark"] == "dicom-synthetic" and found["model_sha256"] == "ab" * 32
    ds = read(data)
    del ds.SyntheticData, ds.ContributingEquipmentSequence
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert read_dicom_mark(buffer.getvalue()) is None
    assert read_dicom_mark(b"\x89PNG not dicom") is None
    assert np.array_equal(np.asarray(dicom_image(buffer.getvalue())), ds.pixel_array)
