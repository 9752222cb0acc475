"""`medisyn publish` (#27): what goes up (card, Parquet, WebDataset; never the ImageFolder, _work or run.json),
no absolute local path in anything uploaded, the model's licence in the card, one line without network or token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.dataset.card import write_run_card
from medisyn_cli.dataset.licence import licence_lines, model_licence, portable
from medisyn_cli.dataset.publish import check_portable, plan_upload
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.generate.run import run_generate


@pytest.fixture(scope="module")
def dataset(tiny_model, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("publish")
    manifest = tmp / "derm.csv"
    manifest.write_text(
        "label,prompt\nnevus,dermoscopy image of benign melanocytic nevus\nmelanoma,dermoscopy image of melanoma\n"
    )
    config = GenerateConfig(
        manifest=str(manifest.resolve()),
        n=4,
        out=str(tmp / "derm"),
        model=str(tiny_model.resolve()),
        steps=2,
        formats=("parquet", "imagefolder", "webdataset"),
    )
    return run_generate(config, show_progress=False).out


def test_the_upload_is_the_card_parquet_and_webdataset_only(dataset):
    names = [upload.path_in_repo for upload in plan_upload(dataset)]
    assert "README.md" in names
    assert any(name.startswith("parquet/") and name.endswith(".parquet") for name in names)
    assert any(name.startswith("webdataset/") and name.endswith(".tar") for name in names)
    assert not [n for n in names if n.startswith(("imagefolder/", "_work/")) or n in ("run.json", ".medisyn")]
    assert all(upload.size == upload.local.stat().st_size > 0 for upload in plan_upload(dataset))


def test_the_card_names_no_absolute_local_path_although_the_run_was_given_absolute_ones(dataset):
    card = (dataset / "README.md").read_text()
    run = json.loads((dataset / "run.json").read_text())
    assert Path(run["model"]["source"]).is_absolute() and Path(run["manifest"]["path"]).is_absolute()
    assert run["model"]["source"] not in card and str(dataset.resolve()) not in card
    assert "`derm.csv`" in card
    check_portable(dataset / "README.md", dataset)  # raises if any absolute path is there


def test_a_card_with_a_local_path_is_refused_naming_the_line(dataset, tmp_path):
    copy = tmp_path / "README.md"
    copy.write_text("# card\n\n- model: /gpfs/lab/models/sd15\n")
    with pytest.raises(MedisynError, match=r"README.md:3: names an absolute local path"):
        check_portable(copy, dataset)


def test_the_card_carries_the_models_licence_not_a_blanket_one(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "README.md").write_text(
        "---\nlicense: cc-by-nc-nd-4.0\nlicense_name: CC BY-NC-ND 4.0\n---\n# m\n"
    )
    record = {"source": str(model), "name": "my-model"}
    assert model_licence(record) == {"license": "cc-by-nc-nd-4.0", "license_name": "CC BY-NC-ND 4.0"}
    assert "**CC BY-NC-ND 4.0**" in licence_lines(record)[0]
    assert model_licence({"source": "hiesingerlab/MediSyn"})["license"] == "cc-by-nc-nd-4.0"
    assert "was not recorded" in licence_lines({"source": "someone/unknown-model"})[0]
    run = json.loads((Path(__file__).parent / "fixtures" / "run_for_card.json").read_text())
    run["model"] = record
    out = tmp_path / "ds"
    out.mkdir()
    card = write_run_card(out, run).read_text()
    assert card.startswith("---\nlicense: cc-by-nc-nd-4.0\nlicense_name: CC BY-NC-ND 4.0\n")


def test_portable_names_keep_hub_ids_and_drop_local_folders():
    assert portable("/home/me/models/sd15") == "sd15"
    assert portable("C:\\data\\derm.csv") == "derm.csv"
    assert portable("hiesingerlab/MediSyn") == "hiesingerlab/MediSyn"
    assert portable("./prompts/derm.csv") == "derm.csv"


def test_dry_run_lists_files_offline_and_publishing_without_network_or_token_is_one_line(
    dataset, monkeypatch
):
    runner = CliRunner()
    listed = runner.invoke(app, ["publish", str(dataset), "--repo", "lab/derm", "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert "parquet/part-00000.parquet" in listed.output and "nothing was sent" in listed.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = runner.invoke(app, ["publish", str(dataset), "--repo", "lab/derm"])
    assert offline.exit_code == 2 and "HF_HUB_OFFLINE" in offline.output
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(dataset.parent / "no-hf-home"))
    no_token = runner.invoke(app, ["publish", str(dataset), "--repo", "lab/derm"])
    assert no_token.exit_code == 2 and "no Hugging Face token" in no_token.output


def test_an_unfinished_run_is_not_published(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(MedisynError, match="not a finished medisyn dataset"):
        plan_upload(tmp_path / "half")
