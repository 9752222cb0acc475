"""Every writer: rows stream in, nothing looks complete before close(), an aborted run leaves only temp names."""

import io

import pytest
from PIL import Image

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.dataset.formats import parse_format_list
from medisyn_cli.dataset.imagefolder import ImageFolderWriter
from medisyn_cli.dataset.parquet import ParquetWriter
from medisyn_cli.dataset.rows import COLUMNS

LABELS = ["melanoma", "x ray/normal"]


def row(i: int) -> tuple[dict, bytes]:
    label = LABELS[i % 2]
    values = {
        "id": f"img-{i:06d}",
        "label": label,
        "label_id": i % 2,
        "prompt": "p",
        "negative_prompt": "",
        "seed": 10 + i,
        "attempt": 0,
        "mode": "RGB",
        "model": "m",
        "scheduler": "dpm++",
        "steps": 2,
        "guidance": 1.5,
        "height": 8,
        "width": 8,
    }
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (i, 0, 0)).save(buffer, format="PNG")
    return values, buffer.getvalue()


def complete_files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.mark.parametrize("fmt", ["parquet", "imagefolder"])
def test_writer_streams_rows_and_renames_on_close(tmp_path, fmt):
    folder = tmp_path / fmt
    writer = ParquetWriter(folder, LABELS, 4) if fmt == "parquet" else ImageFolderWriter(folder)
    for i in range(10):
        writer.write(*row(i))
    visible = complete_files(tmp_path)
    assert "metadata.csv" not in visible and "part-00002.parquet" not in visible
    stats = writer.close()
    assert stats["rows"] == 10 and not [p for p in tmp_path.rglob(".*") if p.is_file()]
    if fmt == "parquet":
        import pandas as pd

        assert stats["files"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        frame = pd.read_parquet(tmp_path / "parquet")
        assert list(frame.seed) == list(range(10, 20)) and set(COLUMNS) <= set(frame.columns)
    else:
        import pandas as pd

        meta = pd.read_csv(tmp_path / "imagefolder" / "metadata.csv")
        assert len(meta) == 10 and set(meta.label) == set(LABELS)
        assert all((tmp_path / "imagefolder" / f).exists() for f in meta.file_name)


def test_format_option_parsing():
    assert parse_format_list("both") == ("parquet", "imagefolder")
    assert parse_format_list("imagefolder") == ("imagefolder",)
    assert parse_format_list("parquet,dicom,webdataset,parquet") == ("parquet", "dicom", "webdataset")
    with pytest.raises(MedisynError, match="--format: 'zip'.*parquet, imagefolder, dicom, webdataset, both"):
        parse_format_list("zip")
