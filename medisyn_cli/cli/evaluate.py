"""`medisyn evaluate utility|privacy|leakage|fidelity` and `medisyn report`: parse options, call the API, print a summary.

Registered in cli.py with `app.add_typer(evaluate_app, name="evaluate")` and `app.command("report")(report_command)`.
Results go to --out (default: SYNTHETIC/evaluate for a medisyn output folder, else ./evaluate) as JSON, CSV and
PNG; `medisyn report` shows every evaluate JSON it finds under OUT/evaluate/.
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
from medisyn_cli.cli.tables import Column, Tables, column, number, percent
from medisyn_cli.core.progress import results
from medisyn_cli.core.results import default_out
from medisyn_cli.evaluate.fidelity import NOT_COMPARABLE, FidelityConfig, run_fidelity
from medisyn_cli.evaluate.leakage import LeakageConfig, run_leakage
from medisyn_cli.evaluate.privacy import PrivacyConfig, run_privacy
from medisyn_cli.evaluate.report import write_report
from medisyn_cli.evaluate.utility import UtilityConfig, parse_fractions, run_utility

evaluate_app = typer.Typer(
    cls=VocabularyGroup,
    no_args_is_help=True,
    help="Evaluate a synthetic dataset: downstream utility, privacy (memorisation) and fidelity / diversity.",
)
SETS_HELP = (
    "image folder (labels from folder names), ImageFolder with metadata.csv, Parquet, or medisyn output"
)


def _strs(paths: list[Path]) -> tuple[str, ...]:
    return tuple(str(p) for p in paths)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


@evaluate_app.command("utility")
def utility(
    real_train: list[Path] = option(UtilityConfig, "real_train", "--real-train"),
    real_test: list[Path] = option(UtilityConfig, "real_test", "--real-test"),
    synthetic: list[Path] = option(UtilityConfig, "synthetic", "--synthetic"),
    fractions: str = option(UtilityConfig, "fractions", "--fractions", to_cli=comma_list),
    arch: str = option(UtilityConfig, "arch", "--classifier", "--arch"),
    weights: Path | None = option(UtilityConfig, "weights", "--weights"),
    seeds: int = option(UtilityConfig, "seeds", "--seeds"),
    epochs: int = option(UtilityConfig, "epochs", "--epochs"),
    budget: str = option(UtilityConfig, "budget", "--budget"),
    steps: int | None = option(UtilityConfig, "steps", "--steps"),
    bootstrap: int = option(UtilityConfig, "bootstrap", "--bootstrap"),
    size: int | None = option(UtilityConfig, "size", "--size"),
    batch_size: int = option(UtilityConfig, "batch_size", "--batch-size"),
    multi_label: bool = option(UtilityConfig, "multi_label", "--multi-label"),
    device: str = option(UtilityConfig, "device", "--device"),
    out: Path | None = option(UtilityConfig, "out", "--out", "-o"),
    progress: bool = progress_option(run_utility),
    json_path: str | None = json_option(),
) -> None:
    """Train a classifier on real, synthetic and real + synthetic images; macro AUROC on real test images.

    Writes OUT/utility.json (every number), utility.csv and utility.png; --json adds the summary table.

    Example: medisyn evaluate utility --real-train real/train --real-test real/test --synthetic derm-synth --seeds 3
    """
    with errors_as_exit_codes():
        config = config_from(utility, UtilityConfig, locals(), fractions=parse_fractions(fractions))
        result = run_utility(config, show_progress=progress)
    with Tables("evaluate utility", json_path) as tables:
        tables.show(
            "utility",
            f"utility: macro AUROC on {result['images']['test']} real test images "
            f"({result['classifier']['arch']}, {result['seeds']} seeds, {result['seconds']:.0f} s)",
            [
                column("condition"),
                column("frac", "real_fraction", lambda v: "-" if v is None else f"{v:g}"),
                column("real", "real_images"),
                column("synth", "synthetic_images"),
                column("steps"),
                Column(
                    "AUROC ± std",
                    ("auroc_mean", "auroc_std"),
                    lambda r: f"{_fmt(r['auroc_mean'])} ± {_fmt(r['auroc_std'])}",
                ),
                Column("95% CI", ("auroc_ci95",), lambda r: "-".join(_fmt(v) for v in r["auroc_ci95"])),
            ],
            result["rows"],
            caption=f"budget: {result['budget']['text']}",
            no_wrap=True,
        )
        results.print(
            f"written: {_out_of(config, result)}/utility.json, utility.csv, utility.png", highlight=False
        )


@evaluate_app.command("privacy")
def privacy(
    train: list[Path] = option(PrivacyConfig, "train", "--real-train"),
    heldout: list[Path] = option(PrivacyConfig, "heldout", "--real-heldout"),
    synthetic: list[Path] = option(PrivacyConfig, "synthetic", "--synthetic"),
    embedder: str = option(PrivacyConfig, "embedder", "--embedder"),
    threshold: float | None = option(PrivacyConfig, "threshold", "--threshold"),
    views: bool = option(PrivacyConfig, "views", "--views/--no-views"),
    pairs: int = option(PrivacyConfig, "pairs", "--pairs"),
    batch_size: int = option(PrivacyConfig, "batch_size", "--batch-size"),
    out: Path | None = option(PrivacyConfig, "out", "--out", "-o"),
    train_reference: int = option(PrivacyConfig, "train_reference", "--train-reference"),
    progress: bool = progress_option(run_privacy),
    json_path: str | None = json_option(),
) -> None:
    """Are synthetic images closer to training images than unseen real images are? (distance to closest record)

    Writes OUT/privacy.json (every number, the verdict), privacy.csv and figures; --json adds the summary table.

    Example: medisyn evaluate privacy --real-train data/train --real-heldout data/heldout --synthetic derm-synth
    """
    with errors_as_exit_codes():
        config = config_from(privacy, PrivacyConfig, locals())
        result = run_privacy(config, show_progress=progress)
    with Tables("evaluate privacy", json_path) as tables:
        _print_privacy(tables, config, result)


def _print_privacy(tables: Tables, config: PrivacyConfig, result: dict) -> None:
    tables.values.update(
        memorises=result["memorises"], verdict=result["verdict"], threshold=result["threshold"]
    )
    tables.show(
        "privacy",
        f"privacy: similarity to the nearest training image ({result['embedder']}, "
        f"{result['images']['train']} training images)",
        [column("set"), column("images")]
        + [
            column(header, key, number(3))
            for header, key in (("p5", "p5"), ("median", "p50"), ("p95", "p95"), ("p99", "p99"))
        ]
        + [column(f"near-copies (>= {result['threshold']:g})", "near_copy_rate", percent)],
        [
            {
                "set": name,
                "images": result["images"][name],
                **{k: result["percentiles"][name][k] for k in ("p5", "p50", "p95", "p99")},
                "near_copy_rate": result["near_copy_rate"][name],
            }
            for name in ("heldout", "synthetic")
        ],
    )
    leaks, copies, reference = (
        result["heldout_near_copies"],
        result["synthetic_near_copies"],
        result["reference"],
    )
    results.print(
        f"held-out near-copies of training images (natural duplicates, kept in the reference): {leaks['count']} "
        f"({leaks['share']:.1%}); reference: {reference['source']}, {result['reference_images']} images",
        highlight=False,
    )
    for warning in result.get("warnings", []):
        style = "bold red" if warning == copies["warning"] else "yellow"  # synthetic near-copies: a finding
        results.print(f"[{style}]warning: {warning}[/{style}]", highlight=False)
    p = result["p_values"]
    results.print(
        f"synthetic above the held-out 95th percentile: {result['share_above_heldout_p95']:.1%} "
        f"(expected 5%, p {p['tail_p95']:.3g}); near-copies p {p['near_copies']:.3g}; distribution "
        f"(Mann-Whitney) p {p['distribution']:.3g}; levels: "
        + ", ".join(f"{k} {v:.3g}" for k, v in result["test_levels"].items()),
        highlight=False,
    )
    power, audit = result["power"], result.get("membership_audit")
    results.print(
        f"power to flag {power['copy_share']:.0%} copies: {power['power']:.2f} (target {power['target']:g}; "
        f"synthetic images needed: {power['synthetic_images_needed'] or 'none would do'})"
        + (
            f"; membership audit AUC {audit['auc']:.3f} ({audit['auc_ci95'][0]:.3f}-{audit['auc_ci95'][1]:.3f})"
            if audit
            else ""
        ),
        highlight=False,
    )
    pixel = result["pixel_distance_percentiles"]
    results.print(
        f"pixel distance to the nearest training image (Figure 4b), median: synthetic "
        f"{pixel['synthetic']['p50']:.3f}, held-out {pixel['heldout']['p50']:.3f}",
        highlight=False,
    )
    flagged = [label for label, row in result["per_class"].items() if row.get("memorises")]
    if flagged:
        results.print(
            f"[bold red]classes flagged on their own: {', '.join(flagged)}[/bold red]", highlight=False
        )
    style = "bold red" if result["memorises"] else "green" if result["memorises"] is False else "yellow"
    results.print(f"[{style}]{result['verdict']}[/{style}]", highlight=False)
    results.print(
        f"written: {_out_of(config, result)}/privacy.json, privacy.csv, privacy_histogram.png, "
        f"closest_pairs.png",
        highlight=False,
    )


@evaluate_app.command("leakage")
def leakage(
    train: list[Path] = option(LeakageConfig, "train", "--real-train"),
    test: list[Path] = option(LeakageConfig, "test", "--real-test"),
    embedder: str = option(LeakageConfig, "embedder", "--embedder"),
    threshold: float | None = option(LeakageConfig, "threshold", "--threshold"),
    views: bool = option(LeakageConfig, "views", "--views/--no-views"),
    pairs: int = option(LeakageConfig, "pairs", "--pairs"),
    batch_size: int = option(LeakageConfig, "batch_size", "--batch-size"),
    out: Path = option(LeakageConfig, "out", "--out", "-o", to_cli=Path),
    progress: bool = progress_option(run_leakage),
    json_path: str | None = json_option(),
) -> None:
    """Test images that are near-copies of training images, per class (a leaky split inflates utility numbers).

    Writes OUT/leakage.json (every number), leakage.csv and leakage_pairs.png; --json adds the summary table.

    Example: medisyn evaluate leakage --real-train data/train --real-test data/test
    """
    with errors_as_exit_codes():
        result = run_leakage(
            config_from(leakage, LeakageConfig, locals()),
            show_progress=progress,
        )
    rows = [{"class": label, **row} for label, row in result["per_class"].items()]
    rows.append(
        {
            "class": "all",
            "images": result["images"]["test"],
            "near_copies": result["count"],
            "share": result["share"],
        }
    )
    with Tables("evaluate leakage", json_path) as tables:
        tables.show(
            "leakage",
            f"leakage: test images near-copies of training images ({result['embedder']}, similarity "
            f">= {result['threshold']:g})",
            [
                column("class", fmt=lambda v: v or "(none)"),
                column("test images", "images"),
                column("near-copies", "near_copies"),
                column("share", fmt=percent),
            ],
            rows,
        )
        if result["warning"]:
            results.print(f"[yellow]warning: {result['warning']}[/yellow]", highlight=False)
        results.print(f"written: {out}/leakage.json, leakage.csv, leakage_pairs.png", highlight=False)


@evaluate_app.command("fidelity")
def fidelity(
    real: list[Path] = option(FidelityConfig, "real", "--real"),
    synthetic: list[Path] = option(FidelityConfig, "synthetic", "--synthetic"),
    features: str = option(FidelityConfig, "features", "--features"),
    per_class: bool = option(FidelityConfig, "per_class", "--per-class"),
    k: int = option(FidelityConfig, "k", "--k"),
    kid_subsets: int = option(FidelityConfig, "kid_subsets", "--kid-subsets"),
    kid_subset_size: int = option(FidelityConfig, "kid_subset_size", "--kid-subset-size"),
    cnn_epochs: int = option(FidelityConfig, "cnn_epochs", "--cnn-epochs"),
    bootstrap: int = option(FidelityConfig, "bootstrap", "--bootstrap"),
    batch_size: int = option(FidelityConfig, "batch_size", "--batch-size"),
    device: str = option(FidelityConfig, "device", "--device"),
    out: Path | None = option(FidelityConfig, "out", "--out", "-o"),
    progress: bool = progress_option(run_fidelity),
    json_path: str | None = json_option(),
) -> None:
    """FID, KID, precision/recall, density/coverage and within-class diversity of synthetic vs real images.

    Writes OUT/fidelity.json (every number) and fidelity.csv; --json adds the summary table.

    Example: medisyn evaluate fidelity --real data/train --synthetic derm-synth --per-class
    """
    with errors_as_exit_codes():
        config = config_from(fidelity, FidelityConfig, locals())
        result = run_fidelity(config, show_progress=progress)
    rows = [
        {"scope": scope, **row, "fid_ci95": row.get("ci95", {}).get("fid", (None, None))}
        for scope, row in [("all", result["overall"])] + list(result["per_class"].items())
    ]
    with Tables("evaluate fidelity", json_path) as tables:
        tables.show(
            "fidelity",
            f"fidelity, features: {result['features']}",
            [
                column("scope"),
                column("real", "real_images"),
                column("synthetic", "synthetic_images"),
                Column("FID [95% CI]", ("fid", "fid_ci95"), _fid_text),
                column("KID", "kid", number(4)),
                *(column(name, fmt=number(3)) for name in ("precision", "recall", "density", "coverage")),
                column("diversity real", "real_diversity", number(3)),
                column("diversity synthetic", "synthetic_diversity", number(3)),
            ],
            rows,
            caption=NOT_COMPARABLE,
        )
        if result["overall"].get("note"):
            results.print(f"[yellow]note: {result['overall']['note']}[/yellow]", highlight=False)
        results.print(f"written: {_out_of(config, result)}/fidelity.json, fidelity.csv", highlight=False)


def _fid_text(row: dict) -> str:
    low, high = row["fid_ci95"]
    return _fmt(row.get("fid"), 2) + (f" [{_fmt(low, 2)}, {_fmt(high, 2)}]" if low is not None else "")


def report_command(
    dataset: Path = argument(
        write_report, "out", help="A medisyn generate output folder (run.json, parquet/, imagefolder/)."
    ),
    out: Path | None = option(
        write_report,
        "report_dir",
        "--out",
        "-o",
        help="Folder for report.html and report.json (default: DATASET itself).",
    ),
    per_class: int = option(write_report, "per_class", "--per-class", help="Sample images shown per class."),
    real: list[Path] = option(
        write_report,
        "real",
        "--real",
        to_cli=list,
        help=f"Real reference images for the diversity guard's coverage and recall: {SETS_HELP}.",
    ),
    progress: bool = progress_option(write_report),
) -> None:
    """Write report.html and report.json (into DATASET, or --out): samples, counts, rejections, label check,
    diversity guard, similarities and evaluate metrics (offline).

    Example: medisyn report derm-synth --real ../shared/data/isic2017_dermoscopy --out derm-report
    """
    with errors_as_exit_codes():
        path, notes = write_report(dataset, per_class, _strs(real), show_progress=progress, report_dir=out)
    for note in notes:
        results.print(f"[dim]omitted: {note}[/dim]", highlight=False)
    results.print(f"written: {path}", highlight=False)


def _out_of(config, result: dict) -> Path:

    return Path(config.out) if config.out else default_out(config.synthetic[0])
