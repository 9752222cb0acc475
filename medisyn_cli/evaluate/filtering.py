"""What the label filter did to a generate output folder (for `medisyn report`): label check, diversity guard.

`label_check`: per class, from the kept rows, rejected.parquet and run.json of a `generate --judge` run:
images generated (every attempt), kept, yield (kept / generated), rejections for label and as near-copies
(privacy), the recognised share (kept / (kept + label-rejected): the share of judged images whose own-label
score reached the threshold) and the mean label score; plus, where `medisyn evaluate alignment` wrote
OUT/evaluate/alignment.json, its GAN-test accuracy per class against the judge's real held-out accuracy.

`diversity_guard`: coverage and recall (PRDC, k = 5; Naeem et al. 2020) against a real reference set
(--real), on `evaluate fidelity`'s default features (the small CNN trained on the real set), and
within-class diversity (mean pairwise distance; `pixel` features without a real set), before and after
the label filter, so a filter that keeps only easy, typical images shows as a drop. Fewer images alone lower
coverage and raise recall (k-NN balls of a sparser set are larger), so "after" is compared with "before"
subsampled to the same class counts (DRAWS seeded draws, averaged): `change` = after - before_equal_n.
After = the kept images. Before = kept + label-rejected images, whose pixels the rejected.parquet of
`generate --judge` holds in its `image` column (never a near-copy's); a judged run made before it did says
that before is not measurable. For an unjudged run with an
alignment result the filter is simulated: before = every image, after = those whose label score (from
alignment_images.csv) reaches the alignment's --min-label-score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.imagesets import open_sources
from medisyn_cli.evaluate.fidelity import FidelityConfig, extract, make_extractor
from medisyn_cli.evaluate.metrics import diversity, prdc
from medisyn_cli.pipeline.load import resolve_device

LABEL, NEAR_COPY = "label", "near_copy"
DRAWS = 10  # random equal-size subsets of "before" averaged for the comparison with "after"


# --- inputs ---------------------------------------------------------------------------------------------


def read_rejected(out: Path):
    """rejected.parquet without pixels, `reason` added (near_copy) for a run without a judge; None: absent."""
    import pyarrow.parquet as pq

    path = out / "rejected.parquet"
    if not path.exists():
        return None
    names = [n for n in pq.ParquetFile(path).schema_arrow.names if n != "image"]
    frame = pq.read_table(path, columns=names).to_pandas()
    if "reason" not in frame:
        frame["reason"] = NEAR_COPY
    return frame


def find_alignment(out: Path) -> dict | None:
    """The newest `evaluate alignment` result under OUT/evaluate (alignment.json), with its folder; None."""
    folder = out / "evaluate"
    paths = sorted(folder.rglob("alignment.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    for path in reversed(paths):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and isinstance(result.get("per_class"), list):
            return {**result, "folder": str(path.parent)}
    return None


# --- label check ----------------------------------------------------------------------------------------


def label_check(run: dict | None, kept, rejected, alignment: dict | None) -> dict | None:
    """Per-class label-check numbers of a judged run and/or an alignment result; None with neither."""
    judge = (run or {}).get("judge")
    if not judge and alignment is None:
        return None
    result: dict = {"judged": bool(judge), "per_class": {}, "total": None, "alignment": None}
    if judge:
        if kept is None or "label_score" not in kept:
            raise MedisynError("the kept rows have no label_score column (run.json names a judge)")
        result.update(
            judge=judge.get("judge"),
            min_label_score=judge.get("min_label_score"),
            heldout_accuracy=judge.get("heldout_accuracy"),
        )
        result["per_class"], result["total"] = judged_counts(kept, rejected)
    if alignment is not None:
        result["alignment"] = {
            key: alignment.get(key)
            for key in (
                "judge",
                "classifier",
                "images",
                "min_label_score",
                "gan_test_accuracy",
                "recognised_share",
                "ceiling_real_heldout_accuracy",
                "folder",
            )
        }
        result["alignment"]["per_class"] = {
            row["label"]: {k: v for k, v in row.items() if k != "label"} for row in alignment["per_class"]
        }
    return result


def judged_counts(kept, rejected) -> tuple[dict, dict]:
    """Per class and in total: generated, kept, yield, rejections, recognised share, mean label score."""
    import pandas as pd

    rejected = rejected if rejected is not None else pd.DataFrame(columns=["label", "reason", "label_score"])
    labels = sorted({str(v) for v in kept["label"]} | {str(v) for v in rejected["label"]})
    per_class = {
        label: _class_counts(
            kept[kept["label"].astype(str) == label], rejected[rejected["label"].astype(str) == label]
        )
        for label in labels
    }
    return per_class, _class_counts(kept, rejected)


def _class_counts(kept, rejected) -> dict:
    """The label-check numbers of one class (or of all)."""
    import pandas as pd

    by_label = rejected[rejected["reason"] == LABEL]
    near = int((rejected["reason"] == NEAR_COPY).sum())
    generated, judged = len(kept) + len(rejected), len(kept) + len(by_label)
    scores = pd.concat([kept["label_score"], by_label["label_score"]]).dropna().astype(float)
    judged_as = by_label["judged_label"].value_counts() if "judged_label" in by_label else None
    return {
        "generated": generated,
        "kept": len(kept),
        "yield": _ratio(len(kept), generated),
        "label_rejected": len(by_label),
        "near_copy_rejected": near,
        "recognised_share": _ratio(len(kept), judged),
        "mean_label_score": round(float(scores.mean()), 4) if len(scores) else None,
        "mean_label_score_kept": _mean_of(kept["label_score"]),
        "label_rejected_judged_as": {}
        if judged_as is None
        else {str(k): int(v) for k, v in judged_as.items()},
    }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _mean_of(values) -> float | None:
    values = values.dropna().astype(float)
    return round(float(values.mean()), 4) if len(values) else None


# --- diversity guard ------------------------------------------------------------------------------------


def diversity_guard(
    out: Path,
    run: dict | None,
    rejected,
    alignment: dict | None,
    real: tuple[str, ...] = (),
    k: int = 5,
    batch_size: int = 64,
) -> dict | None:
    """Coverage / recall against `real` and within-class diversity, before and after the label filter."""
    judged = bool((run or {}).get("judge"))
    if not judged and alignment is None:
        return None
    config = FidelityConfig(
        real=tuple(real),
        synthetic=(str(out),),
        features="cnn" if real else "pixel",
        k=k,
        batch_size=batch_size,
    )
    real_sources = open_sources(list(real), "--real") if real else []
    extractor = make_extractor(config.features, real_sources, config, resolve_device("auto"))
    reference = extract(real_sources, extractor, "--real", batch_size) if real else None
    feats, kept_set = extract(open_sources([out], "OUT"), extractor, "kept images", batch_size)
    kept = (feats, np.array([str(label) for label in kept_set.labels]))
    before, after, basis = _sets(out, kept, kept_set.keys, rejected, judged, alignment, extractor, batch_size)
    result = {
        "basis": basis,
        "features": extractor.name,
        "real": list(real) or None,
        "k": k,
        "before": None if before is None else set_metrics(*before, reference, k),
        "before_equal_n": None,
        "after": set_metrics(*after, reference, k),
    }
    if before is not None:
        result["before_equal_n"] = equal_n_metrics(before, after[1], reference, k)
        result["change"] = {
            name: _difference(result["after"].get(name), result["before_equal_n"].get(name))
            for name in ("coverage", "recall", "diversity_within_class")
        }
    return result


def equal_n_metrics(before: tuple, after_labels: np.ndarray, reference, k: int, draws: int = DRAWS) -> dict:
    """set_metrics of `before` subsampled to the class counts of `after` (seeded draws, averaged): the
    comparison at equal n (coverage falls and recall rises with fewer images, whatever is filtered)."""
    feats, labels = before
    wanted = {label: int(np.sum(after_labels == label)) for label in set(after_labels)}
    if all(np.sum(labels == label) == n for label, n in wanted.items()) and len(after_labels) == len(labels):
        return set_metrics(feats, labels, reference, k)
    rng, rows = np.random.default_rng(0), []
    for _ in range(draws):
        chosen = np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == label), n, replace=False)
                for label, n in sorted(wanted.items())
            ]
        )
        rows.append(set_metrics(feats[chosen], labels[chosen], reference, k))
    return _mean_rows(rows) | {"draws": draws}


def _mean_rows(rows: list[dict]) -> dict:
    """Key by key mean of metric dicts (nested per_class too); None where any draw has None; notes dropped."""
    mean: dict = {}
    for key, first in rows[0].items():
        if isinstance(first, dict):
            mean[key] = _mean_rows([row[key] for row in rows])
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            values = [row.get(key) for row in rows]
            missing = None in values or any(v != v for v in values)
            same_count = all(isinstance(v, int) for v in values) and len(set(values)) == 1
            mean[key] = None if missing else values[0] if same_count else float(np.mean(values))
    return mean


def _sets(
    out: Path,
    kept: tuple,
    keys: list[str],
    rejected,
    judged: bool,
    alignment: dict | None,
    extractor,
    batch_size: int,
) -> tuple[tuple | None, tuple, str]:
    """(before, after, what before is) as (features, labels) pairs; before None where not measurable."""
    pixels = _rejected_pixels(out, extractor, batch_size)
    if pixels is not None:
        before = (np.concatenate([kept[0], pixels[0]]), np.concatenate([kept[1], pixels[1]]))
        return (
            before,
            kept,
            (f"before = kept + {len(pixels[1])} label-rejected images (pixels in rejected.parquet)"),
        )
    label_rejected = 0 if rejected is None else int((rejected["reason"] == LABEL).sum())
    if judged and label_rejected:
        return (
            None,
            kept,
            (
                f"before not measurable: rejected.parquet holds no pixels of its "
                f"{label_rejected} label-rejected images (only seed, prompt, label score and "
                f"judged label)"
            ),
        )
    if judged:
        return kept, kept, "before = after: no image was rejected for its label"
    keep = _passing(alignment, keys)
    after = (kept[0][keep], kept[1][keep])
    return (
        kept,
        after,
        (
            f"simulated filter (run made without --judge): before = all {len(keep)} images, "
            f"after = the {int(keep.sum())} whose label score in the alignment result is >= "
            f"{alignment.get('min_label_score')}"
        ),
    )


def _rejected_pixels(out: Path, extractor, batch_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Features and labels of the label-rejected images where rejected.parquet holds pixels (`image`)."""
    import pyarrow.parquet as pq
    from PIL import Image

    path = out / "rejected.parquet"
    if not path.exists() or "image" not in pq.ParquetFile(path).schema_arrow.names:
        return None
    table = pq.read_table(path).to_pandas()
    if "reason" in table:
        table = table[table["reason"] == LABEL]
    table = table[table["image"].notna()]
    if table.empty:
        return None
    import io

    images = [Image.open(io.BytesIO(v.get("bytes") if isinstance(v, dict) else v)) for v in table["image"]]
    chunks = [
        np.asarray(extractor.embed(images[i : i + batch_size]), np.float32)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks), table["label"].astype(str).to_numpy()


def _passing(alignment: dict, keys: list[str]) -> np.ndarray:
    """Which kept images (by key) the alignment result scored at or above its threshold."""
    import pandas as pd

    path = Path(alignment["folder"]) / "alignment_images.csv"
    if not path.exists():
        raise MedisynError(f"{path}: missing (per-image label scores of the alignment result)")
    scores = pd.read_csv(path)
    by_id = dict(zip(scores["key"].map(image_id), scores["label_score"].astype(float), strict=True))
    missing = [key for key in keys if image_id(key) not in by_id]
    if missing:
        raise MedisynError(
            f"{path}: no label score for {len(missing)} kept image(s), e.g. {missing[0]} "
            f"(rerun medisyn evaluate alignment on this folder)"
        )
    threshold = float(alignment.get("min_label_score") or 0.5)
    return np.array([by_id[image_id(key)] >= threshold for key in keys], bool)


def image_id(key: str) -> str:
    """An image's id from a source key: '<parquet file>:<id>' or '<folder>/<label>/<id>.png'."""
    key = str(key)
    return key.rsplit(":", 1)[-1] if ".parquet:" in key else Path(key).stem


def set_metrics(feats: np.ndarray, labels: np.ndarray, reference, k: int) -> dict:
    """Images, coverage / recall / precision / density against the reference (None without), within-class
    diversity, and per class the same."""
    row = {"images": len(feats), **_prdc_row(feats, reference[0] if reference else None, k)}
    per_class = {}
    for label in sorted(set(labels)):
        mine = feats[labels == label]
        ref = None
        if reference is not None:
            ref = reference[0][np.array([str(v) == label for v in reference[1].labels])]
        per_class[label] = {"images": len(mine), "diversity": diversity(mine), **_prdc_row(mine, ref, k)}
    finite = [v["diversity"] for v in per_class.values() if v["diversity"] == v["diversity"]]
    row["diversity_within_class"] = float(np.mean(finite)) if finite else None
    row["per_class"] = per_class
    return row


def _prdc_row(feats: np.ndarray, real: np.ndarray | None, k: int) -> dict:
    """Coverage and recall (with precision and density) of feats against real; None where too few images."""
    if real is None:
        return {}
    try:
        values = prdc(real, feats, k)
    except MedisynError as exc:
        return {"coverage": None, "recall": None, "precision": None, "density": None, "note": str(exc)}
    return {name: values[name] for name in ("coverage", "recall", "precision", "density")}


def _difference(after, before) -> float | None:
    if after is None or before is None or after != after or before != before:
        return None
    return round(float(after) - float(before), 4)
