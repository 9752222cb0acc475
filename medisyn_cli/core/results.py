"""Where evaluation results go and how they are written: atomic JSON, CSV and figures in a folder medisyn owns."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medisyn_cli.core.files import finite
from medisyn_cli.core.ownership import claim, remove_temp


def default_out(synthetic: str | Path | None) -> Path:
    """SYNTHETIC/evaluate for a medisyn output folder (so `medisyn report` finds it), else ./evaluate."""
    if synthetic is not None and (Path(synthetic) / "run.json").exists():
        return Path(synthetic) / "evaluate"
    return Path("evaluate")


# what an older `evaluate` wrote into its --out (a folder without a record of its files)
EVALUATE_FILE = re.compile(r"(fidelity|utility|privacy|leakage|closest_pairs)[\w-]*\.(json|csv|png)")


def _legacy_evaluate_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file() and EVALUATE_FILE.fullmatch(p.name)}


def claim_results_folder(folder: Path) -> Path:
    """Make `folder` medisyn evaluate's own (created, or already its own) before something is built inside it
    (e.g. a judge in OUT/judge), so that writing its results there later is not refused as a foreign folder."""
    with claim(Path(folder), "evaluate", "--out", fallback=_legacy_evaluate_files, adopt=True) as owner:
        owner.keep()
    return Path(folder)


@contextmanager
def owned_path(path: Path) -> Iterator[Path]:
    """A temp path to write `path` through: its folder is created, or is medisyn evaluate's own (locked while
    writing); a file there that medisyn did not write is never replaced (one-line error naming it)."""
    path = Path(path)
    with claim(path.parent, "evaluate", "--out", fallback=_legacy_evaluate_files, adopt=True) as owner:
        owner.check_free([path.name])
        tmp = owner.temp(path.name)
        try:
            yield tmp
            owner.publish(tmp, path.name)
        finally:
            remove_temp(tmp)


def write_json(path: Path, data: dict) -> Path:
    """JSON written to a temp name, then renamed (NaN written as null)."""
    with owned_path(path) as tmp:
        tmp.write_text(json.dumps(finite(data), indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    """CSV of dict rows (columns of the first row), written atomically."""
    with owned_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_figure(figure, path: Path) -> Path:
    """A matplotlib figure saved as PNG atomically, then closed."""
    import matplotlib.pyplot as plt

    with owned_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def new_figure(width: float = 6.4, height: float = 4.0):
    """(figure, axes) with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))
