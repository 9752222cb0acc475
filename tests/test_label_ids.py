"""One class numbering for every loader: label_id is the class's place among the sorted folder names."""

import json
from pathlib import Path

import pytest

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.names import class_names, safe_name
from medisyn_cli.core.store import WorkDir
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate

# unsorted, and "b c" sorts before "b-d" as a label but after it as a folder name ("b_c-<hash>")
MANIFEST = (
    "label,prompt,mode\n"
    "nevus,dermoscopy image of benign melanocytic nevus,RGB\n"
    "x ray/normal,frontal chest x-ray,L\n"
    "melanoma,dermoscopy image of melanoma,RGB\n"
    "b c,dermoscopy image of melanoma,RGB\n"
    "b-d,frontal chest x-ray,L\n"
)
LABELS = ["nevus", "x ray/normal", "melanoma", "b c", "b-d"]


def config(tmp: Path, model: Path, name: str, **options) -> GenerateConfig:
    manifest = tmp / "unsorted.csv"
    manifest.write_text(MANIFEST)
    return GenerateConfig(
        manifest=str(manifest), n=5, out=str(tmp / name), model=str(model), steps=2, **options
    )


@pytest.fixture(scope="module")
def dataset(tiny_model, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("labels")
    return run_generate(config(tmp, tiny_model, "out", batch_size=5), show_progress=False).out


def test_class_names_sort_by_folder_name_as_imagefolder_loaders_do():
    names = class_names(LABELS)
    assert [safe_name(label) for label in names] == sorted(safe_name(label) for label in LABELS)
    assert names.index("b-d") < names.index("b c")  # by label alone it would be the other way round


def test_four_loaders_agree_on_every_label_id(dataset):
    import pandas as pd
    import pyarrow.parquet as pq
    from datasets import Image as ImageFeature
    from datasets import load_dataset
    from torchvision.datasets import ImageFolder

    names = json.loads((dataset / "run.json").read_text())["manifest"]["classes"]
    assert names == class_names(LABELS) and names != LABELS

    frame = pd.read_parquet(dataset / "parquet")
    ours = dict(zip(frame["id"], frame["label_id"], strict=True))
    assert len(ours) == 5 and all(names[ours[i]] == label for i, label in zip(frame["id"], frame["label"]))
    assert pq.read_table(dataset / "parquet")["label_id"].to_pylist() == list(frame["label_id"])

    parquet = load_dataset("parquet", data_files=str(dataset / "parquet" / "*.parquet"), split="train")
    assert parquet.features["label_id"].names == names
    assert {row["id"]: row["label_id"] for row in parquet.remove_columns("image")} == ours

    folder = dataset / "imagefolder"
    with_metadata = load_dataset("imagefolder", data_dir=str(folder), split="train").remove_columns("image")
    assert {row["id"]: row["label_id"] for row in with_metadata} == ours
    pngs = str(folder / "*" / "*.png")  # without metadata.csv: labels from the folder names
    inferred = load_dataset("imagefolder", data_files=pngs, split="train")
    assert inferred.features["label"].names == [safe_name(label) for label in names]
    inferred = inferred.cast_column("image", ImageFeature(decode=False))
    assert {Path(row["image"]["path"]).stem: row["label"] for row in inferred} == ours

    torchvision = ImageFolder(str(folder))
    assert torchvision.class_to_idx == {safe_name(label): number for number, label in enumerate(names)}
    assert {Path(path).stem: target for path, target in torchvision.samples} == ours


def test_card_lists_classes_in_label_id_order(dataset):
    card = (dataset / "README.md").read_text()
    rows = [f"| {number} | {label} | 1 |" for number, label in enumerate(class_names(LABELS))]
    assert all(row in card for row in rows) and "sorted order of their folder names" in card


def test_resuming_a_run_numbered_in_manifest_order_fails_clearly(tiny_model, tmp_path):
    options = {"batch_size": 1}
    run_generate(config(tmp_path, tiny_model, "old", shard="0/2", **options), show_progress=False)
    record = tmp_path / "old" / "_work" / "config.json"
    old = json.loads(record.read_text())
    old["manifest"]["classes"] = LABELS  # as medisyn numbered classes before: in manifest order
    record.write_text(json.dumps(old))
    done = WorkDir(tmp_path / "old").done()
    with pytest.raises(MedisynError, match="manifest order.*--overwrite"):
        run_generate(config(tmp_path, tiny_model, "old", shard="1/2", **options), show_progress=False)
    assert WorkDir(tmp_path / "old").done() == done and len(done) == 3  # shard 0/2 of 5 batches


def test_resuming_a_complete_run_numbered_in_manifest_order_fails_clearly(dataset, tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    run = json.loads((copy / "run.json").read_text())
    run["manifest"]["classes"] = LABELS
    (copy / "run.json").write_text(json.dumps(run))
    with pytest.raises(MedisynError, match="manifest order"):
        run_generate(config(tmp_path, tiny_model, "copy", batch_size=5, resume=True), show_progress=False)
    run["manifest"]["classes"] = class_names(LABELS)
    (copy / "run.json").write_text(json.dumps(run))
    summary = run_generate(
        config(tmp_path, tiny_model, "copy", batch_size=5, resume=True), show_progress=False
    )
    assert summary.note == "already complete: nothing to do"
