"""`medisyn provenance`: for each image file, is it synthetic and why.

    summary = check_provenance(["site-data/"], "prov", screen=screen)   # -> prov/provenance.csv, provenance.json

Evidence, strongest first:
- `mark`: the file says so. `xmp-iptc` (PNG/JPEG XMP with an IPTC digital source type of made media),
  `dicom-synthetic` (Synthetic Data YES or a Synthesizing Equipment contributor), `parquet-metadata` (the
  file's schema metadata) or `parquet-row` (the row's `digital_source_type`).
- `match`: no mark, but the image is a near-copy of an image in an index (e.g. one built from one's own
  outputs with `medisyn index build`): a re-saved, stripped or cropped copy. `screen(images)` is the caller's:
  this layer knows no index (cli/provenance.py builds it from screening's Screener).
- `none`: neither. Files that do not decode are rows with an `error` (synthetic false, evidence `error`).
Folders are searched recursively for PNG, JPEG (and other image files), DICOM (`.dcm`, or no suffix with the
DICM signature) and Parquet (every row with an `image` column).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medisyn_cli.core.batching import batched
from medisyn_cli.core.datasets import IMAGE_SUFFIXES
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import atomic_path, write_json
from medisyn_cli.core.progress import make_progress
from medisyn_cli.dataset.dicom import dicom_image, is_dicom, read_dicom_mark
from medisyn_cli.dataset.marks import SYNTHETIC_SOURCE_TYPES, is_synthetic, read_mark, read_parquet_mark

COLUMNS = (
    "file",
    "synthetic",
    "evidence",
    "mark",
    "similarity",
    "matched_id",
    "matched_key",
    "run_id",
    "image_id",
    "model",
    "error",
)
DICOM_SUFFIXES = {".dcm", ".dicom"}


@dataclass(frozen=True)
class ProvenanceConfig:
    """Options of `medisyn provenance`: the defaults table of the CLI and of check_provenance's keywords."""

    paths: list[str] = field(
        metadata={"help": "Image files or folders (searched recursively): PNG, JPEG, DICOM, Parquet."}
    )
    out: str = field(metadata={"help": "Folder for provenance.csv and provenance.json."})
    index: str | None = field(
        default=None,
        metadata={
            "help": "Index of one's own synthetic images (medisyn index build OUTPUT): unmarked near-copies of "
            "them count as synthetic (evidence 'match')."
        },
    )
    threshold: float | None = field(
        default=None, metadata={"help": "Near-copy threshold (default: the index's calibrated one)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Images decoded and matched at a time."})
    fail_on_synthetic: bool = field(
        default=False,
        metadata={"help": "Exit 1 if any file is synthetic (CI on a dataset meant to be real)."},
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar (else log lines)."})


@dataclass(frozen=True)
class Match:
    """The closest indexed image of one queried image."""

    similarity: float
    matched_key: str  # the index's key: a file path, or '<parquet file>:<id>'
    near_copy: bool  # at or above the index's threshold


Screen = Callable[[list], list[Match]]  # PIL images -> one Match each, in order


@dataclass
class Item:
    """One image to judge: where it is, its mark (if any), and how to decode it."""

    file: str
    mark: dict | None
    data: bytes | None = None
    path: Path | None = None
    kind: str = "image"  # image (PIL decodes it) or dicom
    error: str | None = None  # why the file cannot be read at all

    def image(self):
        """The decoded image (PIL), for matching; raises on a corrupt file."""
        if self.kind == "dicom":
            return dicom_image(self.data if self.data is not None else self.path)
        from PIL import Image

        image = Image.open(io.BytesIO(self.data) if self.data is not None else self.path)
        image.load()
        return image


@dataclass
class ProvenanceSummary:
    """What check_provenance found and wrote."""

    out: Path
    files: int = 0
    synthetic: int = 0
    evidence: dict[str, int] = field(default_factory=dict)  # 'mark: xmp-iptc', 'match', 'none', 'error'
    index: str | None = None

    def to_dict(self) -> dict:
        """provenance.json."""
        return {
            "files": self.files,
            "synthetic": self.synthetic,
            "evidence": self.evidence,
            "index": self.index,
            "table": "provenance.csv",
        }


def find_files(paths: list[str | Path]) -> list[Path]:
    """Image, DICOM and Parquet files under each path (folders recursive, sorted); MedisynError if none."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise MedisynError(f"{path}: no such file or folder")
        files = (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, path))
        )
        found += [p for p in files if _wanted(p, explicit=path.is_file())]
    if not found:
        raise MedisynError(f"{', '.join(map(str, paths))}: no image, DICOM or Parquet files found")
    return found


def _visible(path: Path, root: Path) -> bool:
    """No hidden file or folder on the way from root (.git, .cache, temp files)."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _wanted(path: Path, explicit: bool) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES or suffix == ".parquet":
        return True
    if suffix and not explicit:
        return False
    with open(path, "rb") as handle:  # DICOM files from a PACS often have no suffix
        return is_dicom(handle.read(132))


def iter_items(files: list[Path]) -> Iterator[Item]:
    """The items of each file: one per image file, one per Parquet row."""
    for path in files:
        if path.suffix.lower() == ".parquet":
            yield from _parquet_items(path)
            continue
        data = path.read_bytes()
        if is_dicom(data):
            yield Item(str(path), read_dicom_mark(data), data=data, kind="dicom")
        else:
            yield Item(str(path), read_mark(data), data=data)


def _parquet_items(path: Path, batch_rows: int = 64) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # not Parquet, or a truncated footer
        yield Item(str(path), None, error=f"{type(exc).__name__}: {exc}")
        return
    names = parquet.schema_arrow.names
    if "image" not in names:
        return  # a table without images (e.g. a screen.parquet): nothing to judge
    file_mark = read_parquet_mark(path)
    columns = ["image"] + [c for c in ("id", "digital_source_type") if c in names]
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        for values in batch.to_pylist():
            image = values["image"]
            data = (image.get("bytes") if isinstance(image, dict) else image) or b""
            mark = file_mark or _row_mark(values) or read_mark(data)
            yield Item(f"{path}:{values.get('id', row)}", mark, data=data)
            row += 1


def _row_mark(values: dict) -> dict | None:
    source = values.get("digital_source_type")
    return (
        {"mark": "parquet-row", "digital_source_type": source} if source in SYNTHETIC_SOURCE_TYPES else None
    )


def matched_id(key: str) -> str:
    """The image id an index key names: the row id of '<file>.parquet:<id>', else the file's stem."""
    file, sep, item = key.rpartition(":")
    return item if sep and file.endswith(".parquet") else Path(key).stem


def _marked(found: dict | None) -> bool:
    return bool(found) and (found.get("mark") != "xmp-iptc" or is_synthetic(found))


def judge(items: list[Item], screen: Screen | None) -> list[dict]:
    """The provenance rows of a batch of items: a mark wins; the rest are decoded and matched if `screen`."""
    rows, queries, images = [], [], []
    for item in items:
        row = dict.fromkeys(COLUMNS, "")
        row.update(file=item.file, synthetic=False, evidence="none")
        if _marked(item.mark):
            mark = item.mark
            row.update(synthetic=True, evidence="mark", mark=mark["mark"])
            row.update({k: mark.get(k, "") for k in ("run_id", "image_id", "model")})
        elif item.error is not None:
            row.update(evidence="error", error=item.error[:300])
        elif screen is not None:
            try:
                images.append(item.image())
                queries.append(row)
            except Exception as exc:  # PIL and pydicom raise many types for corrupt files
                row.update(evidence="error", error=f"{type(exc).__name__}: {exc}"[:300])
        rows.append(row)
    for row, match in zip(queries, screen(images) if images else []):
        row.update(similarity=round(float(match.similarity), 6), matched_key=match.matched_key)
        row["matched_id"] = matched_id(match.matched_key)
        if match.near_copy:
            row.update(synthetic=True, evidence="match")
    return rows


def check_provenance(
    paths: list[str | Path],
    out: str | Path,
    screen: Screen | None = None,
    index: str | None = None,
    batch_size: int = 64,
    show_progress: bool = True,
) -> ProvenanceSummary:
    """Judge every image under `paths`; write out/provenance.csv (streamed, renamed in when complete) and
    out/provenance.json. `index` only names the index `screen` searches, for provenance.json."""
    if batch_size < 1:
        raise MedisynError(f"--batch-size: must be at least 1, got {batch_size}")
    files = find_files(paths)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MedisynError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    summary = ProvenanceSummary(out, index=index)
    with (
        atomic_path(out / "provenance.csv") as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as handle,
        make_progress(disable=not show_progress) as progress,
    ):
        task = progress.add_task("provenance", total=None, rate="", info="")
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for batch in batched(iter_items(files), batch_size):
            for row in judge(batch, screen):
                writer.writerow(row)
                _tally(summary, row)
            progress.update(task, completed=summary.files, info=f"{summary.synthetic} synthetic")
    write_json(out / "provenance.json", summary.to_dict())
    return summary


def _tally(summary: ProvenanceSummary, row: dict) -> None:
    summary.files += 1
    summary.synthetic += int(row["synthetic"])
    key = f"mark: {row['mark']}" if row["evidence"] == "mark" else row["evidence"]
    summary.evidence[key] = summary.evidence.get(key, 0) + 1
