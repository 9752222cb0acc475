"""`medisyn study build|serve|score`: blinded reader studies of real vs synthetic images.

Registered in cli.py with `app.add_typer(study_app, name="study")`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import (
    VocabularyGroup,
    argument,
    comma_list,
    config_from,
    json_option,
    option,
    progress_option,
)
from medisyn_cli.cli.tables import Column, Tables, column
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.progress import results
from medisyn_cli.study import StudyConfig, build_study, make_server, score_study
from medisyn_cli.study.design import parse_mix

study_app = typer.Typer(
    cls=VocabularyGroup,
    no_args_is_help=True,
    help="Blinded reader studies: can readers tell real from synthetic images, and classify both?",
)


def labels_option(labels: tuple[str, ...]) -> str | None:
    """StudyConfig.labels as --labels says it: comma-separated, None for every class."""
    return ",".join(labels) or None


@study_app.command("build")
def build(
    real: list[Path] = option(StudyConfig, "real", "--real"),
    synthetic: list[Path] = option(StudyConfig, "synthetic", "--synthetic"),
    out: Path = option(StudyConfig, "out", "--out", "-o"),
    pairs: int = option(StudyConfig, "pairs", "--pairs"),
    classify: int | None = option(StudyConfig, "classify", "--classify"),
    labels: str | None = option(StudyConfig, "labels", "--labels", to_cli=labels_option),
    pair_mix: str = option(StudyConfig, "mix", "--pair-mix", to_cli=comma_list),
    seed: int = option(StudyConfig, "seed", "--seed"),
    title: str = option(StudyConfig, "title", "--title"),
    size: int | None = option(StudyConfig, "size", "--size"),
    overwrite: bool = option(StudyConfig, "overwrite", "--overwrite"),
    progress: bool = progress_option(build_study),
) -> None:
    """Draw a blinded, seeded study design and write its static reader page and answer key.

    Example: medisyn study build --real ../shared/data/isic2017_dermoscopy --synthetic derm-synth --out derm-study
    """
    with errors_as_exit_codes():
        config = config_from(
            build,
            StudyConfig,
            locals(),
            labels=tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else (),
            mix=parse_mix(pair_mix),
        )
        key = build_study(config, show_progress=progress)
    design = key["design"]
    results.print(
        f"study {key['study_id']}: {design['pairs']} pairs, {design['classify']} classification items, "
        f"classes {', '.join(key['classes']) or '(unlabelled)'}; images {design['image_size']} px "
        f"{design['image_mode']}",
        highlight=False,
    )
    results.print(
        f"open {out / 'site' / 'index.html'} (or `medisyn study serve {out}`); answer key: "
        f"{out / 'key.json'} (keep it away from readers)",
        highlight=False,
    )


@study_app.command("serve")
def serve(
    study: Path = argument(make_server, "study", help="Study folder written by `medisyn study build`."),
    port: int = option(make_server, "port", "--port", help="Port (0: any free one)."),
    host: str = option(
        make_server,
        "host",
        "--host",
        help="Address to listen on (0.0.0.0 to reach it from a tablet on the same network).",
    ),
) -> None:
    """Serve the reader page on this machine and save submitted answers under STUDY/answers/.

    Example: medisyn study serve derm-study --port 8000
    """
    with errors_as_exit_codes():
        server = make_server(study, host, port)
    address, bound = server.server_address[:2]
    results.print(
        f"serving {study / 'site'} at http://{address}:{bound}/ ; answers go to {study / 'answers'} "
        "(Ctrl-C stops)",
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@study_app.command("score")
def score(
    study: Path = argument(score_study, "study", help="Study folder written by `medisyn study build`."),
    answers: list[Path] = option(
        score_study, "answers", "--answers", help="Answer files (.json) or folders holding them."
    ),
    out: Path | None = option(
        score_study, "out", "--out", "-o", help="Folder for the results (default STUDY/score)."
    ),
    years_bins: str = option(
        score_study, "bins", "--years-bins", to_cli=comma_list, help="Experience groups' edges in years."
    ),
    seed: int = option(score_study, "seed", "--seed", help="Seed of the bootstrap over readers."),
    json_path: str | None = json_option(),
) -> None:
    """Score readers: detection accuracy, sensitivity, specificity, classification, agreement, experience groups.

    Writes OUT/score.json (every number), score.html and CSV tables; --json adds the readers' table.

    Example: medisyn study score derm-study --answers derm-study/answers
    """
    with errors_as_exit_codes():
        try:
            bins = tuple(int(x) for x in years_bins.split(",") if x.strip())
        except ValueError as exc:
            raise MedisynError(f"--years-bins {years_bins!r}: expected whole years such as 5,10") from exc
        result, written = score_study(study, list(answers), out, bins, seed)
    with Tables("study score", json_path) as tables:
        _print_score(tables, result)
        for problem in result["problems"]:
            results.print(f"[yellow]left out:[/yellow] {problem}", highlight=False, soft_wrap=True)
        folder = written["score.html"].parent
        results.print(
            f"written: {folder}/score.html, score.json, readers.csv, classes.csv, groups.csv", highlight=False
        )


METRICS = {  # header -> the metric of score.json it shows (value [95% CI])
    "accuracy": "detection_accuracy",
    "sensitivity": "detection_sensitivity",
    "specificity": "detection_specificity",
    "pairs exact": "pair_accuracy",
    "classify real": "classify_real",
    "classify synthetic": "classify_synthetic",
}


def _print_score(tables: Tables, result: dict) -> None:
    rows = [
        {
            "reader": row["reader"],
            "answered": row["answered"],
            "items": row["items"],
            "p_value": row["beats_chance"]["p_value"],
            **{key: row["metrics"][key] for key in METRICS.values()},
        }
        for row in result["readers"] + [result["pooled"]]
    ]
    metric = {header: column(header, key, _cell) for header, key in METRICS.items()}
    tables.values["chance"] = result["chance"]
    tables.show(
        "readers",
        f"study {result['study_id']}: spotting synthetic images (chance {result['chance']:.2f})",
        [
            column("reader"),
            Column("answered", ("answered", "items"), lambda r: f"{r['answered']}/{r['items']}"),
            *(metric[h] for h in ("accuracy", "sensitivity", "specificity", "pairs exact")),
            column("p > chance", "p_value", lambda p: "-" if p is None or p != p else f"{p:.2g}"),
            metric["classify real"],
            metric["classify synthetic"],
        ],
        rows,
    )


def _cell(value: dict) -> str:
    return "-" if not value["n"] else f"{value['value']:.2f} [{value['low']:.2f}-{value['high']:.2f}]"
