"""Score files: score.json, readers.csv, classes.csv, groups.csv and a self-contained score.html with the plots."""

from __future__ import annotations

import html
import math
from pathlib import Path

from medisyn_cli.core.files import atomic_write_text
from medisyn_cli.core.html import figure_uri, page
from medisyn_cli.core.results import new_figure, write_csv, write_json

METRIC_NAMES = {
    "detection_accuracy": "detection accuracy (per image)",
    "detection_sensitivity": "sensitivity (synthetic flagged)",
    "detection_specificity": "specificity (real not flagged)",
    "pair_accuracy": "pair accuracy (exact answer)",
    "pair_sensitivity": "pair sensitivity",
    "pair_specificity": "pair specificity",
    "classify_real": "classification accuracy, real",
    "classify_synthetic": "classification accuracy, synthetic",
}

STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#1d232b}\n"
    "table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}td,th{border:1px solid #d5dbe1;"
    "padding:4px 8px;\ntext-align:left;vertical-align:top}th{background:#f1f4f7}"
    "img{max-width:100%;margin:8px 16px 8px 0}\n.note{color:#5d6773}"
)


def flat_row(row: dict, name_key: str = "reader") -> dict:
    """One CSV row: identity columns, then value/low/high of every metric, then the binomial test."""
    flat = {
        k: row.get(k)
        for k in (name_key, "by", "role", "years", "readers", "answered", "items", "complete")
        if k in row
    }
    for name, value in row["metrics"].items():
        flat.update(
            {
                f"{name}": value["value"],
                f"{name}_low": value["low"],
                f"{name}_high": value["high"],
                f"{name}_n": value["n"],
                f"{name}_boot_low": value.get("boot_low", math.nan),
                f"{name}_boot_high": value.get("boot_high", math.nan),
            }
        )
    flat.update({"chance": row["beats_chance"]["chance"], "p_value": row["beats_chance"]["p_value"]})
    return flat


def write_score(result: dict, out: Path) -> dict[str, Path]:
    """Write every score file under `out`; {name: path}."""
    rows = result["readers"] + [result["pooled"]]
    classes = [{"reader": row["reader"], **c} for row in rows for c in row["per_class"]]
    written = {
        "score.json": write_json(out / "score.json", result),
        "readers.csv": write_csv(out / "readers.csv", [flat_row(r) for r in rows]),
        "classes.csv": write_csv(out / "classes.csv", classes),
        "groups.csv": write_csv(out / "groups.csv", [flat_row(g, "group") for g in result["groups"]]),
    }
    atomic_write_text(out / "score.html", score_html(result))
    written["score.html"] = out / "score.html"
    return written


def _errors(values: list[dict]) -> tuple[list, list]:
    """Lower and upper error-bar lengths from Wilson intervals (0 where undefined)."""
    fix = lambda x: 0.0 if x is None or x != x else max(0.0, x)  # noqa: E731
    return (
        [fix(v["value"] - v["low"]) if v["n"] else 0.0 for v in values],
        [fix(v["high"] - v["value"]) if v["n"] else 0.0 for v in values],
    )


def detection_plot(result: dict) -> str:
    """Per reader (by experience) and pooled: accuracy, sensitivity and specificity of detecting synthetic images."""
    rows = sorted(result["readers"], key=lambda r: (r["years"] is None, r["years"] or 0, r["reader"]))
    rows = rows + [result["pooled"]]
    labels = [
        r["reader"] if r["reader"] == "pooled" else f"{r['reader']}\n{_years(r['years'])}" for r in rows
    ]
    figure, axis = new_figure(max(6.0, 0.9 * len(rows) + 2), 3.8)
    for offset, (name, colour) in zip(
        (-0.22, 0, 0.22),
        (
            ("detection_accuracy", "#2f6db5"),
            ("detection_sensitivity", "#c44e52"),
            ("detection_specificity", "#55a868"),
        ),
    ):
        values = [r["metrics"][name] for r in rows]
        axis.errorbar(
            [i + offset for i in range(len(rows))],
            [_nan(v["value"]) for v in values],
            yerr=_errors(values),
            fmt="o",
            color=colour,
            capsize=3,
            label=METRIC_NAMES[name],
        )
    axis.axhline(
        result["chance"], color="#777", linestyle="--", linewidth=1, label=f"chance {result['chance']:.2f}"
    )
    axis.set_xticks(range(len(rows)), labels, fontsize=8)
    axis.set_ylim(-0.02, 1.05)
    axis.set_ylabel("proportion (95% Wilson)")
    axis.set_title("Spotting synthetic images in pairs")
    axis.legend(fontsize=8, loc="lower right")
    return figure_uri(figure)


def classification_plot(result: dict) -> str:
    """Pooled classification accuracy per class on real and on synthetic images (Wilson 95% error bars)."""
    rows = result["pooled"]["per_class"]
    classes = result["classes"]
    figure, axis = new_figure(max(6.0, 1.1 * len(classes) + 2), 3.6)
    for offset, source, colour in ((-0.2, "real", "#4c72b0"), (0.2, "synthetic", "#dd8452")):
        values = [
            next(
                (r for r in rows if r["label"] == c and r["source"] == source),
                {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0},
            )
            for c in classes
        ]
        axis.bar(
            [i + offset for i in range(len(classes))],
            [_nan(v["value"]) for v in values],
            width=0.4,
            yerr=_errors(values),
            capsize=3,
            color=colour,
            label=f"{source} images",
        )
    axis.set_xticks(range(len(classes)), [c.replace("_", " ") for c in classes], fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("accuracy (95% Wilson)")
    axis.set_title("Classifying real and synthetic images (all readers)")
    axis.legend(fontsize=8)
    return figure_uri(figure)


def _nan(value) -> float:
    return math.nan if value is None else value


def _years(years) -> str:
    return "? y" if years is None else f"{years:g} y"


def _fmt(value: dict) -> str:
    if not value["n"]:
        return "-"
    text = f"{value['value']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"
    return text + (
        f"<br><small>boot [{value['boot_low']:.2f}, {value['boot_high']:.2f}]</small>"
        if value.get("boot_low") == value.get("boot_low") and "boot_low" in value
        else ""
    )


def _table(rows: list[dict], name_key: str, names: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(METRIC_NAMES[n])}</th>" for n in names)
    body = []
    for row in rows:
        who = html.escape(str(row.get(name_key)))
        extra = html.escape(
            ", ".join(
                x
                for x in (row.get("role") or "", "" if row.get("years") is None else _years(row["years"]))
                if x
            )
            if "by" not in row
            else f"by {row['by']}, {row['readers']} readers"
        )
        p_value = row["beats_chance"]["p_value"]
        cells = "".join(f"<td>{_fmt(row['metrics'][n])}</td>" for n in names)
        body.append(
            f"<tr><td><b>{who}</b><br><small>{extra}</small></td>{cells}"
            f"<td>{'-' if p_value != p_value else f'{p_value:.2g}'}</td></tr>"
        )
    return f"<table><tr><th></th>{head}<th>p (beats chance)</th></tr>{''.join(body)}</table>"


def score_html(result: dict) -> str:
    """The score page: plots, reader / group tables, agreement and the files left out."""
    names = (
        "detection_accuracy",
        "detection_sensitivity",
        "detection_specificity",
        "pair_accuracy",
        "classify_real",
        "classify_synthetic",
    )
    agreement = result["agreement"]
    kappas = "".join(
        f"<li>{html.escape(task.replace('_', ' '))}: Fleiss' kappa {_k(v.get('fleiss_kappa'))}"
        f"{'' if 'cohen_kappa' not in v else ', Cohen ' + _k(v['cohen_kappa'])} over {v['items']} items"
        "</li>"
        for task, v in agreement.items()
        if isinstance(v, dict)
    )
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in result.get("problems", []))
    plots = f'<img alt="detection per reader" src="{detection_plot(result)}">'
    if result["classes"] and result["pooled"]["metrics"]["classify_real"]["n"]:
        plots += f'<img alt="classification real vs synthetic" src="{classification_plot(result)}">'
    title = f"Reader study score: {html.escape(result['title'])}"
    return page(
        title,
        f"""<h1>{title}</h1>
<p class="note">Study {html.escape(result["study_id"])}; {len(result["readers"])} readers. Values are proportions
with 95% Wilson intervals; pooled rows also give a bootstrap interval over readers. Chance level for spotting
synthetic images: {result["chance"]:.2f} (one-sided exact binomial test).</p>
{plots}
<h2>Readers</h2>{_table(result["readers"] + [result["pooled"]], "reader", names)}
<h2>By experience and role</h2>{_table(result["groups"], "group", names)}
<h2>Agreement between readers</h2><ul>{kappas or "<li>one reader: no agreement to measure</li>"}</ul>
{f"<h2>Answer files left out</h2><ul>{problems}</ul>" if problems else ""}""",
        STYLE,
    )


def _k(value) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"
