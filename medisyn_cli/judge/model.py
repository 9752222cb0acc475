"""The judge: a label classifier trained on real labelled images, saved as a folder, loaded for generate.

    JUDGE/judge.json    classes, classifier, features, held-out accuracy and calibration, fingerprint
    JUDGE/model.npz     knn: training vectors + labels; linear: weights, bias, feature mean / scale
    JUDGE/model.pt      cnn: the small CNN's state dict (medisyn_cli.judge.classifier, 32 px)

Classifiers (`CLASSIFIERS`): `knn` (cosine k nearest neighbours on embedder vectors, smoothed votes),
`linear` (multinomial logistic regression on standardised embedder vectors, L2) and `cnn` (the evaluations'
small CNN trained on the images at 32 px). Features for knn / linear: features.py (`thumb`, the default, or
the embedders of `embed.py`: pixel, clip:, hf:). `Judge.scores(images)` gives (N, classes) probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import to_rgb_array
from medisyn_cli.core.progress import Task, current
from medisyn_cli.judge.classifier import build_network, predict
from medisyn_cli.judge.features import get_features
from medisyn_cli.pipeline.load import file_sha256
from medisyn_cli.screening.embed import blas_threads

CLASSIFIERS = ("knn", "linear", "cnn")
JUDGE_FILE, VERSION = "judge.json", 1
CNN_SIZE = 32  # input side of the cnn judge (as benchmarks/utility_mini.py)


def model_file(classifier: str) -> str:
    """The weights file name of a classifier kind."""
    return "model.pt" if classifier == "cnn" else "model.npz"


def knn_scores(train: np.ndarray, train_y: np.ndarray, query: np.ndarray, classes: int, k: int) -> np.ndarray:
    """Smoothed vote shares of the k most cosine-similar training vectors: (votes + 0.5) / (k + 0.5 C)."""
    k = max(1, min(k, len(train)))
    with blas_threads():
        sims = query @ train.T
    top = (
        np.argpartition(-sims, k - 1, axis=1)[:, :k]
        if k < len(train)
        else np.tile(np.arange(len(train)), (len(query), 1))
    )
    votes = np.zeros((len(query), classes), np.float64)
    for j in range(k):
        np.add.at(votes, (np.arange(len(query)), train_y[top[:, j]]), 1.0)
    return ((votes + 0.5) / (k + 0.5 * classes)).astype(np.float32)


def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-2) -> dict:
    """Multinomial logistic regression (L-BFGS on standardised features); returns the arrays to save."""
    from scipy.optimize import minimize

    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = ((x - mean) / scale).astype(np.float64)
    onehot = np.eye(classes)[y]
    d = z.shape[1]

    def loss(theta):
        w, b = theta[: d * classes].reshape(d, classes), theta[d * classes :]
        logits = z @ w + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        value = -np.mean(np.sum(onehot * np.log(p + 1e-12), 1)) + 0.5 * l2 * np.sum(w * w)
        grad = (p - onehot) / len(z)
        return value, np.concatenate([(z.T @ grad + l2 * w).ravel(), grad.sum(0)])

    with blas_threads():
        found = minimize(
            loss, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B", options={"maxiter": 300}
        )
    theta = found.x
    return {
        "weight": theta[: d * classes].reshape(d, classes).astype(np.float32),
        "bias": theta[d * classes :].astype(np.float32),
        "mean": mean.astype(np.float32),
        "scale": scale.astype(np.float32),
    }


def linear_scores(arrays: dict, x: np.ndarray) -> np.ndarray:
    """Softmax probabilities of the saved logistic regression."""
    logits = ((x - arrays["mean"]) / arrays["scale"]) @ arrays["weight"] + arrays["bias"]
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


# --- features ------------------------------------------------------------------------------------------


def embed_images(embedder, images: list, batch: int = 64) -> np.ndarray:
    """Embedder vectors of images (float32); binary embedders are refused (no vector space to classify in)."""
    if embedder.binary:
        raise MedisynError(
            f"--embedder {embedder.name}: a hash has no vector space for a classifier; use pixel, "
            f"clip:<model> or hf:<model>"
        )
    task, chunks = Task(current(), f"judge: embedding ({embedder.name})", len(images)), []
    for start in range(0, len(images), batch):
        chunks.append(embedder.embed(images[start : start + batch]))
        task.advance(len(chunks[-1]))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, embedder.dim), np.float32)


def cnn_arrays(images: list) -> np.ndarray:
    """uint8 (N, 3, 32, 32) inputs of the cnn judge."""
    return (
        np.stack([to_rgb_array(image, CNN_SIZE) for image in images])
        if images
        else np.zeros((0, 3, CNN_SIZE, CNN_SIZE), np.uint8)
    )


# --- the loaded judge --------------------------------------------------------------------------------------


@dataclass
class Judge:
    """A label classifier loaded from a judge folder; `scores(images)` -> (N, len(classes)) probabilities."""

    path: Path
    meta: dict
    classes: list[str]
    classifier: str
    arrays: dict = field(default_factory=dict)
    network: object = None
    embedder: object = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights file (recorded in judge.json and in a generate run's key)."""
        return self.meta["fingerprint"]

    def scores(self, images: list) -> np.ndarray:
        """Class probabilities of each image (rows sum to 1), classes in `self.classes` order."""
        if not images:
            return np.zeros((0, len(self.classes)), np.float32)
        if self.classifier == "cnn":
            import torch

            return predict(self.network, cnn_arrays(images), torch.device("cpu"), False).astype(np.float32)
        vectors = embed_images(self.embedder, images)
        if self.classifier == "knn":
            return knn_scores(
                self.arrays["vectors"],
                self.arrays["labels"],
                vectors,
                len(self.classes),
                int(self.meta["settings"]["k"]),
            )
        return linear_scores(self.arrays, vectors)

    def label_scores(self, images: list, labels: list[str]) -> tuple[np.ndarray, list[str]]:
        """Per image: the probability of its own label (0 for a label the judge does not know) and the judged label."""
        probs = self.scores(images)
        column = {name: i for i, name in enumerate(self.classes)}
        own = np.array(
            [probs[j, column[label]] if label in column else 0.0 for j, label in enumerate(labels)],
            np.float32,
        )
        return own, [self.classes[i] for i in probs.argmax(1)] if len(probs) else []


def load_judge(path: str | Path) -> Judge:
    """Open a judge folder made by `medisyn judge build`; a bad folder is one MedisynError naming the file."""
    folder = Path(path)
    if not folder.is_dir():
        raise MedisynError(
            f"--judge {folder}: no such folder (make one with: medisyn judge build REAL --out {folder})"
        )
    meta = read_meta(folder)
    classifier = meta["classifier"]
    weights = folder / model_file(classifier)
    if not weights.is_file():
        raise MedisynError(f"{weights}: missing (the judge folder is incomplete; build it again)")
    if file_sha256(weights) != meta["fingerprint"]:
        raise MedisynError(
            f"{weights}: sha256 differs from the fingerprint in {folder / JUDGE_FILE} (the file was "
            f"changed or damaged; build the judge again)"
        )
    judge = Judge(folder, meta, list(meta["classes"]), classifier)
    try:
        if classifier == "cnn":
            judge.network = _load_network(weights, len(judge.classes))
        else:
            with np.load(weights) as data:
                judge.arrays = {name: data[name] for name in data.files}
            judge.embedder = get_features(meta["features"]["embedder"])
    except MedisynError:
        raise
    except Exception as exc:  # zip / pickle / shape errors of a damaged weights file
        raise MedisynError(f"{weights}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return judge


def read_meta(folder: Path) -> dict:
    """judge.json, checked: version, classifier, classes and fingerprint present and well-formed."""
    path = folder / JUDGE_FILE
    if not path.is_file():
        raise MedisynError(
            f"{path}: missing; {folder} is not a judge folder (make one with: medisyn judge build)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MedisynError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("kind") != "medisyn-judge":
        raise MedisynError(f'{path}: not a medisyn judge record (no "kind": "medisyn-judge")')
    if meta.get("classifier") not in CLASSIFIERS:
        raise MedisynError(
            f"{path}: unknown classifier {meta.get('classifier')!r} (valid: {', '.join(CLASSIFIERS)})"
        )
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise MedisynError(f"{path}: 'classes' must list at least two class names")
    if not isinstance(meta.get("fingerprint"), str):
        raise MedisynError(f"{path}: no 'fingerprint' (sha256 of the weights file)")
    if meta["classifier"] != "cnn" and not isinstance((meta.get("features") or {}).get("embedder"), str):
        raise MedisynError(f"{path}: no 'features.embedder' for a {meta['classifier']} judge")
    return meta


def _load_network(weights: Path, classes: int):
    import torch

    network = build_network("small-cnn", classes)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()
