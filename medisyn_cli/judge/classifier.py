"""The classifier the evaluations train: a small CNN (CPU default) or a torchvision ResNet, and macro AUROC.

Images are held in memory as uint8 (N, 3, size, size) arrays (12 KB an image at 64 px: 100,000 images ~1.2 GB)
and converted to float a batch at a time. Training draws random batches (with replacement) for a fixed number
of optimiser steps (`TrainSettings.steps`; None: epochs x ceil(N / batch_size), which grows with the training
set), with a random shift of up to 1/16 of the side as augmentation, AdamW and a one-cycle learning rate. ResNets start from random weights unless `weights` names a local state-dict file
(e.g. torchvision's resnet18-f37072fd.pth); nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError

ARCHS = ("small-cnn", "resnet18", "resnet50")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainSettings:
    """How a classifier is trained (the same for every condition of a comparison)."""

    arch: str = "small-cnn"
    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-3
    multi_label: bool = False
    weights: str | None = None
    steps: int | None = None  # optimiser steps; None: epochs x ceil(N / batch_size)

    def steps_for(self, images: int) -> int:
        """Optimiser steps for a training set of `images` images."""
        return self.steps if self.steps is not None else max(1, self.epochs * -(-images // self.batch_size))


def default_size(arch: str) -> int:
    """Input side in pixels: 64 for the small CNN, 224 for ResNets."""
    return 64 if arch == "small-cnn" else 224


def check_arch(arch: str, weights: str | None) -> None:
    """MedisynError for an unknown architecture, a missing weights file, or weights for the small CNN."""
    if arch not in ARCHS:
        raise MedisynError(f"--arch: unknown architecture '{arch}' (valid: {', '.join(ARCHS)})")
    if weights is not None and arch == "small-cnn":
        raise MedisynError(
            "--weights: the small CNN is always trained from scratch; use --arch resnet18|resnet50"
        )
    if weights is not None and not Path(weights).is_file():
        raise MedisynError(
            f"--weights {weights}: no such file (a local torchvision state dict; nothing is downloaded)"
        )


def build_network(arch: str, classes: int, weights: str | None = None):
    """nn.Sequential(body -> feature vector, dropout, linear head); body = model[0] gives penultimate features."""
    import torch.nn as nn

    check_arch(arch, weights)
    if arch == "small-cnn":

        def block(i: int, o: int):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        body = nn.Sequential(
            block(3, 32),
            block(32, 64),
            block(64, 128),
            block(128, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        dim = 128
    else:
        body, dim = _resnet(arch, weights), (512 if arch == "resnet18" else 2048)
    return nn.Sequential(body, nn.Dropout(0.3), nn.Linear(dim, classes))


def _resnet(arch: str, weights: str | None):
    import torch
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip or format errors
            raise MedisynError(
                f"--weights {weights}: not a readable PyTorch state dict ({type(exc).__name__})"
            ) from exc
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise MedisynError(
                f"--weights {weights}: does not fit torchvision {arch} "
                f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
            )
    model.fc = torch.nn.Identity()
    return model


def to_input(batch: np.ndarray, device):
    """uint8 (B, 3, H, W) -> float tensor on device, ImageNet-normalised."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).float().div_(255.0)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    classes: int,
    settings: TrainSettings,
    seed: int,
    device,
    on_step: Callable[[int, int], None] | None = None,
):
    """Train a fresh network on uint8 images x and targets y (indices, or multi-hot for multi-label); eval mode.
    `on_step(done, steps)` is called after each optimiser step (progress)."""
    import torch

    torch.manual_seed(seed)
    model = build_network(settings.arch, classes, settings.weights).to(device)
    steps = settings.steps_for(len(x))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=steps)
    generator = np.random.default_rng(seed)
    target = torch.from_numpy(y).to(device)
    loss_fn = (
        torch.nn.functional.binary_cross_entropy_with_logits
        if settings.multi_label
        else torch.nn.functional.cross_entropy
    )
    model.train()
    done = 0
    for _ in range(steps):
        idx = generator.integers(0, len(x), settings.batch_size)
        batch = _shift(to_input(x[idx], device), generator)
        loss = loss_fn(model(batch), target[torch.from_numpy(idx).to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        done += 1
        if on_step is not None:
            on_step(done, steps)
    model.steps_trained = done  # what the loop actually ran, reported per condition
    return model.eval()


def _shift(batch, generator: np.random.Generator):
    import torch

    limit = max(1, batch.shape[-1] // 16)
    dy, dx = (int(v) for v in generator.integers(-limit, limit + 1, 2))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def predict(model, x: np.ndarray, device, multi_label: bool, batch_size: int = 256) -> np.ndarray:
    """Class scores (N, C): softmax probabilities, or per-label sigmoid for multi-label."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(to_input(x[start : start + batch_size], device)).float()
            out.append((torch.sigmoid(logits) if multi_label else torch.softmax(logits, 1)).cpu().numpy())
    return np.concatenate(out)


def features(model, x: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features (N, dim) float32 of uint8 images."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(model[0](to_input(x[start : start + batch_size], device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model[2].in_features), np.float32)


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of one binary problem (Mann-Whitney U / (n+ n-), ties count half); NaN if one-sided."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank (scipy.stats.rankdata's default)."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def macro_auroc(
    y: np.ndarray, scores: np.ndarray, classes: list[str], multi_label: bool
) -> tuple[float, dict]:
    """(mean one-vs-rest AUROC over classes where it is defined, per-class AUROC with NaN where undefined)."""
    per_class = {}
    for c, label in enumerate(classes):
        positive = y[:, c] > 0.5 if multi_label else y == c
        per_class[label] = auroc(positive, scores[:, c])
    defined = [v for v in per_class.values() if not np.isnan(v)]
    return (float(np.mean(defined)) if defined else float("nan")), per_class


def bootstrap_auroc(
    y: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    multi_label: bool,
    rounds: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of macro AUROC over test images (resampled within each class)."""
    if rounds < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(y))] if multi_label else [np.flatnonzero(y == c) for c in range(len(classes))]
    values = []
    for _ in range(rounds):
        rows = np.concatenate([rng.choice(g, len(g)) for g in groups if len(g)])
        values.append(macro_auroc(y[rows], scores[rows], classes, multi_label)[0])
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """(sample std with ddof=1, 95% t-interval low, high) of per-seed values; NaN for fewer than two."""
    from scipy.stats import t

    values = [v for v in values if v == v]
    if len(values) < 2:
        return float("nan"), float("nan"), float("nan")
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(t.ppf(0.975, len(values) - 1)) * std / np.sqrt(len(values))
    return std, mean - half, mean + half
