"""The `medisyn screen` report: one self-contained HTML page with the similarity histogram and, for every
flagged image, the image beside its nearest training image (the matched region outlined)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medisyn_cli.core.datasets import open_key
from medisyn_cli.core.files import atomic_write_text
from medisyn_cli.core.html import LOAD_PROBE, data_uri, histogram_png, page
from medisyn_cli.core.images import THUMB, png_bytes, thumbnail, thumbnail_png


def region_png(image, region: str, size: int = THUMB) -> bytes:
    """A thumbnail of a training image with the matched region ("region(l,t,r,b)", fractions) outlined."""
    from PIL import ImageDraw

    box = [float(v) * size for v in region[region.index("(") + 1 : region.rindex(")")].split(",")]
    image = thumbnail(image, size)
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(220, 40, 40), width=2)
    return png_bytes(image)


def _training_images_notice(shown: bool) -> str:
    """The page says whether it holds real patients' images, so that whoever shares it knows."""
    if shown:
        return (
            '<p class="notice"><b>This page embeds thumbnails of real training images</b> (patients\' images) '
            "beside the screened ones. Share it only where the training data may be shown, or make it again "
            "with <code>--no-training-thumbnails</code>.</p>"
        )
    return (
        '<p class="notice">Training images are left out of this page (<code>--no-training-thumbnails</code>): '
        "each pair shows the screened image, the training image's key and the similarity.</p>"
    )


def _training_uri(pair) -> str:
    """The pair's training thumbnail (its matched region outlined) as a data URI; "" if its file cannot be opened."""
    try:
        image = open_key(pair.nn_key)
        return data_uri(region_png(image, pair.region) if pair.region else thumbnail_png(image))
    except Exception as exc:  # a training file moved since the index was built: say so in the page
        pair.nn_key += f" (cannot open: {type(exc).__name__})"
        return ""


def write_screen_report(summary, path: Path, index) -> Path:
    """report.html of `medisyn screen`: totals, per-label counts, similarity histogram, the closest pairs."""
    import html

    e = html.escape
    rate = summary.near_copies / summary.screened if summary.screened else 0.0
    body = [
        f"<h1>Near-copy screening of {e(str(summary.dataset))}</h1>",
        f"<p>{summary.screened} images screened against the {len(index)} training images of "
        f"<code>{e(summary.index)}</code> (embedder <code>{e(summary.embedder)}</code>, threshold "
        f"{summary.threshold:g}): <b>{summary.near_copies} near-copies ({rate:.2%})</b>, "
        f"{summary.errors} unreadable.</p>",
        _training_images_notice(summary.training_thumbnails),
        "<table><tr><th>label</th><th>screened</th><th>near-copies</th></tr>",
    ]
    body += [
        f"<tr><td>{e(label)}</td><td>{n}</td><td>{c}</td></tr>" for label, (n, c) in summary.per_label.items()
    ]
    histogram = histogram_png(summary.histogram, BINS, summary.threshold, "all screened images")
    body += [
        "</table>",
        "<h2>Similarity to the nearest training image</h2>",
        f'<img class="histogram" alt="histogram" src="{data_uri(histogram)}">',
        f"<h2>The {len(summary.pairs)} closest pairs (screened image, nearest training image)</h2>",
        '<div class="pairs">',
    ]
    for pair in summary.pairs:
        training = _training_uri(pair) if summary.training_thumbnails else ""
        body.append(
            f'<div class="pair{" copy" if pair.near_copy else ""}">'
            f'<img alt="screened" src="{data_uri(pair.thumbnail)}"> '
            + (f'<img alt="training" src="{training}">' if training else "")
            + "<br>"
            f"similarity <b>{pair.similarity:.3f}</b>{' &mdash; near-copy' if pair.near_copy else ''}"
            "<br>"
            + (
                f'<span class="region">matched region of the training image: {e(pair.region[6:])}</span><br>'
                if pair.region
                else ""
            )
            + (
                f'<span class="region">half of the image matches: partial similarity {pair.partial:.3f}</span><br>'
                if pair.near_copy and pair.partial is not None and pair.similarity < summary.threshold
                else ""
            )
            + f'<span class="key">{e(pair.image)}<br>&harr; {e(pair.nn_key)}</span></div>'
        )
    body.append("</div>")
    atomic_write_text(path, page(f"screening: {e(summary.dataset.name)}", "\n".join(body), STYLE, LOAD_PROBE))
    return path


BINS = np.linspace(-1.0, 1.0, 401)  # histogram of similarities, 0.005 wide
STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 13px; }
.pairs { display: flex; flex-wrap: wrap; gap: 12px; }
.pair { border: 2px solid #ccc; padding: 6px; font-size: 12px; width: 212px; }
.pair.copy { border-color: #c44e52; background: #fdeeee; }
.pair img { width: 96px; height: 96px; image-rendering: pixelated; }
.key { overflow-wrap: anywhere; color: #555; }
.region { color: #c44e52; }
"""
