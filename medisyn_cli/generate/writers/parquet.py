"""Parquet parts with a Hugging Face `image` column (struct of bytes and path), written in row groups."""

from __future__ import annotations

import json
from pathlib import Path

from medisyn_cli.generate.writers.base import COLUMNS


def hf_features(labels: list[str]) -> dict:
    """The `datasets` feature spec stored in the Parquet schema, so `image` decodes as Image."""
    features = {"image": {"_type": "Image"}}
    for name, kind in COLUMNS.items():
        features[name] = {"_type": "Value", "dtype": kind}
    features["label_id"] = {"_type": "ClassLabel", "names": labels}
    return features


def arrow_schema(labels: list[str], extra: dict | None = None):
    """Arrow schema of a part file, with the Hugging Face features in its metadata."""
    import pyarrow as pa

    fields = [pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    fields += [pa.field(name, getattr(pa, kind)()) for name, kind in COLUMNS.items()]
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
    ):
        self.folder, self.rows_per_part, self.row_group, self.prefix = (
            folder,
            rows_per_part,
            row_group,
            prefix,
        )
        self.schema = arrow_schema(labels)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.buffer: list[dict] = []
        self.part, self.part_rows, self.rows, self.files = 0, 0, 0, []
        self.handle = None

    def _tmp(self) -> Path:
        return self.folder / f".{self.prefix}-{self.part:05d}.parquet.tmp"

    def write(self, row: dict, png: bytes) -> None:
        image = {"bytes": png, "path": f"{row['id']}.png"}
        self.buffer.append({"image": image, **{k: row.get(k) for k in COLUMNS}})
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
