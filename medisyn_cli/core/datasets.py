"""Read labelled, captioned image datasets: ImageFolder + metadata.csv, Parquet, or label folders."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medisyn_cli.core.errors import MedisynError

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
    """All records of one or more datasets, with captions; found by the same rule as find_sources."""
    records: list[Record] = []
    for path in map(Path, paths):
        if not path.exists():
            raise MedisynError(f"{path}: no such file or folder")
        found = [record for source in _sources_of(path) for record in _captioned(source, caption_template)]
        if not found:
            raise MedisynError(
                f"{path}: no images found (expected metadata.csv, Parquet files or label folders)"
            )
        records.extend(found)
    return records


def _captioned(source: Source, template: str) -> list[Record]:
    """The records of one source with captions (from a caption/text column, else the template)."""
    if source.kind == "parquet":
        return _parquet_records(source.path, template)
    if source.kind == "imagefolder":
        return _metadata_records(source.path, template)
    return _label_folder_records(source.path, template)


def _caption(template: str, label: str | None, row: dict) -> str | None:
    if label is None:
        return None
    try:
        return template.format(**{**row, "label": label.replace("_", " ")})
    except KeyError as exc:
        raise MedisynError(
            f"--caption-template: unknown placeholder {exc} (columns: {', '.join(row)})"
        ) from exc


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
            caption = (
                row.get("caption") or row.get("text") or row.get("prompt") or _caption(template, label, row)
            )
            records.append(Record(f"{file.name}:{row.get('id', i)}", label, caption, data=data))
    return records


def decode(record: Record) -> tuple[object | None, str | None]:
    """(PIL image, None), or (None, why it does not decode): never raises on a corrupt file."""
    try:
        return record.open(), None
    except Exception as exc:  # PIL raises many types for corrupt or truncated data
        return None, f"{type(exc).__name__}: {exc}"


def open_or_skip(record: Record, skipped: list[dict]):
    """The record's PIL image, or None with {"key", "reason"} added to `skipped`."""
    image, error = decode(record)
    if error is not None:
        skipped.append({"key": record.key, "reason": error[:300]})
    return image


def iter_images(records: list[Record]) -> Iterator[tuple[Record, object | None, str | None]]:
    """Yield (record, PIL image or None, error message or None), never raising on corrupt files."""
    for record in records:
        yield record, *decode(record)


# --- streaming access, for jobs that must not hold a whole dataset in memory (index build) ---------------


@dataclass(frozen=True)
class Source:
    """One dataset on disk: 'parquet' (file or folder), 'imagefolder' (metadata.csv), 'images' (any depth)."""

    path: Path
    kind: str


def find_sources(paths: list[str | Path]) -> list[Source]:
    """The datasets under each path (folders of ImageFolders searched); MedisynError if missing or empty."""
    if not paths:
        raise MedisynError(
            "no source given (expected image folders, ImageFolders with metadata.csv or Parquet)"
        )
    found: list[Source] = []
    for path in map(Path, paths):
        if not path.exists():
            raise MedisynError(f"{path}: no such file or folder")
        sources = _sources_of(path)
        if not sources or sum(count_images(s) for s in sources) == 0:
            raise MedisynError(
                f"{path}: no images found (expected image files, metadata.csv or Parquet files)"
            )
        found.extend(sources)
    return found


def _sources_of(path: Path) -> list[Source]:
    if path.is_file():
        return [Source(path, "parquet" if path.suffix == ".parquet" else "images")]
    if (path / "metadata.csv").exists():
        return [Source(path, "imagefolder")]
    if (path / "run.json").exists() and (path / "parquet").is_dir() and _parquet_files(path / "parquet"):
        return [Source(path / "parquet", "parquet")]  # a medisyn output folder: its Parquet copy
    if (path / "run.json").exists() and (path / "imagefolder" / "metadata.csv").exists():
        return [Source(path / "imagefolder", "imagefolder")]
    if _parquet_files(path):
        return [Source(path, "parquet")]
    nested = sorted(p.parent for p in path.glob("*/metadata.csv"))
    return [Source(folder, "imagefolder") for folder in nested] if nested else [Source(path, "images")]


def _image_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _metadata_rows(folder: Path) -> Iterator[dict]:
    meta = folder / "metadata.csv"
    with open(meta, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "file_name" not in (reader.fieldnames or []):
            raise MedisynError(f"{meta}: line 1: missing column 'file_name'")
        yield from reader


def count_images(source: Source) -> int:
    """Number of images (rows) of a source, from file listings and Parquet footers only."""
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in _parquet_files(source.path))
    if source.kind == "imagefolder":
        return sum(1 for _ in _metadata_rows(source.path))
    return len(_image_files(source.path))


def source_files(source: Source) -> Iterator[Path]:
    """The files a source is read from (for fingerprints): Parquet, metadata.csv and its images, images."""
    if source.kind == "parquet":
        yield from _parquet_files(source.path)
    elif source.kind == "imagefolder":
        yield source.path / "metadata.csv"
        files = (source.path / row["file_name"] for row in _metadata_rows(source.path))
        yield from (p for p in files if p.exists())
    else:
        yield from _image_files(source.path)


def iter_source_records(source: Source, batch_rows: int = 64) -> Iterator[Record]:
    """Records of a source one at a time (captions not filled); Parquet is read a few rows at a time."""
    if source.kind == "parquet":
        yield from _iter_parquet(source.path, batch_rows)
    elif source.kind == "imagefolder":
        for row in _metadata_rows(source.path):
            path = source.path / row["file_name"]
            yield Record(str(path), row.get("label") or None, None, path=path)
    else:
        root = source.path if source.path.is_dir() else source.path.parent
        for path in _image_files(source.path):
            yield Record(str(path), path.parent.name if path.parent != root else None, None, path=path)


def _iter_parquet(path: Path, batch_rows: int) -> Iterator[Record]:
    import pyarrow.parquet as pq

    for file in _parquet_files(path):
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        if "image" not in names:
            raise MedisynError(f"{file}: no 'image' column (columns: {', '.join(names)})")
        columns = ["image"] + [c for c in ("id", "label") if c in names]
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            for item in batch.to_pylist():
                image = item["image"]
                data = image.get("bytes") if isinstance(image, dict) else image
                label = item.get("label")
                yield Record(
                    f"{file}:{item.get('id', row)}",
                    None if label is None else str(label),
                    None,
                    data=data or b"",
                )
                row += 1


def open_key(key: str):
    """The image a key names: a file path, or '<parquet file>:<id or row>' as iter_source_records makes."""
    path = Path(key)
    if path.is_file() and path.suffix != ".parquet":
        return Record(key, None, None, path=path).open()
    file, _, item = key.rpartition(":")
    if not file or not Path(file).is_file():
        raise MedisynError(f"{key}: no such image file or Parquet row")
    import pyarrow.parquet as pq

    names = pq.ParquetFile(file).schema_arrow.names
    if "id" in names:
        table = pq.read_table(file, columns=["image"], filters=[("id", "=", item)])
    else:
        table = pq.read_table(file, columns=["image"]).slice(int(item), 1)
    if table.num_rows == 0:
        raise MedisynError(f"{key}: no such row in {file}")
    image = table.column("image")[0].as_py()
    return Record(key, None, None, data=image.get("bytes") if isinstance(image, dict) else image).open()
