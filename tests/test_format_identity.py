"""Every output format keeps generate's guarantees: a run split in shards, or stopped and resumed, writes the same
bytes as one uninterrupted process, and nothing loadable appears in OUT/<folder> before the run completes."""

from datetime import datetime, timezone
from pathlib import Path

import pytest

from medisyn_cli.core.errors import Cancelled
from medisyn_cli.dataset.formats import format_names, get_format
from medisyn_cli.dataset.marks import read_mark
from medisyn_cli.generate import record, worker
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate

MANIFEST = (
    "label,prompt,mode\n"
    "melanoma,dermoscopy image of melanoma,RGB\n"
    "nevus,dermoscopy image of benign melanocytic nevus,RGB\n"
    "normal,frontal chest x-ray,L\n"
)
FORMATS = format_names()


class Clock(datetime):
    """One start time for every run of this module: DICOM objects are dated by their run's first start."""

    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 8, 2, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def same_start(monkeypatch):
    monkeypatch.setattr(record, "datetime", Clock)


def config(tmp: Path, model: Path, name: str, fmt: str, **options) -> GenerateConfig:
    (tmp / "m.csv").write_text(MANIFEST)
    return GenerateConfig(
        manifest=str(tmp / "m.csv"),
        n=10,
        out=str(tmp / name),
        model=str(model),
        steps=2,
        batch_size=2,
        rows_per_part=4,
        formats=(fmt,),
        **options,
    )


def files(out: Path, folder: str) -> dict[str, bytes]:
    """Every file of one format folder, by relative path."""
    root = out / folder
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def references(tiny_model, tmp_path_factory):
    """Per format: the files of one uninterrupted run."""
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record, "datetime", Clock)
        for fmt in FORMATS:
            tmp = tmp_path_factory.mktemp(f"one-{fmt}")
            out = run_generate(config(tmp, tiny_model, "one", fmt), show_progress=False).out
            found[fmt] = files(out, get_format(fmt).folder)
    return found


@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_write_the_bytes_of_one_process_and_nothing_before_the_end(
    tiny_model, references, tmp_path, fmt
):
    folder = get_format(fmt).folder
    summaries = []
    for k in range(3):
        summaries.append(
            run_generate(config(tmp_path, tiny_model, "split", fmt, shard=f"{k}/3"), show_progress=False)
        )
        if not summaries[-1].complete:
            assert not (tmp_path / "split" / folder).exists()
    assert summaries[-1].complete and files(tmp_path / "split", folder) == references[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_run_stopped_and_resumed_writes_the_bytes_of_one_process(
    tiny_model, references, tmp_path, fmt, monkeypatch
):
    folder, real, calls = get_format(fmt).folder, worker.BatchWorker.finish, []

    def stop_after_two(self, *args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(worker.BatchWorker, "finish", stop_after_two)
    with pytest.raises(Cancelled, match="2 of 5 batches done"):
        run_generate(config(tmp_path, tiny_model, "stopped", fmt), show_progress=False)
    assert (tmp_path / "stopped" / "_work").exists() and not (tmp_path / "stopped" / folder).exists()
    monkeypatch.setattr(worker.BatchWorker, "finish", real)
    run_generate(config(tmp_path, tiny_model, "stopped", fmt, resume=True), show_progress=False)
    assert files(tmp_path / "stopped", folder) == references[fmt]


def test_every_png_medisyn_writes_carries_the_mark_unless_no_mark(tiny_model, references, tmp_path):
    for name, data in references["imagefolder"].items():
        assert not name.endswith(".png") or read_mark(data)["image_id"] == Path(name).stem
    out = run_generate(
        config(tmp_path, tiny_model, "plain", "imagefolder", mark=False), show_progress=False
    ).out
    pngs = [p for p in (out / "imagefolder").rglob("*.png")]
    assert len(pngs) == 10 and all(read_mark(p) is None for p in pngs)
    card = (out / "README.md").read_text()
    assert "`--no-mark`" in card and '"mark": false' in (out / "run.json").read_text()


def test_shard_size_cuts_the_webdataset_tars_and_is_part_of_the_run(tiny_model, tmp_path):
    """--shard-size N: ceil(n / N) tar shards of N images in plan order; a resume with another size is refused."""
    import webdataset as wds

    from medisyn_cli.core.errors import MedisynError

    out = run_generate(
        config(tmp_path, tiny_model, "wds", "webdataset", shard_size=4), show_progress=False
    ).out
    tars = sorted((out / "webdataset").glob("*.tar"))
    assert [t.name for t in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    counts = [sum(1 for _ in wds.WebDataset(str(t), shardshuffle=False)) for t in tars]
    assert counts == [4, 4, 2]
    with pytest.raises(MedisynError, match="shard_size"):
        run_generate(
            config(tmp_path, tiny_model, "wds", "webdataset", shard_size=5, resume=True), show_progress=False
        )
    with pytest.raises(MedisynError, match="--shard-size: must be at least 1"):
        run_generate(config(tmp_path, tiny_model, "bad", "webdataset", shard_size=0), show_progress=False)
