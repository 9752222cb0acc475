"""core/datasets: one detection rule for every reader, decode-or-skip; core/batching."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from medisyn_cli.core.batching import batched
from medisyn_cli.core.datasets import Record, find_sources, iter_source_records, open_or_skip, read_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.train.loop import read_records as train_read_records


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), value).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet(path: Path, ids: list[str], label: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "id": ids,
                "image": [{"bytes": _png(i), "path": None} for i in range(len(ids))],
                "label": [label] * len(ids),
                "caption": [f"a {label}"] * len(ids),
            }
        ),
        path,
    )


def _medisyn_output(root: Path) -> Path:
    """A screened medisyn output: run.json, parquet/, imagefolder/ and the rejected near-copies beside them."""
    _parquet(root / "parquet" / "part-00000.parquet", ["nevus-0", "nevus-1"], "nevus")
    _parquet(root / "rejected.parquet", ["nevus-9"], "nevus")
    (root / "imagefolder" / "nevus").mkdir(parents=True)
    (root / "imagefolder" / "nevus" / "nevus-0.png").write_bytes(_png(3))
    (root / "imagefolder" / "metadata.csv").write_text(
        "file_name,label,caption\nnevus/nevus-0.png,nevus,a nevus\n"
    )
    (root / "run.json").write_text(json.dumps({"counts": {"kept": 2}}))
    return root


def test_train_reader_skips_rejected_parquet_of_a_medisyn_output(tmp_path):
    out = _medisyn_output(tmp_path / "synth")
    records = train_read_records([out])  # the reader `medisyn train` uses
    assert sorted(r.key for r in records) == ["part-00000.parquet:nevus-0", "part-00000.parquet:nevus-1"]
    assert all(r.caption == "a nevus" for r in records)
    streamed = [r.key for s in find_sources([out]) for r in iter_source_records(s)]
    assert [Path(k.rpartition(":")[0]).name for k in streamed] == ["part-00000.parquet"] * 2  # same rule


def test_train_reader_reads_the_imagefolder_of_an_imagefolder_only_output(tmp_path):
    out = _medisyn_output(tmp_path / "synth")
    import shutil

    shutil.rmtree(out / "parquet")
    records = read_records([out])
    assert [Path(r.key).name for r in records] == ["nevus-0.png"]  # not the rejected.parquet rows
    assert records[0].label == "nevus" and records[0].caption == "a nevus"


def test_read_records_label_folders_and_captions(tmp_path):
    for label in ("benign", "malignant"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.png").write_bytes(_png(1))
    records = read_records([tmp_path], caption_template="ultrasound, {label}")
    assert [(r.label, r.caption) for r in records] == [
        ("benign", "ultrasound, benign"),
        ("malignant", "ultrasound, malignant"),
    ]
    with pytest.raises(MedisynError, match="no such file"):
        read_records([tmp_path / "missing"])


def test_open_or_skip_records_the_reason(tmp_path):
    skipped: list[dict] = []
    assert open_or_skip(Record("good", None, None, data=_png(5)), skipped).size == (8, 8)
    assert open_or_skip(Record("bad", None, None, data=b"not a png"), skipped) is None
    assert [s["key"] for s in skipped] == ["bad"] and skipped[0]["reason"].startswith(
        "UnidentifiedImageError"
    )


def test_batched():
    assert list(batched(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    with pytest.raises(MedisynError, match="--batch-size"):
        list(batched(range(3), 0))
