"""WebDataset output: `OUT/webdataset/shard-000000.tar`, ... with `shard_size` images each, in plan order.

    import webdataset as wds
    for sample in wds.WebDataset("OUT/webdataset/shard-{000000..000003}.tar").decode("pil"):
        sample["__key__"], sample["png"], sample["cls"], sample["json"]

One sample per image: `<key>.cls` (label id as text), `<key>.json` (its metadata row), `<key>.png` (the PNG bytes
as written, mark included). The key is the image id (a '.' in an id becomes '_', since WebDataset ends a key at
the first dot of a name; the json keeps the exact id). Tar members have fixed mtime 0, uid/gid 0, no user
names and mode 0444, in a fixed order: the same images give the same bytes whatever the batching, sharding
or resumes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import atomic_path, finite
from medisyn_cli.dataset.base import RunInfo, batch_paths, publish

SHARD = "shard-{:06d}.tar"


def sample_key(image_id: str) -> str:
    """The WebDataset key of an image id (no '.': WebDataset splits a member name at its first dot)."""
    return str(image_id).replace(".", "_")


def sample_members(row: dict, png: bytes) -> dict[str, bytes]:
    """extension -> bytes of one image's sample."""
    text = json.dumps(finite(row), sort_keys=True, ensure_ascii=False, allow_nan=False, default=str)
    return {"cls": str(row["label_id"]).encode(), "json": text.encode(), "png": png}


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_sample(tar: tarfile.TarFile, key: str, members: dict[str, bytes]) -> None:
    """Add one sample's members (sorted by extension) with fixed headers."""
    for extension in sorted(members):
        data = members[extension]
        tar.addfile(_member(f"{key}.{extension}", len(data)), io.BytesIO(data))


def open_tar(path: Path) -> tarfile.TarFile:
    """A tar to write with deterministic headers (GNU format: long names without PAX time records)."""
    return tarfile.open(path, "w", format=tarfile.GNU_FORMAT)


def iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, extension -> bytes) of each sample of a tar, in order (members grouped by key)."""
    key, members = None, {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            this, _, extension = name.partition(".")
            if this != key and members:
                yield key, members
                members = {}
            key = this
            members[extension] = tar.extractfile(info).read()
    if members:
        yield key, members


class ShardWriter:
    """Samples -> folder/shard-NNNNNN.tar of `size` samples each (the last may be smaller)."""

    def __init__(self, folder: Path, size: int):
        if size < 1:
            raise MedisynError(f"--shard-size: must be at least 1 image, got {size}")
        self.folder, self.size, self.files, self.in_shard, self.tar = folder, size, [], 0, None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self.tar is None:
            self.files.append(SHARD.format(len(self.files)))
            self.tar = open_tar(self.folder / self.files[-1])
        write_sample(self.tar, key, members)
        self.in_shard += 1
        if self.in_shard == self.size:
            self._close_shard()

    def _close_shard(self) -> None:
        self.tar.close()
        self.tar, self.in_shard = None, 0

    def close(self) -> list[str]:
        """Finish the open shard; the shard file names."""
        if self.tar is not None:
            self._close_shard()
        return self.files


def count_samples(folder: Path) -> tuple[int, list[str]]:
    """(samples, shard names) of a webdataset folder, from the tar headers only."""
    files = sorted(p.name for p in folder.glob("shard-*.tar"))
    keys = 0
    for name in files:
        with tarfile.open(folder / name, "r:") as tar:
            keys += len({m.name.rsplit("/", 1)[-1].partition(".")[0] for m in tar if m.isfile()})
    return keys, files


class WebDatasetFormat:
    """OUT/webdataset/shard-NNNNNN.tar; each batch as OUT/_work/webdataset/<batch>.tar (renamed in when complete)."""

    name = folder = "webdataset"
    help = "webdataset/shard-NNNNNN.tar: tar shards of png + cls + json per image (large training runs)"

    def write_batch(self, work: Path, batch: str, items: Sequence[tuple[dict, bytes]], run: RunInfo) -> dict:
        """The batch's samples, in order, as one tar written under a temp name and renamed in."""
        target = work / self.folder / f"{batch}.tar"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, open_tar(tmp) as tar:
            for row, png in items:
                write_sample(tar, sample_key(row["id"]), sample_members(row, png))
        return {"format": self.name, "rows": len(items)}

    def consolidate(self, work: Path, out: Path, batches: Sequence[str], run: RunInfo) -> dict:
        """Every batch's samples, in plan order, re-cut into shards of run.shard_size; one rename publishes them."""

        def build(staged: Path) -> dict:
            shards = ShardWriter(staged, run.shard_size)
            for path in batch_paths(work / self.folder, batches, ".tar"):
                for key, members in iter_samples(path):
                    shards.write(key, members)
            shards.close()
            return self.describe(staged)

        return publish(work / f"{self.folder}-out", out / self.folder, build, self.describe)

    def describe(self, folder: Path) -> dict:
        """The run.json entry of a webdataset folder."""
        rows, files = count_samples(folder)
        return {"format": self.name, "folder": self.folder, "rows": rows, "files": files}

    def files(self, out: Path) -> set[str]:
        """The files of this format in OUT, relative to it."""
        return {p.relative_to(out).as_posix() for p in (out / self.folder).glob("shard-*.tar")}

    def keep_out(self, out: Path, target: Path, drop: set[str]) -> dict:
        """Copy OUT/webdataset to target/webdataset without the samples of the image ids in `drop`; shards keep
        their names (one may hold fewer samples, or none), so a brace pattern over them stays valid."""
        source, copy = out / self.folder, target / self.folder
        copy.mkdir(parents=True, exist_ok=True)
        dropped = {sample_key(i) for i in drop}
        for shard in sorted(source.glob("shard-*.tar")):
            with open_tar(copy / shard.name) as tar:
                for key, members in iter_samples(shard):
                    if key not in dropped:
                        write_sample(tar, key, members)
        return self.describe(copy)

    def card_lines(self, output: dict, run: RunInfo) -> list[str]:
        """The card's lines on the webdataset folder."""
        files = output.get("files") or [SHARD.format(0)]
        pattern = f"webdataset/shard-{{000000..{len(files) - 1:06d}}}.tar"
        return [
            f"- `webdataset/shard-*.tar`: {output.get('rows', 0)} samples in {len(files)} shards (`png`, `cls` = "
            f'label id, `json` = metadata row; key = image id); load with `webdataset.WebDataset("{pattern}")`.'
        ]


FORMAT = WebDatasetFormat()
