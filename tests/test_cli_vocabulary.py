"""One vocabulary on the command line (#28): `--out`/`-o` where a command writes, one naming scheme for real
data, the old names as hidden aliases that print one deprecation line, and `--json` with the printed numbers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from medisyn_cli.cli.main import app
from medisyn_cli.cli.options import DEPRECATED, deprecation_line, removal_release, rename_deprecated

FIXTURES = Path(__file__).parent / "fixtures"
OLD_NAMES = {old for aliases in DEPRECATED.values() for old in aliases}

# command -> what it writes into --out/-o
WRITES = {
    "generate": "the dataset",
    "train": "the model or adapter",
    "screen": "screen.parquet/.csv/.json, report.html",
    "report": "report.html, report.json",
    "index build": "the index",
    "provenance": "provenance.csv",
    "evaluate utility": "utility.json/.csv/.png",
    "evaluate privacy": "privacy.json/.csv, figures",
    "evaluate leakage": "leakage.json/.csv/_pairs.png",
    "evaluate fidelity": "fidelity.json/.csv",
    "evaluate alignment": "alignment.json/.csv",
    "judge build": "the judge",
    "study build": "the study site and key",
    "study score": "score.json/.html, CSV tables",
}
# commands without --out, and why
NO_OUT = {
    "merge": "consolidates the run folder it is given",
    "index merge": "builds the index in the sharded folder it is given",
    "study serve": "answers go under STUDY/answers",
    "publish": "uploads to --repo",
}
# the real-data options of each command: --real-train, --real-heldout, --real-test or --real
REAL = {
    "evaluate utility": {"--real-train", "--real-test"},
    "evaluate privacy": {"--real-train", "--real-heldout"},
    "evaluate leakage": {"--real-train", "--real-test"},
    "evaluate fidelity": {"--real"},
    "evaluate alignment": {"--real-train"},
    "study build": {"--real"},
    "report": {"--real"},
}
NO_TABLE = {
    "study build": "prints the study's design in two lines",
    "study serve": "serves until stopped",
    "report": "prints the page's path; report.json holds every number",
}


def _commands() -> dict[str, object]:
    found = {}

    def walk(command, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, path + (name,))
        else:
            found[" ".join(path)] = command

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = _commands()


def _options(command) -> set[str]:
    return {name for param in command.params for name in param.opts if name.startswith("-")}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def deprecations(text: str) -> list[str]:
    return [line for line in text.splitlines() if "is deprecated, use" in line]


def printed_rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in `text`, as lists of cell texts."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if "│" in line
    ]


# --- --out/-o and the names of real data ------------------------------------------------------------------------


def test_every_command_says_where_it_writes():
    assert set(COMMANDS) == set(WRITES) | set(NO_OUT)


@pytest.mark.parametrize("path", sorted(WRITES))
def test_help_shows_out_and_o_where_a_command_writes(path):
    command = COMMANDS[path]
    out = [param for param in command.params if "--out" in param.opts]
    assert out and "-o" in out[0].opts, f"medisyn {path}: --out/-o"
    result = CliRunner().invoke(app, [*path.split(), "--help"])
    assert result.exit_code == 0 and "--out" in result.output and "-o" in result.output.split()


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_real_data_is_named_one_way_and_old_names_are_hidden(path):
    options = _options(COMMANDS[path])
    assert {name for name in options if name.startswith("--real")} == REAL.get(path, set())
    assert not options & OLD_NAMES, f"medisyn {path} still shows an old name"
    result = CliRunner().invoke(app, [*path.split(), "--help"])
    assert not {word.strip(",") for word in result.output.split()} & OLD_NAMES


@pytest.mark.parametrize("path", sorted(set(COMMANDS) - set(NO_TABLE)))
def test_every_command_with_a_table_has_json(path):
    assert "--json" in _options(COMMANDS[path])


def _help_to_file(path: str, tmp_path: Path) -> str:
    log = tmp_path / f"help-{path.replace(' ', '-')}.txt"
    with log.open("w") as handle:
        done = subprocess.run(
            ["medisyn", *path.split(), "--help"], stdout=handle, stderr=subprocess.STDOUT, timeout=120
        )
    assert done.returncode == 0
    return log.read_text()


@pytest.mark.parametrize("path", ["screen", "report"])
def test_installed_help_redirected_to_a_file_shows_out_and_o(path, tmp_path):
    text = _help_to_file(path, tmp_path)
    assert "--out" in text and "-o" in text.split() and "--report" not in text
    assert ("--json" in text) == (path not in NO_TABLE)


@pytest.mark.slow
def test_installed_help_of_every_writing_command_shows_out_and_o(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted(WRITES)
    with ThreadPoolExecutor(2) as pool:  # each process is CPU-bound importing medisyn: one per core
        texts = list(pool.map(lambda path: _help_to_file(path, tmp_path), paths))
    for path, text in zip(paths, texts):
        assert "--out" in text and "-o" in text.split(), f"medisyn {path} --help > file"
        for name in REAL.get(path, ()):
            assert name in text, f"medisyn {path} --help lost {name}"


# --- old names: hidden aliases with one deprecation line -----------------------------------------------------------


def test_rename_deprecated_renames_only_option_names_this_command_knows(capsys):
    privacy = COMMANDS["evaluate privacy"]
    args = [
        "--train",
        "a",
        "--train=b",
        "--heldout",
        "c",
        "--out",
        "--train",
        "--synthetic",
        "s",
        "--",
        "--train",
    ]
    assert rename_deprecated(privacy, args, DEPRECATED["evaluate privacy"]) == [
        "--real-train", "a", "--real-train=b", "--real-heldout", "c", "--out", "--train", "--synthetic", "s", "--",
        "--train",
    ]  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        deprecation_line("--train", "--real-train"),
        deprecation_line("--heldout", "--real-heldout"),
    ]
    generate = COMMANDS["generate"]  # an alias whose new name the command lacks is left alone
    assert rename_deprecated(generate, ["--train", "x"], DEPRECATED["evaluate privacy"]) == ["--train", "x"]


def test_old_names_exist_only_where_they_were():
    assert {path: set(aliases) for path, aliases in DEPRECATED.items()} == {
        "screen": {"--report"},
        "evaluate privacy": {"--train", "--heldout"},
        "evaluate leakage": {"--train", "--test"},
    }
    for path, aliases in DEPRECATED.items():
        assert set(aliases.values()) <= _options(COMMANDS[path])


def test_the_deprecation_line_names_the_new_option_and_the_release():
    assert removal_release("0.1.0") == "0.2" and removal_release("1.9.3") == "1.10"
    assert deprecation_line("--report", "--out") == (
        f"medisyn: --report is deprecated, use --out (it will be removed in {removal_release()})"
    )


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vocabulary") / "index"
    result = invoke("index", "build", FIXTURES / "images", "-o", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


def test_screen_report_still_works_with_one_deprecation_line(index, tmp_path):
    old = invoke(
        "screen", FIXTURES / "screen", "--index", index, "--report", tmp_path / "old", "--no-progress"
    )
    new = invoke("screen", FIXTURES / "screen", "--index", index, "-o", tmp_path / "new", "--no-progress")
    assert old.exit_code == new.exit_code == 0, old.output
    assert deprecations(old.stderr) == [deprecation_line("--report", "--out")] and not deprecations(
        new.output
    )
    assert (tmp_path / "old" / "report.html").exists() and (tmp_path / "new" / "report.html").exists()
    assert old.stdout == new.stdout.replace(str(tmp_path / "new"), str(tmp_path / "old"))


def _evaluate(command: str, options: dict[str, Path], out: Path):
    args = [a for name, value in options.items() for a in (name, value)]
    return invoke("evaluate", command, *args, "--pairs", "2", "--out", out, "--no-progress")


SETS = {"train": FIXTURES / "images", "other": FIXTURES / "screen"}
ALIASES = [  # (command, {new option: set}, old name)
    ("privacy", {"--real-train": "train", "--real-heldout": "other", "--synthetic": "other"}, "--train"),
    ("privacy", {"--real-train": "train", "--real-heldout": "other", "--synthetic": "other"}, "--heldout"),
    ("leakage", {"--real-train": "train", "--real-test": "other"}, "--train"),
    ("leakage", {"--real-train": "train", "--real-test": "other"}, "--test"),
]


@pytest.mark.parametrize("command, options, old", ALIASES, ids=[f"{c} {o}" for c, _, o in ALIASES])
def test_old_real_data_names_still_work_with_one_deprecation_line(command, options, old, tmp_path):
    new = DEPRECATED[f"evaluate {command}"][old]
    sets = {name: SETS[key] for name, key in options.items()}
    reference = _evaluate(command, sets, tmp_path / "new")
    renamed = {(old if name == new else name): value for name, value in sets.items()}
    result = _evaluate(command, renamed, tmp_path / "old")
    assert reference.exit_code == result.exit_code == 0, result.output
    assert deprecations(result.stderr) == [deprecation_line(old, new)] and not deprecations(reference.output)
    same = json.loads((tmp_path / "new" / f"{command}.json").read_text())
    got = json.loads((tmp_path / "old" / f"{command}.json").read_text())
    assert got["images"] == same["images"] and got.get("per_class") == same.get("per_class")


@pytest.mark.parametrize(
    "args",
    [
        ["screen", FIXTURES / "screen", "--index", "x", "--bogus"],
        ["evaluate", "privacy", "--real-trian", "x"],
        ["generate", "--train", "x"],  # an old name where the new one does not exist either
        ["evaluate", "fidelity", "--report", "x"],  # --report is screen's old name only
        ["evaluate", "utility", "--train", "x"],
    ],
)
def test_an_unknown_option_still_fails_with_exit_2(args):
    result = invoke(*args)
    assert result.exit_code == 2 and "No such option" in result.output and not deprecations(result.output)


# --- report --out ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict, str]:
    """A two-image run of the bundled model (1 step), its --json and what it printed."""
    root = tmp_path_factory.mktemp("generated")
    manifest = root / "m.csv"
    manifest.write_text(
        "label,prompt\nmelanoma,dermoscopy image of melanoma\nnevus,dermoscopy image of nevus\n"
    )
    result = invoke(
        "generate", "-m", manifest, "--n", "2", "--steps", "1", "-o", root / "out", "--json", root / "g.json",
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "out", json.loads((root / "g.json").read_text()), result.stdout


def test_report_writes_into_out_and_leaves_the_dataset_alone(generated, tmp_path):
    dataset = generated[0]
    before = sorted(p.name for p in dataset.iterdir())
    result = invoke("report", dataset, "-o", tmp_path / "report", "--no-progress")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"report.html", "report.json"}
    assert sorted(p.name for p in dataset.iterdir()) == before
    assert json.loads((tmp_path / "report" / "report.json").read_text())["folder"] == str(dataset)


# --- --json --------------------------------------------------------------------------------------------------


def test_generate_json_holds_the_printed_counts(generated):
    dataset, data, printed = generated
    rows = data["tables"]["classes"]["rows"]
    assert data["command"] == "generate" and [r["label"] for r in rows] == ["melanoma", "nevus"]
    shown = {cells[0]: cells[1:] for cells in printed_rows(printed)}
    for row in rows:
        assert shown[row["label"]] == [str(row["planned"]), str(row["written"]), str(row["regenerated"])]
    run = json.loads((dataset / "run.json").read_text())
    assert {r["label"]: r["written"] for r in rows} == {k: v["written"] for k, v in run["classes"].items()}


def test_screen_json_to_stdout_is_the_printed_table(index, tmp_path):
    result = invoke(
        "screen", FIXTURES / "screen", "--index", index, "-o", tmp_path / "s", "--json", "-", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout holds the JSON alone; the table went to stderr
    rows = data["tables"]["screen"]["rows"]
    assert [[r["label"], str(r["screened"]), str(r["near_copies"])] for r in rows] == printed_rows(
        result.stderr
    )
    audit = json.loads((tmp_path / "s" / "screen.json").read_text())
    assert rows[-1] == {"label": "all", "screened": audit["screened"], "near_copies": audit["near_copies"]}
    assert data["values"]["threshold"] == audit["threshold"]


def test_index_build_json_holds_the_printed_numbers(tmp_path):
    path = tmp_path / "deep" / "index.json"  # its folder is created
    result = invoke(
        "index", "build", FIXTURES / "images", "-o", tmp_path / "i", "--json", path, "--no-progress"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    index, spread = (
        data["tables"]["index"]["rows"][0],
        data["tables"]["nearest_neighbour_similarity"]["rows"][0],
    )
    printed = printed_rows(result.stdout)
    assert printed[0][:4] == [str(index["images"]), str(index["skipped"]), index["embedder"], index["index"]]
    assert float(printed[0][5]) == index["threshold"]
    keys = ["p1", "p5", "p50", "p95", "p99", "p100"]
    assert [float(cell) for cell in printed[1][:6]] == pytest.approx([spread[k] for k in keys], abs=5e-4)
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert index["images"] == meta["count"] and index["threshold"] == meta["threshold"]


def test_evaluate_leakage_json_holds_the_printed_numbers(tmp_path):
    path = tmp_path / "leakage-table.json"
    result = _evaluate(
        "leakage", {"--real-train": SETS["train"], "--real-test": SETS["other"]}, tmp_path / "o"
    )
    again = invoke(
        "evaluate", "leakage", "--real-train", SETS["train"], "--real-test", SETS["other"], "-o", tmp_path / "o2",
        "--json", path, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == again.exit_code == 0, again.output
    rows = json.loads(path.read_text())["tables"]["leakage"]["rows"]
    printed = printed_rows(again.stdout)
    assert [[r["class"], str(r["images"]), str(r["near_copies"])] for r in rows] == [p[:3] for p in printed]
    assert [float(p[3].rstrip("%")) / 100 for p in printed] == pytest.approx(
        [r["share"] for r in rows], abs=5e-4
    )
    written = json.loads((tmp_path / "o2" / "leakage.json").read_text())
    assert {r["class"]: r["near_copies"] for r in rows[:-1]} == {
        label: row["near_copies"] for label, row in written["per_class"].items()
    }
    assert rows[-1]["near_copies"] == written["count"]


def test_json_into_a_folder_is_refused_with_exit_2(index, tmp_path):
    result = invoke("screen", FIXTURES / "screen", "--index", index, "-o", tmp_path / "s", "--json", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output
    assert not (tmp_path / "s").exists()


def test_no_json_is_written_when_the_command_fails(tmp_path):
    path = tmp_path / "t.json"
    result = invoke("screen", FIXTURES / "screen", "--index", tmp_path / "missing", "--json", path)
    assert result.exit_code == 2 and not path.exists()


def test_installed_medisyn_json_to_a_file_without_a_terminal(index, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "log.txt").open("w") as log:
        done = subprocess.run(
            ["medisyn", "screen", FIXTURES / "screen", "--index", index, "-o", tmp_path / "s", "--json",
             tmp_path / "t.json"],
            stdout=log, stderr=subprocess.STDOUT, env=env, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, (tmp_path / "log.txt").read_text()
    rows = json.loads((tmp_path / "t.json").read_text())["tables"]["screen"]["rows"]
    shown = printed_rows((tmp_path / "log.txt").read_text())
    assert [[r["label"], str(r["screened"]), str(r["near_copies"])] for r in rows] == shown
