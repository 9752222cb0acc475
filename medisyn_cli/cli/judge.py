"""`medisyn judge build` and `medisyn evaluate alignment`: Typer only (parse -> config -> medisyn_cli.judge -> print).

Registered in cli.py with `app.add_typer(judge_app, name="judge")`; importing this module also adds the
`alignment` command to the evaluate app.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.evaluate import evaluate_app
from medisyn_cli.cli.options import (
    VocabularyGroup,
    argument,
    config_from,
    json_option,
    option,
    progress_option,
)
from medisyn_cli.cli.tables import Tables, column, number
from medisyn_cli.core.progress import console
from medisyn_cli.judge.alignment import AlignmentConfig, run_alignment
from medisyn_cli.judge.build import JudgeConfig, build_judge

judge_app = typer.Typer(
    cls=VocabularyGroup,
    no_args_is_help=True,
    help="Label check: a classifier trained on real images that judges "
    "whether synthetic images show their class.",
)


@judge_app.command("build")
def build(
    real: list[Path] = argument(JudgeConfig, "real"),
    out: Path = option(JudgeConfig, "out", "--out", "-o"),
    classifier: str = option(JudgeConfig, "classifier", "--classifier"),
    embedder: str = option(JudgeConfig, "embedder", "--embedder"),
    holdout: float = option(JudgeConfig, "holdout", "--holdout"),
    k: int = option(JudgeConfig, "k", "--k"),
    steps: int = option(JudgeConfig, "steps", "--steps"),
    max_per_class: int | None = option(JudgeConfig, "max_per_class", "--max-per-class"),
    seed: int = option(JudgeConfig, "seed", "--seed"),
    overwrite: bool = option(JudgeConfig, "overwrite", "--overwrite"),
    progress: bool = progress_option(build_judge),
    json_path: str | None = json_option(),
) -> None:
    """Train a label classifier on real labelled images; held-out accuracy and calibration go to OUT/judge.json.

    --json adds the per-class table.

    Example: medisyn judge build ../shared/data/isic2017_dermoscopy --out derm-judge
    """
    with errors_as_exit_codes():
        meta = build_judge(
            config_from(build, JudgeConfig, locals()),
            show_progress=progress,
        )
    console.print(
        f"judge: {meta['classifier']} on {meta['train']} images of {len(meta['classes'])} classes; "
        f"held-out accuracy {meta['heldout_accuracy']:.3f} (balanced {meta['heldout_balanced_accuracy']:.3f}, "
        f"{meta['heldout']} images), ECE {meta['calibration']['ece']:.3f} -> {out}",
        highlight=False,
    )
    with Tables("judge build", json_path) as tables:
        tables.values.update(
            {
                k: meta[k]
                for k in ("classifier", "train", "heldout", "heldout_accuracy", "heldout_balanced_accuracy")
            },
            ece=meta["calibration"]["ece"],
            label_score_pass_rate=meta["label_score_pass_rate"],
        )
        tables.show(
            "per_class",
            "judge: per class, on real held-out images",
            [
                column("class"),
                column("held-out accuracy", "accuracy", number(3)),
                column("images", "heldout"),
            ],
            [{"class": label, **values} for label, values in meta["per_class"].items()],
        )
    rates = ", ".join(f"{t}: {v:.2f}" for t, v in meta["label_score_pass_rate"].items())
    console.print(f"real held-out images kept at --min-label-score {rates}", highlight=False)


@evaluate_app.command("alignment")
def alignment(
    synthetic: list[Path] = option(AlignmentConfig, "synthetic", "--synthetic"),
    judge: Path | None = option(AlignmentConfig, "judge", "--judge"),
    real_train: list[Path] = option(AlignmentConfig, "real_train", "--real-train", to_cli=list),
    min_label_score: float = option(AlignmentConfig, "min_label_score", "--min-label-score"),
    out: Path | None = option(AlignmentConfig, "out", "--out", "-o"),
    progress: bool = progress_option(run_alignment),
    json_path: str | None = json_option(),
) -> None:
    """GAN-test accuracy: the share of synthetic images a classifier trained on real images recognises, per class.

    Writes OUT/alignment.json (every number) and alignment.csv; --json adds the per-class table.

    Example: medisyn evaluate alignment --synthetic derm-synth --real-train ../shared/data/isic2017_dermoscopy
    """
    with errors_as_exit_codes():
        result = run_alignment(
            config_from(alignment, AlignmentConfig, locals()),
            show_progress=progress,
        )
    ceiling = result["ceiling_real_heldout_accuracy"]
    console.print(
        f"GAN-test accuracy {result['gan_test_accuracy']:.3f} on {result['images']} images (the judge's "
        f"accuracy on real held-out images, the ceiling: {ceiling:.3f}); recognised at "
        f"{result['min_label_score']:g}: {result['recognised_share']:.3f}",
        highlight=False,
    )
    with Tables("evaluate alignment", json_path) as tables:
        tables.values.update(
            {k: result[k] for k in ("gan_test_accuracy", "images", "min_label_score", "recognised_share")},
            ceiling_real_heldout_accuracy=ceiling,
        )
        tables.show(
            "per_class",
            "alignment: per class",
            [
                column("class", "label"),
                column("images"),
                column("GAN-test accuracy", "gan_test_accuracy", number(3)),
                column("real held-out accuracy", "real_heldout_accuracy", number(3)),
                column("mean label score", "mean_label_score", number(3)),
            ],
            result["per_class"],
        )
    console.print(f"-> {result['out']}/alignment.json", highlight=False)
