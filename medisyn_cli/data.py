"""Read labelled, captioned image datasets: ImageFolder + metadata.csv, Parquet, or label folders."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import MedisynError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass(frozen=True)
class Record:
    """One image of a dataset: where it is, its label and caption."""

    key: str
    label: str | None
    caption: str | None
    path: Path | None = None
    data: bytes | None = None

    def open(self):
        """Decode the image with PIL (raises on corrupt files)."""
        from PIL import Image

        source = self.path if self.path is not None else io.BytesIO(self.data or b"")
        image = Image.open(source)
        image.load()
        return image


def read_records(paths: list[str | Path], caption_template: str = "{label}") -> list[Record]:
    """All records of one or more datasets; folders holding several datasets are searched."""
    records: list[Record] = []
    for path in map(Path, paths):
        if not path.exists():
            raise MedisynError(f"{path}: no such file or folder")
        found = _records_of(path, caption_template)
        if not found:
            raise MedisynError(f"{path}: no images found (expected metadata.csv, Parquet files or label folders)")
        records.extend(found)
    return records


def _records_of(path: Path, template: str) -> list[Record]:
    if path.is_file() and path.suffix == ".parquet" or (path.is_dir() and _parquet_files(path) and not (path / "metadata.csv").exists()):
        return _parquet_records(path, template)
    if (path / "metadata.csv").exists():
        return _metadata_records(path, template)
    nested = sorted(p.parent for p in path.glob("*/metadata.csv"))
    if nested:
        return [r for folder in nested for r in _metadata_records(folder, template)]
    return _label_folder_records(path, template)


def _caption(template: str, label: str | None, row: dict) -> str | None:
    if label is None:
        return None
    try:
        return template.format(**{**row, "label": label.replace("_", " ")})
    except KeyError as exc:
        raise MedisynError(f"--caption-template: unknown placeholder {exc} (columns: {', '.join(row)})") from exc


def _metadata_records(folder: Path, template: str) -> list[Record]:
    meta = folder / "metadata.csv"
    with open(meta, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "file_name" not in (reader.fieldnames or []):
            raise MedisynError(f"{meta}: line 1: missing column 'file_name'")
        records = []
        for row in reader:
            label = row.get("label") or None
            caption = row.get("caption") or row.get("text") or _caption(template, label, row)
            path = folder / row["file_name"]
            records.append(Record(str(path), label, caption, path=path))
    return records


def _label_folder_records(folder: Path, template: str) -> list[Record]:
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label = path.parent.name if path.parent != folder else None
        records.append(Record(str(path), label, _caption(template, label, {}), path=path))
    return records


def _parquet_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.rglob("*.parquet"))


def _parquet_records(path: Path, template: str) -> list[Record]:
    import pyarrow.parquet as pq

    records = []
    for file in _parquet_files(path):
        table = pq.read_table(file)
        if "image" not in table.column_names:
            raise MedisynError(f"{file}: no 'image' column (columns: {', '.join(table.column_names)})")
        for i, row in enumerate(table.to_pylist()):
            image = row.pop("image")
            data = image["bytes"] if isinstance(image, dict) else image
            label = row.get("label")
            caption = row.get("caption") or row.get("text") or row.get("prompt") or _caption(template, label, row)
            records.append(Record(f"{file.name}:{row.get('id', i)}", label, caption, data=data))
    return records


def iter_images(records: list[Record]) -> Iterator[tuple[Record, object | None, str | None]]:
    """Yield (record, PIL image or None, error message or None), never raising on corrupt files."""
    for record in records:
        try:
            yield record, record.open(), None
        except Exception as exc:  # PIL raises many types for corrupt data
            yield record, None, f"{type(exc).__name__}: {exc}"
