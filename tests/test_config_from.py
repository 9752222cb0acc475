"""The CLI fills each config from the options declared with its fields (cli/options.config_from), and the
foreign-folder refusal lives in one place (core/ownership.refuse_foreign)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.cli.options import argument, config_from, option
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.ownership import claim, refuse_foreign
from medisyn_cli.generate.config import GenerateConfig
from medisyn_cli.train.loop import TrainConfig


@dataclass(frozen=True)
class Demo:
    paths: tuple[str, ...] = field(metadata={"help": "Paths."})
    out: str | None = field(default=None, metadata={"help": "Out."})
    cache: bool = field(default=True, metadata={"help": "Cache."})
    level: int = field(default=1, metadata={"help": "Level."})
    kept: str = field(default="default", metadata={"help": "Not an option."})


def demo(
    paths: list[Path] = argument(Demo, "paths"),
    out: Path | None = option(Demo, "out", "--out"),
    prompt_cache: bool = option(Demo, "cache", "--cache/--no-cache"),
    level: str = option(Demo, "level", "--level", to_cli=str),
    progress: bool = typer.Option(True, "--progress"),
) -> Demo:
    return config_from(demo, Demo, locals(), level=int(level))


def test_config_from_fills_fields_by_the_option_they_were_declared_from():
    assert demo([Path("a"), Path("b")], Path("o"), False, "3", True) == Demo(("a", "b"), "o", False, 3)
    assert demo([], None, True, "1", False) == Demo((), None, True, 1, "default")


class Captured(BaseException):
    """Raised by a fake run_* with the config it was given (a BaseException passes errors_as_exit_codes)."""


def _captured(monkeypatch, module: str, name: str, args: list[str]):
    def fake(config, **_):
        raise Captured(config)

    monkeypatch.setattr(f"medisyn_cli.cli.{module}.{name}", fake)
    with pytest.raises(Captured) as captured:
        CliRunner().invoke(app, args)
    return captured.value.args[0]


def test_generate_options_reach_generate_config(monkeypatch, tmp_path):
    manifest = str(tmp_path / "m.csv")
    args = ["generate", "-m", manifest, "--n", "5", "--no-prompt-cache", "--lora", "a", "--lora", "b"]
    args += ["--index", "idx", "--format", "parquet", "--check", "label", "--out", "o", "--steps", "3"]
    config = _captured(monkeypatch, "generate", "run_generate", args)
    assert config == GenerateConfig(
        manifest=manifest,
        n=5,
        out="o",
        cache_prompts=False,
        loras=("a", "b"),
        index="idx",
        formats=("parquet",),
        checks=("label",),
        steps=3,
    )


def test_train_options_reach_train_config(monkeypatch):
    args = ["train", "d1", "d2", "--out", "m", "--validation-prompts", "v.txt", "--freeze-text-encoder"]
    config = _captured(monkeypatch, "train", "run_train", args + ["--lora", "4"])
    assert config == TrainConfig(
        data=("d1", "d2"), out="m", validation_prompts="v.txt", train_text_encoder=False, lora=4
    )


def test_refuse_foreign_refuses_a_file_and_a_folder_medisyn_did_not_make(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MedisynError, match="was not made by medisyn judge build"):
        refuse_foreign(tmp_path / "user", "judge build")
    with pytest.raises(MedisynError, match="exists and is not a folder"):
        refuse_foreign(tmp_path / "afile", "study build")
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine"


def test_refuse_foreign_accepts_new_empty_ours_and_older_medisyn_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "judge.json").write_text("{}")
    refuse_foreign(tmp_path / "missing", "judge build")
    refuse_foreign(tmp_path / "empty", "judge build")
    refuse_foreign(tmp_path / "old", "judge build", lambda folder: {"judge.json"})
    with claim(tmp_path / "ours", "judge build") as owner:
        owner.write_text("judge.json", "{}")
    refuse_foreign(tmp_path / "ours", "judge build")
