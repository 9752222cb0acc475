"""The output-format registry and its dicom and webdataset formats (#27, #28): batches under _work, consolidation
in plan order published by one rename, identical bytes whatever the batching, keep-out copies, card lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from dataset_samples import real_files
from PIL import Image

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.names import safe_name
from medisyn_cli.dataset.base import RunInfo, run_info
from medisyn_cli.dataset.formats import (
    format_names,
    formats_help,
    get_format,
    parse_format_list,
    register_format,
    unregister_format,
)
from medisyn_cli.dataset.marks import mark_png, read_mark
from medisyn_cli.dataset.webdataset import iter_samples, sample_key

RUN = RunInfo("3f2a9c1b7d4e", "2026-12-06T22:31:05+00:00", ("glioma", "no tumor"), "mini", "ab" * 32, "0.1.0")
FORMATS = ["dicom", "webdataset"]


def items(count: int = 7, run: RunInfo = RUN) -> list[tuple[dict, bytes]]:
    """(row, marked PNG) of real brain MRI slices, alternating two labels, in plan order."""
    result = []
    for number, path in enumerate(real_files("brain_tumor_mri")[:count]):
        label = RUN.labels[number % 2]
        row = {"id": f"{safe_name(label)}-{number:06d}", "label": label, "label_id": number % 2}
        row.update(prompt=f"brain MRI slice, {label}", seed=number, nn_similarity=np.float32(0.25))
        result.append((row, mark_png(path.read_bytes(), run.mark(row["id"]))))
    return result


def write_run(out: Path, fmt, sizes: list[int], run: RunInfo = RUN) -> dict:
    """Write the items as batches of the given sizes (in plan order), then consolidate."""
    work, rows, start, names = out / "_work", items(sum(sizes), run), 0, []
    for number, size in enumerate(sizes):
        names.append(f"b-{number:07d}")
        fmt.write_batch(work, names[-1], rows[start : start + size], run)
        start += size
    return fmt.consolidate(work, out, names, run)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_registry_lists_the_formats_and_refuses_unknown_names():
    assert {"dicom", "webdataset"} <= set(format_names())
    assert "dicom:" in formats_help() and "webdataset:" in formats_help()
    with pytest.raises(MedisynError, match="'tiff' is not one of .*dicom.*webdataset"):
        get_format("tiff")
    assert parse_format_list("webdataset, dicom,webdataset") == ("webdataset", "dicom")
    with pytest.raises(MedisynError, match="'dicom,tiff' is not a comma-separated list of"):
        parse_format_list("dicom,tiff")
    with pytest.raises(MedisynError):
        parse_format_list(" , ")


def test_a_format_from_outside_the_package_registers_and_runs(tmp_path):
    class Listing:
        """A toy format: one text line per image id."""

        name = folder = "listing"
        help = "listing/ids.txt: the image ids"

        def write_batch(self, work, batch, batch_items, run):
            (work / "listing").mkdir(parents=True, exist_ok=True)
            (work / "listing" / f"{batch}.txt").write_text("".join(f"{r['id']}\n" for r, _ in batch_items))
            return {"rows": len(batch_items)}

        def consolidate(self, work, out, batches, run):
            text = "".join((work / "listing" / f"{b}.txt").read_text() for b in batches)
            (out / "listing").mkdir()
            (out / "listing" / "ids.txt").write_text(text)
            return self.describe(out / "listing")

        def describe(self, folder):
            return {"format": "listing", "rows": len((folder / "ids.txt").read_text().split())}

        def files(self, out):
            return {"listing/ids.txt"} if (out / "listing" / "ids.txt").exists() else set()

        def keep_out(self, out, target, drop):
            raise NotImplementedError

        def card_lines(self, output, run):
            return [f"- `listing/ids.txt`: {output['rows']} ids"]

    register_format("listing", Listing())
    try:
        assert "listing" in format_names() and parse_format_list("listing,dicom") == ("listing", "dicom")
        output = write_run(tmp_path, get_format("listing"), [3, 2])
        assert output["rows"] == 5 and get_format("listing").card_lines(output, RUN) == [
            "- `listing/ids.txt`: 5 ids"
        ]
        with pytest.raises(ValueError, match="already registered"):
            register_format("listing", Listing())
    finally:
        unregister_format("listing")
    assert "listing" not in format_names()
    with pytest.raises(ValueError, match="missing .*consolidate"):
        register_format("broken", type("Broken", (), {"folder": "b", "help": "h", "write_batch": None})())


@pytest.mark.parametrize("name", FORMATS)
def test_two_batches_consolidate_into_one_published_folder(tmp_path, name):
    fmt = get_format(name)
    output = write_run(tmp_path, fmt, [4, 3])
    final = tmp_path / fmt.folder
    assert output["format"] == name and output["rows"] == 7 and final.is_dir()
    assert not (
        tmp_path / "_work" / f"{fmt.folder}-out"
    ).exists()  # the staged folder was renamed, not copied
    assert fmt.describe(final) == output
    assert not [p for p in final.rglob("*") if p.name.startswith(".")]


@pytest.mark.parametrize("name", FORMATS)
def test_same_images_give_identical_bytes_whatever_the_batching(tmp_path, name):
    fmt = get_format(name)
    write_run(tmp_path / "a", fmt, [4, 3])
    write_run(tmp_path / "b", fmt, [1, 2, 2, 2])
    write_run(tmp_path / "c", fmt, [7])
    first = tree(tmp_path / "a" / fmt.folder)
    assert first and first == tree(tmp_path / "b" / fmt.folder) == tree(tmp_path / "c" / fmt.folder)
    write_run(tmp_path / "d", fmt, [4, 3], RunInfo(**{**vars(RUN), "run_id": "000000000002"}))
    assert tree(tmp_path / "d" / fmt.folder) != first  # the run id is in every mark (and DICOM UID)


@pytest.mark.parametrize("name", FORMATS)
def test_a_consolidation_killed_before_its_rename_is_redone_the_same(tmp_path, name, monkeypatch):
    fmt = get_format(name)
    expected = write_run(tmp_path / "once", fmt, [4, 3])
    work = tmp_path / "killed" / "_work"
    batches = ["b-0000000", "b-0000001"]
    fmt.write_batch(work, batches[0], items()[:4], RUN)
    fmt.write_batch(work, batches[1], items()[4:], RUN)
    original = Path.rename

    def killed(self, target):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        fmt.consolidate(work, tmp_path / "killed", batches, RUN)
    monkeypatch.setattr(Path, "rename", original)
    assert not (tmp_path / "killed" / fmt.folder).exists() and (work / f"{fmt.folder}-out").exists()
    assert fmt.consolidate(work, tmp_path / "killed", batches, RUN) == expected
    assert fmt.consolidate(work, tmp_path / "killed", batches, RUN) == expected  # published: described
    assert tree(tmp_path / "killed" / fmt.folder) == tree(tmp_path / "once" / fmt.folder)


@pytest.mark.parametrize("name", FORMATS)
def test_a_batch_rewritten_after_a_kill_replaces_its_partial_files(tmp_path, name):
    fmt = get_format(name)
    work = tmp_path / "_work"
    fmt.write_batch(work, "b-0000000", items()[:2], RUN)  # a first attempt, superseded
    fmt.write_batch(work, "b-0000000", items()[:4], RUN)
    fmt.write_batch(work, "b-0000001", items()[4:], RUN)
    fmt.consolidate(work, tmp_path, ["b-0000000", "b-0000001"], RUN)
    write_run(tmp_path / "clean", fmt, [4, 3])
    assert tree(tmp_path / fmt.folder) == tree(tmp_path / "clean" / fmt.folder)


@pytest.mark.parametrize("name", FORMATS)
def test_missing_batch_files_are_an_error_naming_the_batch(tmp_path, name):
    fmt = get_format(name)
    fmt.write_batch(tmp_path / "_work", "b-0000000", items()[:2], RUN)
    with pytest.raises(MedisynError, match="b-0000001.*marked done but its files are missing"):
        fmt.consolidate(tmp_path / "_work", tmp_path, ["b-0000000", "b-0000001"], RUN)
    assert not (tmp_path / fmt.folder).exists()


@pytest.mark.parametrize("name", FORMATS)
def test_keep_out_copy_leaves_out_the_dropped_ids_and_keeps_the_rest_unchanged(tmp_path, name):
    fmt = get_format(name)
    write_run(tmp_path / "out", fmt, [4, 3])
    drop = {items()[1][0]["id"], items()[5][0]["id"]}
    output = fmt.keep_out(tmp_path / "out", tmp_path / "copy", drop)
    assert output["rows"] == 5
    kept = read_ids(tmp_path / "copy" / fmt.folder, name)
    assert kept == [row["id"] for row, _ in items() if row["id"] not in drop]
    assert fmt.keep_out(tmp_path / "out", tmp_path / "all", set())["rows"] == 7
    assert tree(tmp_path / "all" / fmt.folder) == tree(tmp_path / "out" / fmt.folder)


def read_ids(folder: Path, name: str) -> list[str]:
    """The image ids of a dicom or webdataset folder, in plan order (DICOM: by file name)."""
    if name == "dicom":
        return sorted((p.stem for p in folder.rglob("*.dcm")), key=lambda i: i.rsplit("-", 1)[1])
    return [key for shard in sorted(folder.glob("*.tar")) for key, _ in iter_samples(shard)]


def test_dicom_folder_is_one_file_per_image_under_its_label_and_pydicom_reads_every_file(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    write_run(tmp_path, get_format("dicom"), [4, 3])
    files = sorted((tmp_path / "dicom").rglob("*.dcm"))
    assert {p.relative_to(tmp_path / "dicom").as_posix() for p in files} == {
        f"{safe_name(row['label'])}/{row['id']}.dcm" for row, _ in items()
    }
    by_id = dict((row["id"], png) for row, png in items())
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.SyntheticData == "YES" and ds.SeriesDescription in RUN.labels
        assert np.array_equal(ds.pixel_array, np.asarray(Image.open(io.BytesIO(by_id[path.stem]))))


def test_webdataset_library_loads_the_shards_in_plan_order(tmp_path):
    wds = pytest.importorskip("webdataset")
    output = write_run(tmp_path, get_format("webdataset"), [4, 3], RunInfo(**{**vars(RUN), "shard_size": 3}))
    assert output["files"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    urls = [str(tmp_path / "webdataset" / f) for f in output["files"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    expected = items()
    assert [s["__key__"] for s in samples] == [row["id"] for row, _ in expected]
    for sample, (row, png) in zip(samples, expected):
        assert sample["png"] == png and read_mark(sample["png"])["image_id"] == row["id"]
        assert int(sample["cls"]) == row["label_id"]
        metadata = json.loads(sample["json"])
        assert metadata["id"] == row["id"] and metadata["nn_similarity"] == 0.25
    decoded = next(iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")))
    original = Image.open(io.BytesIO(expected[0][1])).convert("RGB")  # decode("pil") gives RGB
    assert np.array_equal(np.asarray(decoded["png"]), np.asarray(original))


def test_webdataset_members_have_fixed_headers(tmp_path):
    import tarfile

    write_run(tmp_path, get_format("webdataset"), [4, 3])
    with tarfile.open(tmp_path / "webdataset" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == [f"{items()[0][0]['id']}.{ext}" for ext in ("cls", "json", "png")]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}
    assert sample_key("grade_1.5-000001") == "grade_1_5-000001"


def test_shard_size_must_be_positive(tmp_path):
    with pytest.raises(MedisynError, match="--shard-size"):
        write_run(tmp_path, get_format("webdataset"), [2], RunInfo(**{**vars(RUN), "shard_size": 0}))


def test_card_lines_name_the_folder_and_count(tmp_path):
    for name in FORMATS:
        fmt = get_format(name)
        output = write_run(tmp_path / name, fmt, [4, 3])
        text = " ".join(fmt.card_lines(output, RUN))
        assert f"{fmt.folder}/" in text and "7 " in text and str(tmp_path) not in text
    assert "shard-{000000..000000}.tar" in " ".join(get_format("webdataset").card_lines(output, RUN))


def test_run_info_from_a_run_record():
    record = {
        "run_id": "edd60627c969",
        "started": "2026-12-06T22:39:45.082871+00:00",
        "medisyn": "0.1.0",
        "manifest": {"classes": ["glioma", "no_tumor"]},
        "model": {"name": "medisyn-mini (bundled)", "weights_sha256": {"unet/w.safetensors": "1" * 64}},
    }
    info = run_info(record, marked=False, shard_size=10)
    assert (info.run_id, info.labels, info.model, info.version) == (
        "edd60627c969",
        ("glioma", "no_tumor"),
        "medisyn-mini (bundled)",
        "0.1.0",
    )
    assert len(info.model_sha256) == 64 and not info.marked and info.shard_size == 10
    assert info.mark("glioma-000001").image_id == "glioma-000001"


def test_dataset_layer_imports_only_core_and_itself():
    """dataset/ sits below the stages (#28): generate, screening and study may import it, never the reverse."""
    import ast

    import medisyn_cli

    for path in sorted((Path(medisyn_cli.__file__).parent / "dataset").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in (n for n in names if n.startswith("medisyn_cli")):
                assert name.startswith(("medisyn_cli.core", "medisyn_cli.dataset")), (
                    f"{path.name}:{node.lineno} {name}"
                )
