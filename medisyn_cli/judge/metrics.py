"""Numbers the judge reports: confusion matrices, calibration (ECE, Brier, reliability bins), label-score pass rates."""

from __future__ import annotations

import numpy as np

THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    """Counts[true][predicted] as nested lists (rows: true class)."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (np.asarray(truth, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix.tolist()


def calibration(probs: np.ndarray, truth: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error of the top class (equal-width bins), multi-class Brier score and the bins."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = (predicted == truth).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high) if low > 0 else (confidence <= high)
        if not inside.any():
            continue
        gap = abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
        ece += inside.mean() * gap
        table.append(
            {
                "bin": [round(float(low), 2), round(float(high), 2)],
                "count": int(inside.sum()),
                "confidence": round(float(confidence[inside].mean()), 4),
                "accuracy": round(float(correct[inside].mean()), 4),
            }
        )
    onehot = np.eye(probs.shape[1])[truth]
    return {
        "ece": round(float(ece), 4),
        "brier": round(float(np.mean(np.sum((probs - onehot) ** 2, 1))), 4),
        "bins": table,
    }


def pass_rates(own_scores: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """Share of real held-out images whose own-label score is at least each threshold (what a filter keeps of
    genuine images of the class)."""
    return (
        {f"{t:g}": round(float(np.mean(own_scores >= t)), 4) for t in thresholds} if len(own_scores) else {}
    )
