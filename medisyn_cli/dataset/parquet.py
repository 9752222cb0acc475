"""The parquet format: OUT/parquet/part-NNNNN.parquet with a Hugging Face `image` column (struct of bytes and path)
and the provenance columns, written in row groups; each batch as OUT/_work/parquet/<batch>-00000.parquet."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from medisyn_cli.core.ownership import remove_private
from medisyn_cli.dataset.base import RunInfo, publish_over_older
from medisyn_cli.dataset.marks import MARK_COLUMNS, parquet_metadata, row_mark
from medisyn_cli.dataset.rows import COLUMNS

ROW_COLUMNS = {**COLUMNS, **MARK_COLUMNS}  # a Parquet row: provenance and the synthetic-content mark


def hf_features(labels: list[str]) -> dict:
    """The `datasets` feature spec stored in the Parquet schema, so `image` decodes as Image."""
    features = {"image": {"_type": "Image"}}
    for name, kind in ROW_COLUMNS.items():
        features[name] = {"_type": "Value", "dtype": kind}
    features["label_id"] = {"_type": "ClassLabel", "names": labels}
    return features


def arrow_schema(labels: list[str], extra: dict | None = None):
    """Arrow schema of a part file, with the Hugging Face features in its metadata."""
    import pyarrow as pa

    fields = [pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    fields += [pa.field(name, getattr(pa, kind)()) for name, kind in ROW_COLUMNS.items()]
    meta = {"huggingface": json.dumps({"info": {"features": hf_features(labels)}})}
    return pa.schema(fields, metadata={**meta, **(extra or {})})


class ParquetWriter:
    """Streams rows into part-NNNNN.parquet files; each part is a temp name until it is full or closed."""

    name = "parquet"

    def __init__(
        self,
        folder: Path,
        labels: list[str],
        rows_per_part: int = 5000,
        row_group: int = 64,
        prefix: str = "part",
        metadata: dict | None = None,
    ):
        self.folder, self.rows_per_part, self.row_group, self.prefix = (
            folder,
            rows_per_part,
            row_group,
            prefix,
        )
        self.schema = arrow_schema(labels, metadata)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.buffer: list[dict] = []
        self.part, self.part_rows, self.rows, self.files = 0, 0, 0, []
        self.handle = None

    def _tmp(self) -> Path:
        return self.folder / f".{self.prefix}-{self.part:05d}.parquet.tmp"

    def write(self, row: dict, png: bytes) -> None:
        image = {"bytes": png, "path": f"{row['id']}.png"}
        self.buffer.append({"image": image, **{k: row.get(k) for k in ROW_COLUMNS}})
        if len(self.buffer) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        while self.buffer:
            if self.handle is None:
                self.handle = pq.ParquetWriter(self._tmp(), self.schema, compression="zstd")
            take = min(len(self.buffer), self.rows_per_part - self.part_rows)
            chunk, self.buffer = self.buffer[:take], self.buffer[take:]
            self.handle.write_table(pa.Table.from_pylist(chunk, schema=self.schema))
            self.part_rows += take
            self.rows += take
            if self.part_rows >= self.rows_per_part:
                self._finish_part()

    def _finish_part(self) -> None:
        self.handle.close()
        final = self.folder / f"{self.prefix}-{self.part:05d}.parquet"
        self._tmp().rename(final)
        self.files.append(final.name)
        self.handle, self.part, self.part_rows = None, self.part + 1, 0

    def close(self) -> dict:
        self._flush()
        if self.handle is not None:
            self._finish_part()
        return {"format": self.name, "rows": self.rows, "files": self.files}


class ParquetFormat:
    """OUT/parquet/part-NNNNN.parquet of rows_per_part rows; marked runs carry the mark per row and in the schema."""

    name = folder = "parquet"
    help = "parquet/part-*.parquet: image bytes + metadata columns (Hugging Face `datasets`, pandas)"

    def write_batch(self, work: Path, batch: str, items: Sequence[tuple[dict, bytes]], run: RunInfo) -> dict:
        """The batch's rows as OUT/_work/parquet/<batch>-00000.parquet (a temp name until complete)."""
        metadata = parquet_metadata(run.mark()) if run.marked else None
        writer = ParquetWriter(work / self.folder, list(run.labels), 10**9, prefix=batch, metadata=metadata)
        for row, png in items:
            writer.write({**row, **row_mark(run.mark(row["id"]) if run.marked else None)}, png)
        return writer.close()

    def consolidate(self, work: Path, out: Path, batches: Sequence[str], run: RunInfo) -> dict:
        """Every batch file, in plan order, re-cut into parts of run.rows_per_part rows; one rename publishes."""

        def build(staged: Path) -> dict:
            return consolidate_parts(work / self.folder, staged, run.rows_per_part)

        return publish_over_older(work / f"{self.folder}-out", out / self.folder, build, self.describe)

    def describe(self, folder: Path) -> dict:
        """The run.json entry of a parquet folder."""
        import pyarrow.parquet as pq

        files = sorted(p.name for p in folder.glob("part-*.parquet"))
        rows = sum(pq.ParquetFile(folder / f).metadata.num_rows for f in files)
        return {"format": self.name, "rows": rows, "files": files}

    def files(self, out: Path) -> set[str]:
        """The files of this format in OUT, relative to it."""
        return {p.relative_to(out).as_posix() for p in (out / self.folder).glob("part-*.parquet")}

    def keep_out(self, out: Path, target: Path, drop: set[str]) -> dict:
        """Copy OUT/parquet to target/parquet without the rows whose id is in `drop` (schema metadata kept)."""
        for file in sorted((out / self.folder).glob("*.parquet")):
            filter_parquet(file, lambda ids: [i not in drop for i in ids], target / self.folder / file.name)
        return self.describe(target / self.folder)

    def card_lines(self, output: dict, run: RunInfo) -> list[str]:
        """The card's lines on the parquet folder."""
        return [
            "- `parquet/`: Parquet parts with an `image` column (`bytes`, `path`) and the provenance columns"
        ]


def consolidate_parts(source: Path, target: Path, rows_per_part: int) -> dict:
    """Batch files -> part-NNNNN.parquet of rows_per_part rows (schema and its metadata kept)."""
    import pyarrow.parquet as pq

    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("part-*.parquet"):
        remove_private(old)
    files, rows, handle, part_rows = [], 0, None, 0
    for batch_file in sorted(source.glob("b-*.parquet")):
        table = pq.read_table(batch_file)
        while table.num_rows:
            if handle is None:
                tmp = target / f".part-{len(files):05d}.parquet.tmp"
                handle = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            take = min(table.num_rows, rows_per_part - part_rows)
            handle.write_table(table.slice(0, take), row_group_size=64)
            table, part_rows, rows = table.slice(take), part_rows + take, rows + take
            if part_rows == rows_per_part:
                files.append(_finish_part(handle, tmp, target, len(files)))
                handle, part_rows = None, 0
    if handle is not None:
        files.append(_finish_part(handle, tmp, target, len(files)))
    return {"format": "parquet", "rows": rows, "files": files}


def _finish_part(handle, tmp: Path, target: Path, number: int) -> str:
    handle.close()
    final = target / f"part-{number:05d}.parquet"
    tmp.replace(final)
    return final.name


def filter_parquet(file: Path, keep, target: Path) -> None:
    """Rewrite one Parquet file batch by batch, keeping rows for which keep(ids) is true (schema metadata kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    source = pq.ParquetFile(file)
    row = 0
    with pq.ParquetWriter(target, source.schema_arrow) as writer:
        for batch in source.iter_batches(batch_size=256):
            names = batch.schema.names
            ids = (
                batch.column(names.index("id")).to_pylist()
                if "id" in names
                else list(range(row, row + len(batch)))
            )
            row += len(batch)
            writer.write_table(pa.Table.from_batches([batch]).filter(pa.array(keep(ids))))


FORMAT = ParquetFormat()
