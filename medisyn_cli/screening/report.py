"""The `medisyn screen` report: one self-contained HTML page with the similarity histogram and, for every
flagged image, the image beside its nearest training image (the matched region outlined)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medisyn_cli.core.datasets import open_key
from medisyn_cli.core.html import PAGE, data_uri, histogram_png
from medisyn_cli.core.images import thumbnail_png
from medisyn_cli.screening.embed import to_8bit


def region_png(image, region: str, size: int = 96) -> bytes:
    """A thumbnail of a training image with the matched region ("region(l,t,r,b)", fractions) outlined in red."""
    import io

    from PIL import Image, ImageDraw


    box = [float(v) * size for v in region[region.index("(") + 1:region.rindex(")")].split(",")]
    image = to_8bit(image).convert("RGB")
    image = image.resize((size, size), Image.NEAREST if image.width < size else Image.BILINEAR)
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(220, 40, 40), width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_screen_report(summary, path: Path, index) -> Path:
    """report.html of `medisyn screen`: totals, per-label counts, the similarity histogram, the closest pairs."""
    import html


    e = html.escape
    rate = summary.near_copies / summary.screened if summary.screened else 0.0
    body = [f"<h1>Near-copy screening of {e(str(summary.dataset))}</h1>",
            f"<p>{summary.screened} images screened against the {len(index)} training images of "
            f"<code>{e(summary.index)}</code> (embedder <code>{e(summary.embedder)}</code>, threshold "
            f"{summary.threshold:g}): <b>{summary.near_copies} near-copies ({rate:.2%})</b>, "
            f"{summary.errors} unreadable.</p>",
            "<table><tr><th>label</th><th>screened</th><th>near-copies</th></tr>"]
    body += [f"<tr><td>{e(label)}</td><td>{n}</td><td>{c}</td></tr>" for label, (n, c) in summary.per_label.items()]
    body += ["</table>", "<h2>Similarity to the nearest training image</h2>",
             f'<img class="histogram" alt="histogram" src="{data_uri(histogram_png(summary.histogram, BINS, summary.threshold, "all screened images"))}">',
             f"<h2>The {len(summary.pairs)} closest pairs (screened image, nearest training image)</h2>",
             '<div class="pairs">']
    for pair in summary.pairs:
        try:
            training = data_uri(region_png(open_key(pair.nn_key), pair.region) if pair.region
                                else thumbnail_png(open_key(pair.nn_key)))
        except Exception as exc:  # a training file moved since the index was built: say so in the page
            training = ""
            pair.nn_key += f" (cannot open: {type(exc).__name__})"
        body.append(f'<div class="pair{" copy" if pair.near_copy else ""}">'
                    f'<img alt="screened" src="{data_uri(pair.thumbnail)}"> '
                    f'<img alt="training" src="{training}"><br>'
                    f'similarity <b>{pair.similarity:.3f}</b>{" &mdash; near-copy" if pair.near_copy else ""}<br>'
                    + (f'<span class="region">matched region of the training image: {e(pair.region[6:])}</span><br>'
                       if pair.region else "") +
                    f'<span class="key">{e(pair.image)}<br>&harr; {e(pair.nn_key)}</span></div>')
    body.append("</div>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(PAGE.format(title=f"screening: {e(summary.dataset.name)}", body="\n".join(body)), encoding="utf-8")
    tmp.replace(path)
    return path


BINS = np.linspace(-1.0, 1.0, 401)  # histogram of similarities, 0.005 wide
