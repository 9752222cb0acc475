"""`medisyn judge build` and `medisyn evaluate alignment`: Typer only (parse -> config -> medisyn_cli.judge -> print).

Registered in cli.py with `app.add_typer(judge_app, name="judge")`; importing this module also adds the
`alignment` command to the evaluate app.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.evaluate import evaluate_app
from medisyn_cli.cli.options import argument, option, progress_option
from medisyn_cli.core.progress import console
from medisyn_cli.judge.alignment import AlignmentConfig, run_alignment
from medisyn_cli.judge.build import JudgeConfig, build_judge

judge_app = typer.Typer(
    no_args_is_help=True,
    help="Label check: a classifier trained on real images that judges "
    "whether synthetic images show their class.",
)


@judge_app.command("build")
def build(
    real: list[Path] = argument(JudgeConfig, "real"),
    out: Path = option(JudgeConfig, "out", "--out"),
    classifier: str = option(JudgeConfig, "classifier", "--classifier"),
    embedder: str = option(JudgeConfig, "embedder", "--embedder"),
    holdout: float = option(JudgeConfig, "holdout", "--holdout"),
    k: int = option(JudgeConfig, "k", "--k"),
    steps: int = option(JudgeConfig, "steps", "--steps"),
    max_per_class: int | None = option(JudgeConfig, "max_per_class", "--max-per-class"),
    seed: int = option(JudgeConfig, "seed", "--seed"),
    overwrite: bool = option(JudgeConfig, "overwrite", "--overwrite"),
    progress: bool = progress_option(build_judge),
) -> None:
    """Train a label classifier on real labelled images; held-out accuracy and calibration go to judge.json."""
    with errors_as_exit_codes():
        meta = build_judge(
            JudgeConfig(
                real=tuple(map(str, real)),
                out=str(out),
                classifier=classifier,
                embedder=embedder,
                holdout=holdout,
                k=k,
                steps=steps,
                seed=seed,
                max_per_class=max_per_class,
                overwrite=overwrite,
            ),
            show_progress=progress,
        )
    console.print(
        f"judge: {meta['classifier']} on {meta['train']} images of {len(meta['classes'])} classes; "
        f"held-out accuracy {meta['heldout_accuracy']:.3f} (balanced {meta['heldout_balanced_accuracy']:.3f}, "
        f"{meta['heldout']} images), ECE {meta['calibration']['ece']:.3f} -> {out}",
        highlight=False,
    )
    for label, values in meta["per_class"].items():
        accuracy = "-" if values["accuracy"] is None else f"{values['accuracy']:.3f}"
        console.print(
            f"  {label}: held-out accuracy {accuracy} ({values['heldout']} images)", highlight=False
        )
    rates = ", ".join(f"{t}: {v:.2f}" for t, v in meta["label_score_pass_rate"].items())
    console.print(f"  real held-out images kept at --min-label-score {rates}", highlight=False)


@evaluate_app.command("alignment")
def alignment(
    synthetic: list[Path] = option(AlignmentConfig, "synthetic", "--synthetic"),
    judge: Path | None = option(AlignmentConfig, "judge", "--judge"),
    real_train: list[Path] = option(AlignmentConfig, "real_train", "--real-train", to_cli=list),
    min_label_score: float = option(AlignmentConfig, "min_label_score", "--min-label-score"),
    out: Path | None = option(AlignmentConfig, "out", "--out", "-o"),
    progress: bool = progress_option(run_alignment),
) -> None:
    """GAN-test accuracy: the share of synthetic images a classifier trained on real images recognises, per class."""
    with errors_as_exit_codes():
        result = run_alignment(
            AlignmentConfig(
                synthetic=tuple(map(str, synthetic)),
                judge=str(judge) if judge else None,
                real_train=tuple(map(str, real_train)),
                out=str(out) if out else None,
                min_label_score=min_label_score,
            ),
            show_progress=progress,
        )
    ceiling = result["ceiling_real_heldout_accuracy"]
    console.print(
        f"GAN-test accuracy {result['gan_test_accuracy']:.3f} on {result['images']} images (the judge's "
        f"accuracy on real held-out images, the ceiling: {ceiling:.3f}); recognised at "
        f"{result['min_label_score']:g}: {result['recognised_share']:.3f}",
        highlight=False,
    )
    for row in result["per_class"]:
        real = "-" if row["real_heldout_accuracy"] is None else f"{row['real_heldout_accuracy']:.3f}"
        console.print(
            f"  {row['label']}: {row['gan_test_accuracy']:.3f} of {row['images']} (real {real}), "
            f"mean score {row['mean_label_score']:.3f}",
            highlight=False,
        )
    console.print(f"-> {result['out']}/alignment.json", highlight=False)
