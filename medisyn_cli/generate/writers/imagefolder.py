"""ImageFolder: <label>/<id>.png plus metadata.csv with a file_name column (torchvision and `datasets`)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from medisyn_cli.core.names import safe_name
from medisyn_cli.generate.writers.base import COLUMNS


class ImageFolderWriter:
    """Each PNG appears under its final name only when complete; metadata.csv is renamed in on close."""

    name = "imagefolder"

    def __init__(self, folder: Path, metadata: Path | None = None):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metadata = metadata or folder / "metadata.csv"
        self.metadata.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.metadata.with_name(f".{self.metadata.name}.tmp")
        self.handle = open(self.partial, "w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.handle, fieldnames=["file_name", *COLUMNS])
        self.csv.writeheader()
        self.rows = 0

    def write(self, row: dict, png: bytes) -> None:
        relative = f"{safe_name(row['label'])}/{row['id']}.png"
        target = self.folder / relative
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, target)
        self.csv.writerow({"file_name": relative, **{k: row.get(k) for k in COLUMNS}})
        self.rows += 1

    def close(self) -> dict:
        self.handle.close()
        os.replace(self.partial, self.metadata)
        return {"format": self.name, "rows": self.rows, "files": [self.metadata.name]}
