"""`medisyn screen`: audit an existing dataset against a training index; table, report and a filtered copy.

    summary = screen_dataset("derm-synth", "train-index")           # -> derm-synth/screen/screen.parquet ...

Rows stream through in batches: memory holds one batch, a fixed-bin histogram and the closest pairs only.
"""

from __future__ import annotations

import csv
import heapq
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.batching import batched
from medisyn_cli.core.datasets import Record, Source, decode, find_sources, iter_source_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import write_json
from medisyn_cli.core.images import thumbnail_png
from medisyn_cli.core.ownership import Owned, claim, holds_files, is_ours, remove_temp
from medisyn_cli.core.progress import make_progress, rate_text
from medisyn_cli.dataset.card import write_run_card
from medisyn_cli.dataset.formats import format_names, get_format
from medisyn_cli.dataset.imagefolder import filter_imagefolder
from medisyn_cli.dataset.parquet import filter_parquet
from medisyn_cli.screening.index import load_index
from medisyn_cli.screening.report import BINS, write_screen_report
from medisyn_cli.screening.screener import Screener, require_embedder

SCREEN_COLUMNS = {
    "image": "string",
    "label": "string",
    "nn_id": "int64",
    "nn_key": "string",
    "nn_label": "string",
    "nn_similarity": "float32",
    "near_copy": "bool_",
    "view": "string",
    "region": "string",
    "partial_similarity": "float32",
    "inliers": "int32",  # keypoints the verified training image shares under one affine map (0: none verified)
    "error": "string",
}
THUMB = 96


@dataclass(order=True)
class Pair:
    """A screened image and its nearest training image, for the report (thumbnail PNG bytes); ordered near-copies
    first (a partial copy can be less similar as a whole than a kept image), then by similarity."""

    rank: tuple[bool, float]
    similarity: float = field(compare=False)
    image: str = field(compare=False)
    nn_key: str = field(compare=False)
    near_copy: bool = field(compare=False)
    thumbnail: bytes = field(compare=False)
    region: str = field(
        default="", compare=False
    )  # the training image's matched tile, "region(l,t,r,b)"; "" = whole
    partial: float | None = field(default=None, compare=False)  # its partial similarity (None: not measured)


@dataclass
class ScreenSummary:
    """What `screen_dataset` found and wrote."""

    dataset: Path
    report_dir: Path
    index: str
    embedder: str
    threshold: float
    screened: int = 0
    near_copies: int = 0
    errors: int = 0
    seconds: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(BINS) - 1, np.int64))
    pairs: list[Pair] = field(default_factory=list)
    per_label: dict[str, list[int]] = field(default_factory=dict)  # label -> [screened, near copies]
    kept_out: Path | None = None
    files: list[str] = field(default_factory=list)
    training_thumbnails: bool = True  # report.html shows the real training images beside the screened ones

    def to_dict(self) -> dict:
        """The machine-readable summary (screen.json)."""
        return {
            "dataset": str(self.dataset),
            "index": self.index,
            "embedder": self.embedder,
            "threshold": self.threshold,
            "screened": self.screened,
            "near_copies": self.near_copies,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "per_label": {k: {"screened": v[0], "near_copies": v[1]} for k, v in self.per_label.items()},
            "kept_out": str(self.kept_out) if self.kept_out else None,
            "files": self.files,
        }


def default_report_dir(dataset: Path) -> Path:
    """A medisyn output folder keeps its audit inside (DATASET/screen); anything else gets ./<name>-screen."""
    return dataset / "screen" if (dataset / "run.json").exists() else Path.cwd() / f"{dataset.name}-screen"


@dataclass(frozen=True)
class ScreenConfig:
    """Options of `medisyn screen`: the defaults table of the CLI and of screen_dataset's keywords."""

    dataset: str = field(
        metadata={
            "help": "A medisyn output folder, a Parquet dataset, an ImageFolder or any folder of images."
        }
    )
    index: str = field(metadata={"help": "Training-image index (medisyn index build)."})
    threshold: float | None = field(
        default=None, metadata={"help": "Near-copy threshold (default: the index's calibrated one)."}
    )
    report_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for screen.parquet/.csv/.json and report.html (default: DATASET/screen for a "
            "medisyn output, else ./<name>-screen)."
        },
    )
    keep_out: str | None = field(
        default=None, metadata={"help": "Write a copy of the dataset without the near-copies here."}
    )
    embedder: str | None = field(
        default=None, metadata={"help": "Check that the index was built with this embedder."}
    )
    batch_size: int = field(default=64, metadata={"help": "Images decoded and screened at a time."})
    pairs: int = field(default=24, metadata={"help": "Closest pairs shown in report.html."})
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar (else log lines)."})
    training_thumbnails: bool = field(
        default=True,
        metadata={
            "help": "Show thumbnails of the real training images (patients' images) in report.html; "
            "--no-training-thumbnails for a report that will be shared (keys and similarities only)."
        },
    )


def screen_dataset(
    dataset: str | Path,
    index: str | Path,
    threshold: float | None = None,
    report_dir: str | Path | None = None,
    keep_out: str | Path | None = None,
    embedder: str | None = None,
    batch_size: int = 64,
    pairs: int = 24,
    show_progress: bool = True,
    training_thumbnails: bool = True,
) -> ScreenSummary:
    """Screen every image of `dataset`; write screen.parquet, screen.csv, screen.json and report.html."""
    # 1. inputs: everything that can fail on input fails before any output is written
    dataset = Path(dataset)
    if batch_size < 1:
        raise MedisynError(f"--batch-size: must be at least 1, got {batch_size}")
    training = load_index(index)
    if embedder is not None:
        require_embedder(training, embedder)
    screener = Screener(training, threshold)
    sources = find_sources([dataset])
    report_dir = Path(report_dir) if report_dir else default_report_dir(dataset)
    keep_out = Path(keep_out) if keep_out else None
    _check_new_folder(keep_out, "--keep-out")
    if keep_out is not None and keep_out.resolve() == dataset.resolve():
        raise MedisynError(f"--keep-out {keep_out}: must differ from the dataset being screened")
    summary = ScreenSummary(
        dataset, report_dir, str(index), training.meta["embedder"]["spec"], screener.threshold
    )
    summary.training_thumbnails = training_thumbnails
    # 2. the folders: the report's (created, or medisyn screen's own) and --keep-out (new), both locked
    owner = claim(report_dir, "screen", "--out", fallback=_legacy_screen_files, adopt=True)
    try:
        owner.check_free(REPORT_FILES, "--out")
        kept = _claim_keep_out(keep_out)
        try:
            _screen(
                dataset, sources, screener, training, summary, owner, kept, batch_size, pairs, show_progress
            )
        finally:
            if kept is not None:
                kept.release()
    finally:
        owner.release()
    return summary


REPORT_FILES = ("screen.parquet", "screen.csv", "report.html", "screen.json")


def _legacy_screen_files(folder: Path) -> set[str]:
    """The files an older medisyn screen wrote in a report folder without a record (DATASET/screen)."""
    return {name for name in REPORT_FILES} if folder.name == "screen" and is_ours(folder.parent) else set()


def _claim_keep_out(keep_out: Path | None) -> Owned | None:
    """--keep-out: a new (or empty) folder, locked for the copy; a folder another command holds is refused."""
    if keep_out is None:
        return None
    owner = claim(keep_out, "screen", "--keep-out")
    try:
        _check_new_folder(keep_out, "--keep-out")  # again under the lock: another command may have written it
    except BaseException:
        owner.release()
        raise
    return owner


def _screen(
    dataset, sources, screener, training, summary, owner: Owned, kept, batch_size, pairs, show_progress
):
    """Screen batch by batch into the tables; then the report, the filtered copy, and screen.json last."""
    clock, copies = time.time(), set()
    with _Tables(owner) as tables, make_progress(disable=not show_progress) as progress:
        task = progress.add_task("screen", total=None, rate="", info="")
        for batch in batched((r for source in sources for r in iter_source_records(source)), batch_size):
            rows = _screen_batch(screener, batch, summary, pairs)
            tables.write(rows)
            copies.update(row["image"] for row in rows if row["near_copy"])
            progress.update(
                task,
                completed=summary.screened,
                rate=rate_text(summary.screened, time.time() - clock, "img"),
                info=f"{summary.near_copies} near-copies",
            )
        if summary.screened == 0:
            raise MedisynError(
                f"{dataset}: none of its {summary.errors} images could be read (corrupt or not an "
                f"image), so nothing was screened"
            )
    summary.seconds = time.time() - clock
    summary.pairs.sort(reverse=True)  # near-copies first, then the most similar

    summary.files = list(REPORT_FILES)
    tmp = owner.temp("report.html")
    write_screen_report(summary, tmp, training)
    owner.publish(tmp, "report.html")
    if kept is not None:
        write_kept_copy(dataset, sources, copies, kept, summary)
        summary.kept_out = kept.path
    tmp = owner.temp("screen.json")
    write_json(tmp, summary.to_dict())
    owner.publish(tmp, "screen.json")


def _check_new_folder(folder: Path | None, option: str) -> None:
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise MedisynError(f"{option} {folder}: exists and is not a folder")
    if holds_files(folder, lambda p: p.name.startswith(".medisyn") and is_ours(folder)):
        raise MedisynError(
            f"{option} {folder}: exists and is not an empty folder; medisyn writes the filtered copy only into "
            f"a new or empty folder, and leaves what is there as it is"
        )


def _screen_batch(screener, batch: list[Record], summary: ScreenSummary, pairs: int) -> list[dict]:
    """Rows of one batch (unreadable images become rows with an error), tallied into the summary."""
    images, rows = [], []
    for record in batch:
        row = {
            "image": record.key,
            "label": record.label,
            "nn_id": None,
            "nn_key": None,
            "nn_label": None,
            "nn_similarity": None,
            "near_copy": None,
            "view": None,
            "region": None,
            "partial_similarity": None,
            "inliers": None,
            "error": None,
        }
        image, error = decode(record)
        if error is None:
            images.append(image)
        else:
            row["error"] = error[:300]
            summary.errors += 1
        rows.append(row)
    results, readable = iter(screener.check(images)), iter(images)
    for row in rows:
        if row["error"] is None:
            result, image = next(results), next(readable)
            row.update(
                nn_id=result.nn_id,
                nn_key=result.nn_key,
                nn_label=result.nn_label,
                nn_similarity=result.nn_similarity,
                near_copy=result.near_copy,
                view=result.view,
                region=result.region,
                partial_similarity=result.partial_similarity,
                inliers=result.inliers,
            )
            _tally(summary, row, image, pairs)
    summary.histogram += np.histogram([r["nn_similarity"] for r in rows if r["error"] is None], BINS)[0]
    return rows


def _tally(summary: ScreenSummary, row: dict, image, pairs: int) -> None:
    summary.screened += 1
    summary.near_copies += int(row["near_copy"])
    counts = summary.per_label.setdefault(row["label"] or "-", [0, 0])
    counts[0], counts[1] = counts[0] + 1, counts[1] + int(row["near_copy"])
    rank = (bool(row["near_copy"]), float(row["nn_similarity"]))
    if len(summary.pairs) < pairs or rank > summary.pairs[0].rank:
        pair = Pair(
            rank,
            row["nn_similarity"],
            row["image"],
            row["nn_key"],
            row["near_copy"],
            thumbnail_png(image),
            row["region"] or "",
            row["partial_similarity"],
        )
        (heapq.heappush if len(summary.pairs) < pairs else heapq.heapreplace)(summary.pairs, pair)


class _Tables:
    """screen.parquet and screen.csv, streamed under temporary names and renamed when complete."""

    def __init__(self, owner: Owned):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.owner, self.names = owner, ["screen.parquet", "screen.csv"]
        self.tmps = [owner.temp(name) for name in self.names]
        self.schema = pa.schema([pa.field(k, getattr(pa, v)()) for k, v in SCREEN_COLUMNS.items()])
        self.parquet = pq.ParquetWriter(self.tmps[0], self.schema)
        self.handle = open(self.tmps[1], "w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.handle, fieldnames=list(SCREEN_COLUMNS))
        self.csv.writeheader()

    def __enter__(self) -> _Tables:
        return self

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa

        self.parquet.write_table(pa.Table.from_pylist(rows, schema=self.schema))
        self.csv.writerows(rows)

    def __exit__(self, kind, *exc) -> None:
        try:
            self.parquet.close()  # flushes: a full disk or a file-size limit raises here
            self.handle.close()
        except BaseException:
            self.handle.close() if not self.handle.closed else None
            kind = kind or OSError
            raise
        finally:
            for tmp, name in zip(self.tmps, self.names):
                self.owner.publish(tmp, name) if kind is None else remove_temp(tmp)


# --- --keep-out: a copy of the dataset without the near-copies ------------------------------------------


def write_kept_copy(
    dataset: Path, sources: list[Source], copies: set[str], owner: Owned, summary: ScreenSummary | None = None
) -> None:
    """Copy `dataset` into the claimed folder without the records whose key is in `copies` (built in a temp
    folder of this run inside it, then its entries renamed in and recorded)."""
    tmp = owner.temp("copy")
    tmp.mkdir(parents=True)
    try:
        if (dataset / "run.json").exists():
            _copy_medisyn_output(dataset, copies, tmp)
            if summary is not None:
                _record_filtering(tmp, summary, owner.path.name)
        else:
            for source in sources:
                _copy_source(source, copies, tmp / _relative(source.path, dataset))
        names = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir())
        owner.check_free(names, "--keep-out")
        for entry in tmp.iterdir():
            os.replace(entry, owner.path / entry.name)
        owner.record(names)
        owner.keep()
    finally:
        remove_temp(tmp)


def _relative(path: Path, root: Path) -> Path:
    return Path(".") if path == root or root.is_file() else path.relative_to(root)


def _copy_source(source: Source, copies: set[str], target: Path) -> None:
    if source.kind == "parquet":
        files = [source.path] if source.path.is_file() else sorted(source.path.rglob("*.parquet"))
        for file in files:
            name = file.name if source.path.is_file() else file.relative_to(source.path)
            filter_parquet(file, lambda ids, f=file: [f"{f}:{i}" not in copies for i in ids], target / name)
    elif source.kind == "imagefolder":
        filter_imagefolder(source.path, lambda row: str(source.path / row["file_name"]) not in copies, target)
    else:
        root = source.path if source.path.is_dir() else source.path.parent
        for record in iter_source_records(source):
            if record.key not in copies and record.path.is_file():
                (target / record.path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(record.path, target / record.path.relative_to(root))


def _copy_medisyn_output(dataset: Path, copies: set[str], target: Path) -> None:
    """Every format folder of a medisyn output, filtered by image id; run.json, the card and logs copied as they are."""
    ids = {key.rsplit(":", 1)[1] for key in copies}
    for fmt in map(get_format, format_names()):
        if (dataset / fmt.folder).exists():
            fmt.keep_out(dataset, target, ids)
    for name in ("run.json", "README.md", "rejected.parquet"):
        if (dataset / name).exists():
            shutil.copy2(dataset / name, target / name)


def _record_filtering(copy: Path, summary: ScreenSummary, name: str) -> None:
    """The copy's run.json and dataset card (named `name`, the folder it is published as) give its own counts and
    the screening that made it."""
    import json

    run = json.loads((copy / "run.json").read_text())
    removed = {label: counts[1] for label, counts in summary.per_label.items() if counts[1]}
    for label, count in removed.items():
        if label in run.get("classes", {}):
            run["classes"][label]["written"] -= count
    for output in run.get("outputs", []):
        if output.get("format") in format_names():
            output["rows"] = max(0, output.get("rows", 0) - sum(removed.values()))
    run["filtered"] = {
        "by": "medisyn screen --keep-out",
        "source": str(summary.dataset),
        "index": summary.index,
        "embedder": summary.embedder,
        "threshold": summary.threshold,
        "near_copies_removed": sum(removed.values()),
        "per_label": removed,
        "unreadable": summary.errors,
    }
    write_json(copy / "run.json", run)
    write_run_card(copy, run, name)
