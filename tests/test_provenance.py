"""`medisyn provenance` (#27): marked files are found by their mark; with an index of one's own outputs, a stripped
and cropped copy hiding among real images is found by a match, and no real image is called synthetic."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_samples import MARK, encode, real_files
from PIL import Image
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.dataset.base import RunInfo
from medisyn_cli.dataset.dicom import to_dicom
from medisyn_cli.dataset.marks import mark_jpeg, mark_png, parquet_metadata, row_mark
from medisyn_cli.dataset.provenance import Match, check_provenance, find_files, matched_id

RUN = RunInfo(MARK.run_id, "2026-12-06T22:31:05+00:00", ("glioma",), MARK.model, MARK.model_sha256, "0.1.0")


def rows(out: Path) -> dict[str, dict]:
    with open(out / "provenance.csv", newline="", encoding="utf-8") as handle:
        return {
            Path(row["file"]).name if ".parquet:" not in row["file"] else row["file"].rsplit("/", 1)[1]: row
            for row in csv.DictReader(handle)
        }


def parquet(path: Path, pngs: list[bytes], metadata: dict | None = None, column: bool = False) -> None:
    fields = [
        pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        pa.field("id", pa.string()),
    ]
    if column:
        fields.append(pa.field("digital_source_type", pa.string()))
    schema = pa.schema(fields, metadata=metadata)
    records = [
        {"image": {"bytes": png, "path": None}, "id": f"r{i}", **(row_mark(MARK) if column else {})}
        for i, png in enumerate(pngs)
    ]
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)


@pytest.fixture
def mixed(tmp_path) -> Path:
    """A folder tree: marked PNG, JPEG, DICOM (with and without suffix), Parquet with each kind of mark, real
    unmarked PNGs, a corrupt file and a file that is no image."""
    real = real_files("brain_tumor_mri")
    folder = tmp_path / "data"
    (folder / "nested" / "deeper").mkdir(parents=True)
    png = real[0].read_bytes()
    (folder / "marked.png").write_bytes(mark_png(png, MARK))
    (folder / "nested" / "marked.jpg").write_bytes(mark_jpeg(encode(Image.open(real[1]), "JPEG"), MARK))
    (folder / "nested" / "deeper" / "object.dcm").write_bytes(
        to_dicom(png, {"id": "g-1", "label": "glioma"}, RUN)
    )
    (folder / "nested" / "IM0001").write_bytes(to_dicom(png, {"id": "g-2", "label": "glioma"}, RUN))
    for number in (2, 3):
        (folder / f"real{number}.png").write_bytes(real[number].read_bytes())
    parquet(folder / "meta.parquet", [png], parquet_metadata(MARK))
    parquet(folder / "column.parquet", [png, png], column=True)
    parquet(folder / "plain.parquet", [png, mark_png(png, MARK)])
    (folder / "corrupt.png").write_bytes(png[:100])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "hidden.png").write_bytes(mark_png(png, MARK))  # hidden folders are not searched
    return folder


def test_marks_are_found_in_every_kind_of_file(mixed, tmp_path):
    summary = check_provenance([mixed], tmp_path / "prov", show_progress=False)
    found = rows(tmp_path / "prov")
    expected = {
        "marked.png": "xmp-iptc",
        "marked.jpg": "xmp-iptc",
        "object.dcm": "dicom-synthetic",
        "IM0001": "dicom-synthetic",
        "meta.parquet:r0": "parquet-metadata",
        "column.parquet:r0": "parquet-row",
        "column.parquet:r1": "parquet-row",
        "plain.parquet:r1": "xmp-iptc",
    }
    for name, mark in expected.items():
        assert (found[name]["synthetic"], found[name]["evidence"], found[name]["mark"]) == (
            "True",
            "mark",
            mark,
        ), name
    assert found["marked.png"]["run_id"] == MARK.run_id and found["marked.png"]["image_id"] == MARK.image_id
    for name in ("real2.png", "real3.png", "plain.parquet:r0", "corrupt.png"):
        assert (found[name]["synthetic"], found[name]["evidence"]) == ("False", "none"), name
    assert (
        "notes.txt" not in found
        and "hidden.png" not in found
        and summary.files == 12
        and summary.synthetic == 8
    )
    assert summary.evidence == {
        "mark: xmp-iptc": 3,
        "mark: dicom-synthetic": 2,
        "mark: parquet-metadata": 1,
        "mark: parquet-row": 2,
        "none": 4,
    }
    assert json.loads((tmp_path / "prov" / "provenance.json").read_text())["synthetic"] == 8


def test_unmarked_images_are_matched_with_the_given_screen_and_corrupt_ones_are_errors(mixed, tmp_path):
    seen = []

    def screen(images):
        seen.extend(images)
        return [
            Match(0.99 if i == 0 else 0.5, f"/idx/out/parquet/part-00000.parquet:glioma-{i:06d}", i == 0)
            for i in range(len(images))
        ]

    check_provenance([mixed], tmp_path / "prov", screen=screen, show_progress=False)
    found = rows(tmp_path / "prov")
    assert len(seen) == 3  # real2, real3, plain.parquet:r0; marked files are not decoded, corrupt.png fails
    screened = [name for name in found if found[name]["similarity"]]
    assert sorted(screened) == ["plain.parquet:r0", "real2.png", "real3.png"]
    first = min(screened, key=lambda n: list(found).index(n))
    assert (found[first]["evidence"], found[first]["matched_id"]) == ("match", "glioma-000000")
    assert found["corrupt.png"]["evidence"] == "error" and found["corrupt.png"]["error"]


def test_matched_id_of_index_keys():
    assert matched_id("/data/out/parquet/part-00000.parquet:glioma-000012") == "glioma-000012"
    assert matched_id("/data/out/imagefolder/glioma/glioma-000012.png") == "glioma-000012"


def test_missing_paths_and_empty_folders_are_one_line_errors(tmp_path):
    with pytest.raises(MedisynError, match="no such file or folder"):
        find_files([tmp_path / "absent"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(MedisynError, match="no image, DICOM or Parquet files"):
        find_files([tmp_path / "empty"])
    result = CliRunner().invoke(app, ["provenance", str(tmp_path / "absent"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_cli_exit_codes_and_table(mixed, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for path in real_files("brain_tumor_mri")[10:13]:
        (real / path.name).write_bytes(path.read_bytes())
    runner = CliRunner()
    result = runner.invoke(
        app, ["provenance", str(real), "--out", str(tmp_path / "a"), "--fail-on-synthetic", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["provenance", str(mixed), "--out", str(tmp_path / "b"), "--no-progress"])
    assert result.exit_code == 0 and "mark: dicom-synthetic" in result.output
    result = runner.invoke(
        app,
        [
            "provenance",
            str(real),
            str(mixed),
            "-o",
            str(tmp_path / "c"),
            "--fail-on-synthetic",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1 and "--fail-on-synthetic: 8 synthetic" in result.output
    assert len(rows(tmp_path / "c")) == 15


GENERATED = Path(__file__).parent / "fixtures" / "generated"


def own_outputs(folder: Path) -> list[Path]:
    """The generated fixture images, marked as medisyn marks its outputs, under folder/<label>/<id>.png."""
    made = []
    for source in sorted(GENERATED.glob("*/*.png")):
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(mark_png(source.read_bytes(), RUN.mark(source.stem)))
        made.append(target)
    return made


def test_a_stripped_and_a_cropped_copy_hide_among_real_images_and_are_found_by_match(tmp_path):
    from medisyn_cli.screening.build import build_index

    outputs = own_outputs(tmp_path / "outputs")
    build_index([tmp_path / "outputs"], tmp_path / "index", show_progress=False)
    site = tmp_path / "site"
    site.mkdir()
    real = real_files("brain_tumor_mri")[::12]
    for path in real:
        (site / path.name).write_bytes(path.read_bytes())
    by_id = {p.stem: p for p in outputs}
    stripped = Image.open(by_id["glioma-000001"])
    (site / "scan_0001.png").write_bytes(encode(stripped))  # a re-save: no metadata, so no mark
    cropped = Image.open(by_id["pituitary-000002"]).crop((2, 2, 62, 62))  # 88% of the area
    (site / "scan_0002.png").write_bytes(encode(cropped))
    (site / "scan_0003.png").write_bytes(by_id["no_tumor-000003"].read_bytes())  # copied as it is: marked

    result = CliRunner().invoke(
        app,
        [
            "provenance",
            str(site),
            "--index",
            str(tmp_path / "index"),
            "--out",
            str(tmp_path / "prov"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    found = rows(tmp_path / "prov")
    assert (found["scan_0001.png"]["evidence"], found["scan_0001.png"]["matched_id"]) == (
        "match",
        "glioma-000001",
    )
    assert float(found["scan_0001.png"]["similarity"]) > 0.999
    assert (found["scan_0002.png"]["evidence"], found["scan_0002.png"]["matched_id"]) == (
        "match",
        "pituitary-000002",
    )
    assert (found["scan_0003.png"]["evidence"], found["scan_0003.png"]["image_id"]) == (
        "mark",
        "no_tumor-000003",
    )
    called = [
        name for name in found if name.startswith(("tr_", "te_")) and found[name]["synthetic"] == "True"
    ]
    assert len([n for n in found if n.startswith(("tr_", "te_"))]) == len(real) and called == []
    assert max(float(found[p.name]["similarity"]) for p in real) < 0.97
