"""`medisyn report DATASET`: one self-contained HTML page about a generate output folder (images as data URIs),
and OUT/report.json with its numbers (label check, diversity guard, notes).

Sections, each omitted with a one-line note when its inputs are missing: run (model, sampling), per-class
counts (run.json "classes"), a sample grid per class, rejected near-copies (rejected.parquet), the label check
(a `generate --judge` run and/or an `evaluate alignment` result: per class recognised share, mean label score,
yield, rejections for label and for privacy), the diversity guard (coverage / recall against `--real` and
within-class diversity before and after the label filter; evaluate/filtering.py), the similarity histogram and
closest kept-image / training-image pairs (nn_similarity of the kept rows or screen/screen.parquet; pairs need
the index named in run.json), and the metrics of every other evaluate JSON under OUT/evaluate/.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medisyn_cli.core.datasets import find_sources, iter_source_records
from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import write_json
from medisyn_cli.core.html import LOAD_PROBE, figure_uri, img_tag, page
from medisyn_cli.core.images import png_bytes, thumbnail
from medisyn_cli.core.imagesets import open_sources
from medisyn_cli.core.ownership import claim, is_ours
from medisyn_cli.core.progress import Task, current, reporting
from medisyn_cli.core.results import new_figure
from medisyn_cli.dataset.layout import generate_files
from medisyn_cli.evaluate.fidelity import _flat
from medisyn_cli.evaluate.filtering import diversity_guard, find_alignment, label_check, read_rejected

THUMB = 96


@dataclass
class Page:
    """HTML sections being assembled, the notes on what was left out, and the numbers for report.json."""

    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    real: tuple[str, ...] = ()

    def add(self, title: str, body: str) -> None:
        self.sections.append(f"<h2>{html.escape(title)}</h2>\n{body}")

    def skip(self, note: str) -> None:
        self.notes.append(note)
        self.sections.append(f'<p class="note">{html.escape(note)}</p>')


def write_report(
    out: str | Path,
    per_class: int = 8,
    real: tuple[str, ...] | list[str] = (),
    show_progress: bool = True,
    report_dir: str | Path | None = None,
) -> tuple[Path, list[str]]:
    """Write report.html and report.json of the generate output folder `out` into `report_dir` (default: `out`
    itself); returns the page's path and the notes on omitted parts.
    `real`: real reference images for the diversity guard's coverage and recall."""
    with reporting(show_progress):
        return _claim_and_write(Path(out), per_class, real, Path(report_dir) if report_dir else None)


def _claim_and_write(out: Path, per_class: int, real, report_dir: Path | None) -> tuple[Path, list[str]]:
    if not out.is_dir():
        raise MedisynError(f"{out}: no such folder (expected a medisyn generate output folder)")
    if report_dir is None or report_dir.resolve() == out.resolve():
        if not is_ours(out):
            raise MedisynError(
                f"{out}: not a medisyn output folder (no .medisyn marker), so medisyn report writes nothing into "
                "it (--out names another folder for the report)"
            )
        folder = claim(out, "report", "DATASET", accept=("generate", "screen"), fallback=generate_files)
    else:
        folder = claim(report_dir, "report", "--out")
    with folder as owner:
        owner.check_free(["report.html", "report.json"], "--out" if report_dir else "DATASET")
        return _write_report(owner, out, per_class, real)


def _write_report(owner, out: Path, per_class: int, real) -> tuple[Path, list[str]]:
    if real:
        open_sources(list(real), "--real")  # a bad reference set is an error, not an omitted section
    run = _read_json(out / "run.json")
    report = Page(real=tuple(str(r) for r in real))
    try:
        kept = _kept_rows(out)
    except Exception as exc:  # unreadable Parquet or CSV: report the rest
        kept = None
        report.skip(f"kept rows unreadable ({type(exc).__name__}: {exc})"[:300])
    task = Task(current(), "report: sections", len(SECTIONS), "section")
    for step in SECTIONS:
        name = step.__name__.strip("_").replace("_", " ")
        try:
            step(report, out, run, kept, per_class)
        except Exception as exc:  # a damaged part must not stop the rest of the report
            report.skip(f"{name} omitted: {type(exc).__name__}: {exc}"[:300])
        task.advance(1, name)
    tmp = owner.temp("report.json")
    write_json(
        tmp, {"folder": str(out), "real": list(report.real) or None, **report.data, "notes": report.notes}
    )
    owner.publish(tmp, "report.json")
    tmp = owner.temp("report.html")
    tmp.write_text(_page(out, report), encoding="utf-8")
    return owner.publish(tmp, "report.html"), report.notes


# --- inputs ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _kept_rows(out: Path):
    """The kept images' metadata (no image bytes) as a DataFrame, from Parquet or metadata.csv (or None)."""
    import pandas as pd
    import pyarrow.parquet as pq

    parts = sorted((out / "parquet").glob("*.parquet"))
    if parts:
        frames = []
        for part in parts:
            names = [n for n in pq.ParquetFile(part).schema_arrow.names if n != "image"]
            frames.append(pq.read_table(part, columns=names).to_pandas())
        return pd.concat(frames, ignore_index=True)
    if (out / "imagefolder" / "metadata.csv").exists():
        return pd.read_csv(out / "imagefolder" / "metadata.csv")
    return None


def _records_by_label(out: Path, per_class: int) -> dict[str, list]:
    """Up to per_class (record) of each label, in stream order."""
    sources = find_sources([out / "parquet"] if (out / "parquet").is_dir() else [out / "imagefolder"])
    found: dict[str, list] = {}
    for source in sources:
        for record in iter_source_records(source):
            bucket = found.setdefault(str(record.label), [])
            if len(bucket) < per_class:
                bucket.append(record)
    return found


# --- sections -------------------------------------------------------------------------------------------


def _run_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    if run is None:
        page.skip("run: no readable run.json in this folder")
        return
    model, sampling = run.get("model", {}), run.get("sampling", {})
    facts = {
        "model": model.get("name"),
        "manifest": (run.get("manifest") or {}).get("path"),
        "sampling": ", ".join(f"{k} {v}" for k, v in sampling.items()),
        "device": run.get("device"),
        "dtype": run.get("dtype"),
        "seconds": run.get("seconds"),
        "medisyn": run.get("medisyn"),
        "screening": _screening_text(run.get("screening")),
    }
    page.add("run", _table([{"": k, "value": v} for k, v in facts.items() if v not in (None, "")]))


def _screening_text(screening: dict | None) -> str:
    if not screening:
        return "none (images not screened for near-copies)"
    return (
        f"{screening.get('embedder', {}).get('spec')} threshold {screening.get('threshold')}, "
        f"{screening.get('rejected')} near-copies rejected, index {screening.get('index')}"
    )


def _counts_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    classes = (run or {}).get("classes")
    if isinstance(classes, dict) and classes:
        rows = [
            {"label": label, **(counts if isinstance(counts, dict) else {"count": counts})}
            for label, counts in classes.items()
        ]
        page.add("per-class counts", _table(rows))
    elif kept is not None and "label" in kept:
        page.add(
            "per-class counts",
            _table([{"label": k, "images": int(v)} for k, v in kept.groupby("label").size().items()]),
        )
    else:
        page.skip("per-class counts: no 'classes' in run.json and no kept rows")


def _samples_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    if not (out / "parquet").is_dir() and not (out / "imagefolder").is_dir():
        page.skip("samples: no parquet/ or imagefolder/ in this folder")
        return
    rows = []
    for label, records in sorted(_records_by_label(out, per_class).items()):
        images = [r.open() for r in records]
        rows.append(f"<h3>{html.escape(label)}</h3>{_img(strip(images))}")
    page.add(f"samples (up to {per_class} per class)", "\n".join(rows))


def _rejections_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    rejected = read_rejected(out)
    if rejected is None:
        page.skip("rejections: no rejected.parquet (the run was not screened, or nothing was rejected)")
        return
    copies = rejected[rejected["reason"] == "near_copy"]
    others = len(rejected) - len(copies)
    elsewhere = f"<p>{others} rejected for their label: see the label check</p>" if others else ""
    if copies.empty:
        page.add("rejected near-copies", "<p>none</p>" + elsewhere)
        return
    summary = copies.groupby("label")["nn_similarity"].agg(["count", "mean", "max"]).reset_index()
    top = copies.sort_values("nn_similarity", ascending=False).head(20)
    columns = [c for c in ("id", "label", "attempt", "nn_key", "nn_similarity", "view") if c in top]
    page.add(
        "rejected near-copies",
        _table(summary.to_dict("records"))
        + elsewhere
        + "<h3>most similar</h3>"
        + _table(top[columns].to_dict("records")),
    )


def _label_check_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    result = label_check(run, kept, read_rejected(out), find_alignment(out))
    if result is None:
        page.skip(
            "label check: the run was not made with --judge and has no evaluate alignment result "
            "(medisyn evaluate alignment --judge JUDGE --synthetic OUT)"
        )
        return
    page.data["label_check"] = result
    page.add("label check: does each image show its class?", _label_check_html(result))


def _label_check_html(result: dict) -> str:
    """Intro sentences and one table, a row per class (judged-run columns, then alignment columns)."""
    parts, align = [], result.get("alignment")
    if result["judged"]:
        total = result["total"]
        parts.append(
            f"<p>Made with <code>--judge {html.escape(str(result.get('judge')))}</code> (held-out "
            f"accuracy on real images {_cell(result.get('heldout_accuracy'))}): an image is kept "
            f"when the judge's probability of its own class is at least "
            f"{_cell(result.get('min_label_score'))}. Yield: {total['kept']} kept of "
            f"{total['generated']} generated ({_cell(total['yield'])}); {total['label_rejected']} "
            f"rejected for their label, {total['near_copy_rejected']} as near-copies. Recognised "
            f"share: kept / (kept + rejected for label); yield: kept / generated (every "
            f"attempt).</p>"
        )
    if align:
        parts.append(
            f"<p><code>medisyn evaluate alignment</code> ({html.escape(str(align.get('folder')))}): "
            f"{_cell(align.get('gan_test_accuracy'))} of {align.get('images')} images are "
            f"classified as their own class by a classifier trained on real images, whose accuracy "
            f"on real held-out images is {_cell(align.get('ceiling_real_heldout_accuracy'))}.</p>"
        )
    labels = list(dict.fromkeys([*result["per_class"], *((align or {}).get("per_class") or {})]))
    rows = []
    for label in labels:
        judged = _judged_columns(result["per_class"].get(label) or {}) if result["judged"] else {}
        rows.append({"label": label, **judged, **(_alignment_columns(align, label) if align else {})})
    return "".join(parts) + _table(rows)


def _judged_columns(counts: dict) -> dict:
    """A class's columns of the label-check table for a judged run."""
    judged_as = ", ".join(f"{k} {v}" for k, v in (counts.get("label_rejected_judged_as") or {}).items())
    return {
        "generated": counts.get("generated"),
        "kept": counts.get("kept"),
        "yield": counts.get("yield"),
        "rejected: label": counts.get("label_rejected"),
        "rejected: near-copy": counts.get("near_copy_rejected"),
        "recognised share": counts.get("recognised_share"),
        "mean label score": counts.get("mean_label_score"),
        "label-rejected judged as": judged_as,
    }


def _alignment_columns(align: dict, label: str) -> dict:
    """A class's columns of the label-check table from an `evaluate alignment` result."""
    row = align["per_class"].get(label) or {}
    return {
        "alignment: GAN-test accuracy": row.get("gan_test_accuracy"),
        f"alignment: share >= {align.get('min_label_score')}": row.get("recognised_share"),
        "alignment: mean label score": row.get("mean_label_score"),
        "judge on real held-out": row.get("real_heldout_accuracy"),
    }


def _diversity_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    result = diversity_guard(out, run, read_rejected(out), find_alignment(out), page.real)
    if result is None:
        page.skip(
            "diversity guard: no label filter (the run was not made with --judge) and no evaluate "
            "alignment result to simulate one"
        )
        return
    page.data["diversity_guard"] = result
    page.add("diversity guard: before and after the label filter", _diversity_html(result))


def _diversity_html(result: dict) -> str:
    """What before / after are, the features, and a table: a row per scope (all, each class) and set."""
    sets = [
        ("before", result.get("before")),
        ("before, equal n", result.get("before_equal_n")),
        ("after", result["after"]),
    ]
    metrics = ("images", "coverage", "recall", "diversity") if result.get("real") else ("images", "diversity")
    rows = []
    for scope in ["all", *result["after"]["per_class"]]:
        for name, values in sets:
            if not values:
                continue
            row = values if scope == "all" else (values.get("per_class") or {}).get(scope) or {}
            key = {"diversity": "diversity_within_class" if scope == "all" else "diversity"}
            rows.append({"scope": scope, "set": name, **{m: row.get(key.get(m, m)) for m in metrics}})
    reference = (
        "against the real reference " + html.escape(", ".join(result["real"]))
        if result.get("real")
        else "no real reference given (medisyn report DATASET --real REAL adds coverage and recall)"
    )
    change = ", ".join(f"{name} {_cell(value)}" for name, value in (result.get("change") or {}).items())
    return (
        f"<p>{html.escape(result['basis'])}. Features: {html.escape(result['features'])}; {reference}; "
        f"k = {result['k']}. A filter that keeps only easy, typical images lowers coverage, recall and "
        f"diversity; fewer images alone lower coverage and raise recall, so compare after with "
        f"'before, equal n' (before subsampled to after's class counts, averaged over draws).</p>"
        + (f"<p><b>change (after - before at equal n)</b>: {change}</p>" if change else "")
        + _table(rows)
    )


def _similarities(out: Path, kept) -> tuple[np.ndarray, np.ndarray]:
    """(kept, rejected) nn_similarity values: screen/screen.parquet or the kept rows; rejected.parquet."""
    import pandas as pd

    screen = out / "screen" / "screen.parquet"
    source = pd.read_parquet(screen) if screen.exists() else kept
    values = np.array([], np.float64)
    if source is not None and "nn_similarity" in source:
        values = source["nn_similarity"].dropna().to_numpy(np.float64)
    rejected = np.array([], np.float64)
    if (out / "rejected.parquet").exists():
        rejected = pd.read_parquet(out / "rejected.parquet")["nn_similarity"].dropna().to_numpy(np.float64)
    return values, rejected


def _similarity_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    values, rejected = _similarities(out, kept)
    if not len(values) and not len(rejected):
        page.skip("similarity histogram: no nn_similarity values (images were not screened)")
        return
    figure, axes = new_figure(6.4, 3.4)
    low = float(min(np.concatenate([values, rejected]).min(), 0.9))
    bins = np.linspace(low, 1.0, 40)
    if len(values):
        axes.hist(values, bins=bins, alpha=0.6, label=f"kept ({len(values)})")
    if len(rejected):
        axes.hist(rejected, bins=bins, alpha=0.6, label=f"rejected ({len(rejected)})")
    threshold = ((run or {}).get("screening") or {}).get("threshold")
    if threshold is not None:
        axes.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}")
    axes.set_xlabel("similarity to the nearest training image")
    axes.legend(fontsize=8)
    page.add("similarity to training", _img_figure(figure))


def _pairs_section(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    index = ((run or {}).get("screening") or {}).get("index")
    if kept is None or "nn_similarity" not in kept or kept["nn_similarity"].isna().all():
        page.skip("nearest pairs: the kept rows have no nn_similarity (not screened)")
        return
    if not index or not (Path(index) / "keys.parquet").exists():
        page.skip(f"nearest pairs: the index of run.json ({index}) is not readable here")
        return
    import pyarrow.parquet as pq

    keys = pq.read_table(Path(index) / "keys.parquet", columns=["key"]).column("key").to_pylist()
    top = kept.dropna(subset=["nn_similarity"]).sort_values("nn_similarity", ascending=False).head(8)
    wanted = {str(row["id"]): row for _, row in top.iterrows()}
    images = _kept_images(out, set(wanted))
    cells = []
    for image_id, row in wanted.items():
        key = keys[int(row["nn_id"])] if 0 <= int(row["nn_id"]) < len(keys) else ""
        if image_id in images and Path(key).is_file():
            from PIL import Image

            pair = strip([images[image_id], Image.open(key)])
            similarity = float(row["nn_similarity"])
            caption = f"{html.escape(image_id)} | {html.escape(Path(key).name)} {similarity:.3f}"
            cells.append(f"<figure>{_img(pair)}<figcaption>{caption}</figcaption></figure>")
    if not cells:
        page.skip("nearest pairs: the training images of the closest pairs are not files here")
        return
    page.add(
        "closest kept images and their nearest training image",
        '<div class="pairs">' + "".join(cells) + "</div>",
    )


def _kept_images(out: Path, ids: set[str]) -> dict[str, object]:

    found = {}
    for source in find_sources([out / "parquet"] if (out / "parquet").is_dir() else [out / "imagefolder"]):
        for record in iter_source_records(source):
            image_id = record.key.rsplit(":", 1)[-1] if source.kind == "parquet" else Path(record.key).stem
            if image_id in ids:
                found[image_id] = record.open()
    return found


def _evaluate_sections(page: Page, out: Path, run: dict | None, kept, per_class: int) -> None:
    files = sorted((out / "evaluate").rglob("*.json")) if (out / "evaluate").is_dir() else []
    if not files:
        page.skip("evaluation: no evaluate JSON under evaluate/ (medisyn evaluate ... --out OUT/evaluate)")
        return
    for path in files:
        result = _read_json(path)
        if not isinstance(result, dict):
            page.skip(f"evaluation {path.name}: not readable JSON")
            continue
        if result.get("evaluation") == "alignment" or path.name == "alignment.json":
            continue  # shown in the label check
        render = {"utility": _utility_html, "privacy": _privacy_html, "fidelity": _fidelity_html}.get(
            result.get("evaluation"), _other_html
        )
        figures = "".join(
            _img_file(path.parent / name)
            for key, name in (result.get("files") or {}).items()
            if str(name).endswith(".png") and (path.parent / name).exists()
        )
        page.add(f"evaluation: {path.relative_to(out)}", render(result) + figures)


def _utility_html(result: dict) -> str:
    def number(value) -> str:
        return "-" if value is None or value != value else f"{value:.3f}"

    rows = [
        {
            "condition": r["condition"],
            "real fraction": r["real_fraction"],
            "real images": r["real_images"],
            "synthetic images": r["synthetic_images"],
            "steps": r.get("steps"),
            "AUROC": f"{number(r['auroc_mean'])} ± {number(r.get('auroc_std'))}",
            "95% interval": "-"
            if not r.get("auroc_ci95")
            else f"{number(r['auroc_ci95'][0])}-{number(r['auroc_ci95'][1])}",
        }
        for r in result.get("rows", [])
    ]
    classifier = result.get("classifier", {})
    budget = (result.get("budget") or {}).get("text", "")
    return (
        f"<p>{html.escape(result.get('metric', ''))}; {classifier.get('arch')} at "
        f"{classifier.get('size')} px, "
        f"{result.get('seeds')} seeds; budget: {html.escape(budget)}</p>" + _table(rows)
    )


def _privacy_html(result: dict) -> str:
    state = {True: "true", False: "false"}.get(
        result.get("memorises"), "null (undecidable at this sample size)"
    )
    power, audit = result.get("power") or {}, result.get("membership_audit") or {}
    facts = {
        "embedder": result.get("embedder"),
        "memorises": state,
        "verdict": result.get("verdict"),
        "synthetic near-copies of training (a finding of their own)": (
            result.get("synthetic_near_copies") or {}
        ).get("count"),
        "share above the held-out p95": result.get("share_above_heldout_p95"),
        "near-copy rate (synthetic / held-out)": "{synthetic} / {heldout}".format(
            **result.get("near_copy_rate", {"synthetic": "?", "heldout": "?"})
        ),
        "reference": (result.get("reference") or {}).get("source"),
        "P(synthetic closer than held-out)": result.get("p_synthetic_closer"),
        "p-values (levels)": ", ".join(
            f"{k} {v:.3g} ({(result.get('test_levels') or {}).get(k, float('nan')):.3g})"
            for k, v in (result.get("p_values") or {}).items()
        ),
        "power to flag 5% copies / images that would decide": f"{power.get('power')} / "
        f"{power.get('synthetic_images_needed')}"
        if power
        else None,
        "membership audit AUC (95% interval)": f"{audit['auc']:.3f} ({audit['auc_ci95'][0]:.3f}-"
        f"{audit['auc_ci95'][1]:.3f})"
        if audit
        else None,
        "held-out near-copies of training (kept in the reference)": (
            result.get("heldout_near_copies") or {}
        ).get("count"),
        "warnings": "; ".join(result.get("warnings", [])) or None,
        "images": ", ".join(f"{k} {v}" for k, v in (result.get("images") or {}).items()),
    }
    return _table([{"": k, "value": v} for k, v in facts.items()])


def _fidelity_html(result: dict) -> str:

    rows = [{"scope": "all", **_flat(result.get("overall", {}))}]
    rows += [{"scope": label, **_flat(row)} for label, row in (result.get("per_class") or {}).items()]
    return (
        f"<p>features: <b>{html.escape(str(result.get('features')))}</b> "
        f"({html.escape(str(result.get('note', '')))})</p>" + _table(rows)
    )


def _other_html(result: dict) -> str:
    return f"<pre>{html.escape(json.dumps(result, indent=1, default=str)[:4000])}</pre>"


# --- html helpers ---------------------------------------------------------------------------------------


def strip(images: list, side: int = THUMB):
    """PIL images side by side at side x side."""
    from PIL import Image

    canvas = Image.new("RGB", (max(1, len(images)) * (side + 4), side), "white")
    for n, image in enumerate(images):
        canvas.paste(thumbnail(image, side, pixelated=False), (n * (side + 4), 0))
    return canvas


def _img(image) -> str:
    return img_tag(png_bytes(image))


def _img_file(path: Path) -> str:
    return img_tag(path.read_bytes())


def _img_figure(figure) -> str:
    return f'<img src="{figure_uri(figure)}">'


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return html.escape(str(value)) if value is not None else ""


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(out: Path, report: Page) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}.note{color:#777}"
        ".pairs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:12px}"
    )
    body = (
        f"<h1>medisyn report: {html.escape(str(out))}</h1>\n"
        "<p><b>Synthetic images are not for clinical use.</b></p>\n" + "\n".join(report.sections)
    )
    return page(f"medisyn report: {html.escape(out.name)}", body, style, LOAD_PROBE)


SECTIONS = (  # report.html from top to bottom
    _run_section,
    _counts_section,
    _samples_section,
    _rejections_section,
    _label_check_section,
    _diversity_section,
    _similarity_section,
    _pairs_section,
    _evaluate_sections,
)
