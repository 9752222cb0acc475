"""`medisyn evaluate utility|privacy|leakage|fidelity` and `medisyn report`: parse options, call the API, print a summary.

Registered in cli.py with `app.add_typer(evaluate_app, name="evaluate")` and `app.command("report")(report_command)`.
Results go to --out (default: SYNTHETIC/evaluate for a medisyn output folder, else ./evaluate) as JSON, CSV and
PNG; `medisyn report` shows every evaluate JSON it finds under OUT/evaluate/.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import argument, comma_list, option, progress_option
from medisyn_cli.core.progress import results
from medisyn_cli.core.results import default_out
from medisyn_cli.evaluate.fidelity import NOT_COMPARABLE, FidelityConfig, run_fidelity
from medisyn_cli.evaluate.leakage import LeakageConfig, run_leakage
from medisyn_cli.evaluate.privacy import PrivacyConfig, run_privacy
from medisyn_cli.evaluate.report import write_report
from medisyn_cli.evaluate.utility import UtilityConfig, parse_fractions, run_utility

evaluate_app = typer.Typer(
    no_args_is_help=True,
    help="Evaluate a synthetic dataset: downstream utility, privacy (memorisation) and fidelity / diversity.",
)
SETS_HELP = (
    "image folder (labels from folder names), ImageFolder with metadata.csv, Parquet, or medisyn output"
)


def _errors():

    return errors_as_exit_codes()


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
) -> None:
    """Train a classifier on real, synthetic and real + synthetic images; macro AUROC on real test images.

    Example: medisyn evaluate utility --real-train real/train --real-test real/test --synthetic derm-synth --seeds 3
    """
    with _errors():
        config = UtilityConfig(
            _strs(real_train),
            _strs(real_test),
            _strs(synthetic),
            parse_fractions(fractions),
            arch,
            seeds,
            multi_label,
            epochs,
            batch_size,
            size,
            str(weights) if weights else None,
            device,
            str(out) if out else None,
            budget=budget,
            steps=steps,
            bootstrap=bootstrap,
        )
        result = run_utility(config, show_progress=progress)
    table = Table(
        title=f"utility: macro AUROC on {result['images']['test']} real test images "
        f"({result['classifier']['arch']}, {result['seeds']} seeds, {result['seconds']:.0f} s)",
        caption=f"budget: {result['budget']['text']}",
    )
    for name in ("condition", "frac", "real", "synth", "steps", "AUROC ± std", "95% CI"):
        table.add_column(name, no_wrap=True)
    for row in result["rows"]:
        low, high = row["auroc_ci95"]
        table.add_row(
            row["condition"],
            "-" if row["real_fraction"] is None else f"{row['real_fraction']:g}",
            str(row["real_images"]),
            str(row["synthetic_images"]),
            str(row["steps"]),
            f"{_fmt(row['auroc_mean'])} ± {_fmt(row['auroc_std'])}",
            f"{_fmt(low)}-{_fmt(high)}",
        )
    results.print(table)
    results.print(
        f"written: {_out_of(config, result)}/utility.json, utility.csv, utility.png", highlight=False
    )


@evaluate_app.command("privacy")
def privacy(
    train: list[Path] = option(PrivacyConfig, "train", "--train"),
    heldout: list[Path] = option(PrivacyConfig, "heldout", "--heldout"),
    synthetic: list[Path] = option(PrivacyConfig, "synthetic", "--synthetic"),
    embedder: str = option(PrivacyConfig, "embedder", "--embedder"),
    threshold: float | None = option(PrivacyConfig, "threshold", "--threshold"),
    views: bool = option(PrivacyConfig, "views", "--views/--no-views"),
    pairs: int = option(PrivacyConfig, "pairs", "--pairs"),
    batch_size: int = option(PrivacyConfig, "batch_size", "--batch-size"),
    out: Path | None = option(PrivacyConfig, "out", "--out", "-o"),
    train_reference: int = option(PrivacyConfig, "train_reference", "--train-reference"),
    progress: bool = progress_option(run_privacy),
) -> None:
    """Are synthetic images closer to training images than unseen real images are? (distance to closest record)

    Example: medisyn evaluate privacy --train data/train --heldout data/heldout --synthetic derm-synth
    """
    with _errors():
        config = PrivacyConfig(
            _strs(train),
            _strs(heldout),
            _strs(synthetic),
            embedder,
            threshold,
            views,
            pairs,
            batch_size,
            str(out) if out else None,
            train_reference,
        )
        result = run_privacy(config, show_progress=progress)
    table = Table(
        title=f"privacy: similarity to the nearest training image ({result['embedder']}, "
        f"{result['images']['train']} training images)"
    )
    for name in ("set", "images", "p5", "median", "p95", "p99", f"near-copies (>= {result['threshold']:g})"):
        table.add_column(name)
    for name in ("heldout", "synthetic"):
        p = result["percentiles"][name]
        table.add_row(
            name,
            str(result["images"][name]),
            _fmt(p["p5"]),
            _fmt(p["p50"]),
            _fmt(p["p95"]),
            _fmt(p["p99"]),
            f"{result['near_copy_rate'][name]:.1%}",
        )
    results.print(table)
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
        f"synthetic above the reference 95th percentile: {result['share_above_heldout_p95']:.1%} "
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
    train: list[Path] = option(LeakageConfig, "train", "--train"),
    test: list[Path] = option(LeakageConfig, "test", "--test"),
    embedder: str = option(LeakageConfig, "embedder", "--embedder"),
    threshold: float | None = option(LeakageConfig, "threshold", "--threshold"),
    views: bool = option(LeakageConfig, "views", "--views/--no-views"),
    pairs: int = option(LeakageConfig, "pairs", "--pairs"),
    batch_size: int = option(LeakageConfig, "batch_size", "--batch-size"),
    out: Path = option(LeakageConfig, "out", "--out", "-o", to_cli=Path),
    progress: bool = progress_option(run_leakage),
) -> None:
    """Test images that are near-copies of training images, per class (a leaky split inflates utility numbers).

    Example: medisyn evaluate leakage --train data/train --test data/test
    """
    with _errors():
        result = run_leakage(
            LeakageConfig(
                _strs(train),
                _strs(test),
                embedder,
                threshold,
                views,
                pairs,
                batch_size=batch_size,
                out=str(out),
            ),
            show_progress=progress,
        )
    table = Table(
        title=f"leakage: test images near-copies of training images ({result['embedder']}, similarity "
        f">= {result['threshold']:g})"
    )
    for name in ("class", "test images", "near-copies", "share"):
        table.add_column(name)
    for label, row in list(result["per_class"].items()) + [
        (
            "all",
            {"images": result["images"]["test"], "near_copies": result["count"], "share": result["share"]},
        )
    ]:
        table.add_row(label or "(none)", str(row["images"]), str(row["near_copies"]), f"{row['share']:.1%}")
    results.print(table)
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
) -> None:
    """FID, KID, precision/recall, density/coverage and within-class diversity of synthetic vs real images.

    Example: medisyn evaluate fidelity --real data/train --synthetic derm-synth --per-class
    """
    with _errors():
        config = FidelityConfig(
            _strs(real),
            _strs(synthetic),
            features,
            per_class,
            k,
            kid_subsets,
            kid_subset_size,
            cnn_epochs,
            batch_size,
            device,
            str(out) if out else None,
            bootstrap=bootstrap,
        )
        result = run_fidelity(config, show_progress=progress)
    table = Table(title=f"fidelity, features: {result['features']}", caption=NOT_COMPARABLE)
    columns = (
        "real",
        "synthetic",
        "FID [95% CI]",
        "KID",
        "precision",
        "recall",
        "density",
        "coverage",
        "diversity real",
        "diversity synthetic",
    )
    table.add_column("scope")
    for name in columns:
        table.add_column(name)
    for scope, row in [("all", result["overall"])] + list(result["per_class"].items()):
        low, high = row.get("ci95", {}).get("fid", (None, None))
        fid_text = _fmt(row.get("fid"), 2) + (
            f" [{_fmt(low, 2)}, {_fmt(high, 2)}]" if low is not None else ""
        )
        table.add_row(
            scope,
            str(row["real_images"]),
            str(row["synthetic_images"]),
            fid_text,
            _fmt(row.get("kid"), 4),
            _fmt(row.get("precision")),
            _fmt(row.get("recall")),
            _fmt(row.get("density")),
            _fmt(row.get("coverage")),
            _fmt(row.get("real_diversity")),
            _fmt(row.get("synthetic_diversity")),
        )
    results.print(table)
    if result["overall"].get("note"):
        results.print(f"[yellow]note: {result['overall']['note']}[/yellow]", highlight=False)
    results.print(f"written: {_out_of(config, result)}/fidelity.json, fidelity.csv", highlight=False)


def report_command(
    out: Path = argument(
        write_report, "out", help="A medisyn generate output folder (run.json, parquet/, imagefolder/)."
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
    """Write OUT/report.html and report.json: samples, counts, rejections, label check, diversity guard,
    similarities and evaluate metrics (offline).

    Example: medisyn report derm-synth --real ../shared/data/isic2017_dermoscopy
    """
    with _errors():
        path, notes = write_report(out, per_class, _strs(real), show_progress=progress)
    for note in notes:
        results.print(f"[dim]omitted: {note}[/dim]", highlight=False)
    results.print(f"written: {path}", highlight=False)


def _out_of(config, result: dict) -> Path:

    return Path(config.out) if config.out else default_out(config.synthetic[0])
