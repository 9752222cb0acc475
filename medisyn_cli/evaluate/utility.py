"""Downstream utility (the MediSyn paper's Figure 5): does a classifier trained on synthetic images work on real ones?

The same classifier is trained on real images only (at each fraction of the real training set), on synthetic
images only, and on real (at each fraction) + all synthetic images, once per seed; each is scored by macro
one-vs-rest AUROC on the real test set, reported as mean, sample std (ddof=1) and a 95% t-interval over seeds,
and per seed a 95% bootstrap interval over test images (the only interval when there is one seed).

Budget (`budget`): "steps" (default) trains every condition for the same number of optimiser steps, `steps` or
by default epochs x ceil(N / batch_size) of the largest condition (so that one sees its data `epochs` times and
the smaller ones more often); a budget that grows with the training set would credit a larger condition with
its extra steps. "epochs" trains each condition for epochs x ceil(N / batch_size) of its own N (unequal).

Labels come from the datasets (label folders, a `label` column of metadata.csv or Parquet). Multi-label sets
(chest X-ray style) put the findings of an image in one label joined by '|' (e.g. `effusion|pneumonia`; an
empty label means no finding); their AUROC is the mean over findings that have positives and negatives in
the test set. Every set must have the test set's labels: no extra and none missing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.imagesets import (
    ImageSet,
    check_same_labels,
    label_vocabulary,
    load_arrays,
    open_sources,
    require_labels,
    split_labels,
    targets,
)
from medisyn_cli.core.progress import Task, reporting
from medisyn_cli.core.results import default_out, new_figure, save_figure, write_csv, write_json
from medisyn_cli.judge.classifier import (
    TrainSettings,
    bootstrap_auroc,
    check_arch,
    default_size,
    macro_auroc,
    predict,
    seed_interval,
    train_classifier,
)
from medisyn_cli.pipeline.load import resolve_device

REAL, SYNTHETIC, COMBINED = "real", "synthetic", "real+synthetic"
BUDGETS = ("steps", "epochs")


@dataclass(frozen=True)
class UtilityConfig:
    """Options of `medisyn evaluate utility` (paths: any dataset medisyn reads)."""

    real_train: tuple[str, ...] = field(
        metadata={
            "help": "Real training images: image folder (labels from folder names), ImageFolder with "
            "metadata.csv, Parquet, or medisyn output."
        }
    )
    real_test: tuple[str, ...] = field(metadata={"help": "Real test images (never used for training)."})
    synthetic: tuple[str, ...] = field(metadata={"help": "Synthetic training images."})
    fractions: tuple[float, ...] = field(
        default=(0.1, 0.25, 0.5, 1.0), metadata={"help": "Fractions of the real training set."}
    )
    arch: str = field(
        default="small-cnn",
        metadata={"help": "small-cnn (CPU default), resnet18 or resnet50 (torchvision, random init)."},
    )
    seeds: int = field(default=5, metadata={"help": "Training runs per condition (mean ± std)."})
    multi_label: bool = field(
        default=False,
        metadata={
            "help": "Labels are '|'-joined findings (chest X-ray style); AUROC averaged over findings."
        },
    )
    epochs: int = field(
        default=25, metadata={"help": "With --budget steps: passes over the largest condition."}
    )
    batch_size: int = field(default=64, metadata={"help": "Images per training batch."})
    size: int | None = field(
        default=None, metadata={"help": "Input side in px (default 64 small-cnn, 224 ResNets)."}
    )
    weights: str | None = field(
        default=None,
        metadata={"help": "Local torchvision ResNet state dict to start from (never downloaded)."},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, mps."})
    out: str | None = field(
        default=None,
        metadata={  # None: SYNTHETIC/evaluate or ./evaluate
            "help": "Folder for utility.json/.csv/.png."
        },
    )
    budget: str = field(
        default="steps",
        metadata={
            "help": "steps: the same optimiser steps for every condition; epochs: epochs of each condition's "
            "own set (unequal)."
        },
    )
    steps: int | None = field(
        default=None,
        metadata={  # None: epochs x ceil(N / batch_size)
            "help": "Optimiser steps per condition (default: --epochs over the largest condition)."
        },
    )
    bootstrap: int = field(
        default=1000,
        metadata={  # 0: none
            "help": "Bootstrap rounds of the per-seed AUROC interval."
        },
    )


@dataclass
class Condition:
    """One training set of the comparison: which data, at which fraction of the real training set."""

    name: str
    fraction: float | None
    scores: list[float] = field(default_factory=list)
    per_class: list[dict] = field(default_factory=list)
    intervals: list[tuple[float, float]] = field(default_factory=list)  # per seed: bootstrap 95% interval
    steps: list[int] = field(default_factory=list)  # per seed: optimiser steps run
    real_images: int = 0
    synthetic_images: int = 0


def parse_fractions(text: str) -> tuple[float, ...]:
    """'0.1,0.25,1' -> (0.1, 0.25, 1.0); MedisynError unless every value is in (0, 1]."""
    try:
        values = tuple(sorted({float(part) for part in text.split(",") if part.strip()}))
    except ValueError as exc:
        raise MedisynError(f"--fractions: expected numbers like 0.1,0.25,0.5,1, got '{text}'") from exc
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise MedisynError(f"--fractions: every fraction must be in (0, 1], got '{text}'")
    return values


def run_utility(config: UtilityConfig, show_progress: bool = True) -> dict:
    """Train and score every condition; write utility.json, utility.csv and utility.png; return the results."""
    with reporting(show_progress) as progress:
        return _run_utility(config, progress)


def _run_utility(config: UtilityConfig, progress) -> dict:
    # 1. options and inputs, checked before any image is decoded
    check_arch(config.arch, config.weights)
    if config.seeds < 1 or config.epochs < 1:
        raise MedisynError("--seeds and --epochs must be at least 1")
    if config.budget not in BUDGETS:
        raise MedisynError(f"--budget: unknown budget '{config.budget}' (valid: {', '.join(BUDGETS)})")
    if config.steps is not None and (config.steps < 1 or config.budget != "steps"):
        raise MedisynError(f"--steps {config.steps}: must be at least 1, and only with --budget steps")
    fractions = parse_fractions(",".join(map(str, config.fractions)))
    device = resolve_device(config.device)
    sources = {
        name: open_sources(paths, option)
        for name, paths, option in (
            ("test", config.real_test, "--real-test"),
            ("train", config.real_train, "--real-train"),
            ("synthetic", config.synthetic, "--synthetic"),
        )
    }
    # 2. images (uint8, in memory) and labels
    size = config.size or default_size(config.arch)
    arrays, sets = {}, {}
    for name, option in (("test", "--real-test"), ("train", "--real-train"), ("synthetic", "--synthetic")):
        arrays[name], sets[name] = load_arrays(sources[name], size, option)
    classes = check_utility_labels(sets["test"], sets["train"], sets["synthetic"], config.multi_label)
    y = {name: targets(image_set, classes, config.multi_label) for name, image_set in sets.items()}
    # 3. train and score each condition, seed by seed, under one step budget
    conditions = _conditions(fractions)
    settings = TrainSettings(
        config.arch,
        config.epochs,
        config.batch_size,
        multi_label=config.multi_label,
        weights=config.weights,
        steps=step_budget(config, len(arrays["train"]), len(arrays["synthetic"])),
    )
    started = time.time()
    task = Task(progress, "utility: classifiers trained", config.seeds * len(conditions), "run")
    for seed in range(config.seeds):
        for condition in conditions:
            x_train, y_train = _training_set(condition, arrays, y, sets["train"], config.multi_label, seed)
            model = train_classifier(
                x_train, y_train, len(classes), settings, seed, device, _step_info(task, condition, seed)
            )
            scores = predict(model, arrays["test"], device, config.multi_label)
            value, per_class = macro_auroc(y["test"], scores, classes, config.multi_label)
            condition.scores.append(value)
            condition.per_class.append(per_class)
            condition.steps.append(model.steps_trained)
            condition.intervals.append(
                bootstrap_auroc(y["test"], scores, classes, config.multi_label, config.bootstrap, seed)
            )
            task.advance(1)
    # 4. summary and files
    result = _summary(config, settings, conditions, classes, sets, size, str(device), time.time() - started)
    write_utility(result, Path(config.out) if config.out else default_out(config.synthetic[0]))
    return result


def _step_info(task: Task, condition: Condition, seed: int):
    """on_step of train_classifier: the condition, seed and step beside the bar (every 10 steps)."""
    name = condition.name if condition.fraction is None else f"{condition.name} {condition.fraction:g}"

    def on_step(done: int, steps: int) -> None:
        if done % 10 == 0 or done == steps:
            task.advance(0, f"{name}, seed {seed}: step {done}/{steps}")

    return on_step


def check_utility_labels(
    test: ImageSet, train: ImageSet, synthetic: ImageSet, multi_label: bool
) -> list[str]:
    """The test set's classes; MedisynError for unlabelled images, fewer than two classes or mismatched sets."""
    for image_set in (test, train, synthetic):
        require_labels(image_set, multi_label)
    classes = label_vocabulary(test, multi_label)
    if multi_label:
        hot = targets(test, classes, True)
        if not classes or not ((hot.sum(0) > 0) & (hot.sum(0) < len(hot))).any():
            raise MedisynError(
                f"--real-test: no finding has both positive and negative test images "
                f"(labels: {', '.join(classes) or 'none'}); AUROC is undefined"
            )
    elif len(classes) < 2:
        raise MedisynError(
            f"--real-test: only one class ({', '.join(classes)}) in the test set; AUROC is undefined "
            f"(it needs at least two classes)"
        )
    return check_same_labels(test, [train, synthetic], multi_label)


def step_budget(config: UtilityConfig, real_images: int, synthetic_images: int) -> int | None:
    """Optimiser steps of every condition: --steps, or epochs over the largest condition (real + synthetic);
    None with budget "epochs" (each condition's own epochs x ceil(N / batch_size))."""
    if config.budget == "epochs":
        return None
    if config.steps is not None:
        return config.steps
    return max(1, config.epochs * -(-(real_images + synthetic_images) // config.batch_size))


def _conditions(fractions: tuple[float, ...]) -> list[Condition]:
    return (
        [Condition(REAL, f) for f in fractions]
        + [Condition(SYNTHETIC, None)]
        + [Condition(COMBINED, f) for f in fractions]
    )


def _training_set(
    condition: Condition, arrays: dict, y: dict, train: ImageSet, multi_label: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The images and targets of one condition for one seed (a stratified fraction of the real set)."""
    parts_x, parts_y = [], []
    if condition.name in (REAL, COMBINED):
        rows = fraction_rows(train, condition.fraction, seed, multi_label)
        parts_x.append(arrays["train"][rows])
        parts_y.append(y["train"][rows])
        condition.real_images = len(rows)
    if condition.name in (SYNTHETIC, COMBINED):
        parts_x.append(arrays["synthetic"])
        parts_y.append(y["synthetic"])
        condition.synthetic_images = len(arrays["synthetic"])
    return np.concatenate(parts_x), np.concatenate(parts_y)


def fraction_rows(image_set: ImageSet, fraction: float, seed: int, multi_label: bool) -> np.ndarray:
    """Row indices of a seeded fraction of a set; multi-class: per class, at least one image of each."""
    rng = np.random.default_rng(seed)
    if fraction >= 1.0:
        return np.arange(len(image_set))
    if multi_label:
        return _multi_label_rows(image_set, fraction, rng)
    labels = np.array(image_set.labels, dtype=object)
    rows = []
    for label in sorted(set(image_set.labels)):
        members = np.flatnonzero(labels == label)
        rows.append(rng.permutation(members)[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(rows))


def _multi_label_rows(image_set: ImageSet, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Rows holding about `fraction` of each finding's images (at least one each) and of the no-finding images:
    findings are filled rarest first, counting images already drawn for another finding."""
    groups: dict[str, list[int]] = {}
    for row, label in enumerate(image_set.labels):
        for part in split_labels(label, True) or ("",):  # "": no finding
            groups.setdefault(part, []).append(row)
    chosen: set[int] = set()
    for _part, members in sorted(groups.items(), key=lambda item: (len(item[1]), item[0])):
        need = max(1, round(fraction * len(members))) - sum(1 for r in members if r in chosen)
        free = [r for r in members if r not in chosen]
        chosen.update(rng.permutation(free)[: max(0, need)].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def _summary(
    config: UtilityConfig,
    settings: TrainSettings,
    conditions: list[Condition],
    classes: list[str],
    sets: dict,
    size: int,
    device: str,
    seconds: float,
) -> dict:
    rows = [_row(c, classes, settings) for c in conditions]
    budget = (
        f"equal: {settings.steps} optimiser steps of {settings.batch_size} images for every condition"
        if settings.steps is not None
        else f"unequal: {settings.epochs} epochs of each condition's own images (more steps for larger sets)"
    )
    return {
        "evaluation": "utility",
        "metric": "macro one-vs-rest AUROC on the real test set",
        "interval": "95% t-interval over seeds (std: sample std, ddof=1); per seed a 95% stratified "
        f"bootstrap interval over test images ({config.bootstrap} rounds)",
        "classes": classes,
        "multi_label": config.multi_label,
        "label_separator": "|",
        "images": {name: len(s) for name, s in sets.items()},
        "skipped": {name: s.skipped for name, s in sets.items() if s.skipped},
        "budget": {"mode": config.budget, "steps": settings.steps, "text": budget},
        "classifier": {
            "arch": config.arch,
            "size": size,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "weights": config.weights,
            "device": device,
        },
        "seeds": config.seeds,
        "rows": rows,
        "seconds": round(seconds, 1),
        "config": asdict(config),
    }


def _row(c: Condition, classes: list[str], settings: TrainSettings) -> dict:
    """One condition's summary: mean, sample std, 95% intervals over seeds and per seed, steps, epochs seen."""
    per_class = {
        label: float(np.nanmean([p[label] for p in c.per_class]))
        if any(not np.isnan(p[label]) for p in c.per_class)
        else float("nan")
        for label in classes
    }
    std, low, high = seed_interval(c.scores)
    if len(c.scores) == 1:  # one seed: the bootstrap interval over test images is the only one
        low, high = c.intervals[0]
    images = c.real_images + c.synthetic_images
    return {
        "condition": c.name,
        "real_fraction": c.fraction,
        "real_images": c.real_images,
        "synthetic_images": c.synthetic_images,
        "steps": c.steps[0] if len(set(c.steps)) == 1 else c.steps,
        "epochs_seen": round(c.steps[0] * settings.batch_size / max(1, images), 2),
        "auroc_mean": float(np.mean(c.scores)),
        "auroc_std": std,
        "auroc_ci95": [low, high],
        "auroc_ci95_method": "t over seeds" if len(c.scores) > 1 else "bootstrap over test images",
        "auroc_seeds": c.scores,
        "auroc_seed_bootstrap_ci95": [list(i) for i in c.intervals],
        "auroc_per_class": per_class,
    }


def write_utility(result: dict, out: Path) -> dict[str, Path]:
    """utility.json, utility.csv (one row per condition) and utility.png under `out`."""
    skip = ("auroc_seeds", "auroc_per_class", "auroc_ci95", "auroc_seed_bootstrap_ci95")
    flat = [
        {k: v for k, v in row.items() if k not in skip}
        | {
            "auroc_ci95_low": row["auroc_ci95"][0],
            "auroc_ci95_high": row["auroc_ci95"][1],
            "auroc_seeds": " ".join(f"{s:.4f}" for s in row["auroc_seeds"]),
        }
        | {f"auroc_{label}": value for label, value in row["auroc_per_class"].items()}
        for row in result["rows"]
    ]
    files = {"json": out / "utility.json", "csv": out / "utility.csv", "png": out / "utility.png"}
    write_csv(files["csv"], flat)
    plot_utility(result, files["png"])
    write_json(files["json"], result | {"files": {k: p.name for k, p in files.items()}})
    return files


def plot_utility(result: dict, path: Path) -> Path:
    """AUROC against the fraction of real training data: real, real + synthetic, and synthetic only."""
    figure, axes = new_figure()
    for name, style in ((REAL, "o-"), (COMBINED, "s-")):
        rows = [r for r in result["rows"] if r["condition"] == name]
        yerr = np.array(
            [[r["auroc_mean"] - r["auroc_ci95"][0], r["auroc_ci95"][1] - r["auroc_mean"]] for r in rows],
            dtype=float,
        ).T
        axes.errorbar(
            [r["real_fraction"] for r in rows],
            [r["auroc_mean"] for r in rows],
            yerr=np.nan_to_num(yerr),
            fmt=style,
            capsize=3,
            label=name,
        )
    synthetic = next(r for r in result["rows"] if r["condition"] == SYNTHETIC)
    axes.axhline(
        synthetic["auroc_mean"],
        color="tab:green",
        linestyle="--",
        label=f"synthetic only ({synthetic['synthetic_images']} images)",
    )
    low, high = synthetic["auroc_ci95"]
    if low == low and high == high:
        axes.axhspan(low, high, color="tab:green", alpha=0.15)
    axes.set_xlabel("fraction of the real training set")
    axes.set_ylabel("macro AUROC on real test images")
    steps = result["budget"]["steps"]
    axes.set_title(
        f"utility: {result['classifier']['arch']}, {result['seeds']} seeds, "
        f"{f'{steps} steps each' if steps else 'epochs-based budget'} (mean, 95% interval)"
    )
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    return save_figure(figure, path)
