"""Figures: sample grids with row labels."""

from __future__ import annotations

from pathlib import Path


def image_grid(images: list, rows: int, path: Path, labels: list[str] | None = None, label_width: int = 220) -> Path:
    """Paste equally sized PIL images into a grid (row-major), with an optional text label per row."""
    import textwrap

    from PIL import Image, ImageDraw

    cols = max(1, len(images) // max(rows, 1))
    w, h = images[0].size
    offset = label_width if labels else 0
    grid = Image.new("RGB", (offset + cols * w, rows * h), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB"), (offset + c * w, r * h))
    for r, label in enumerate(labels or []):
        lines = textwrap.wrap(label, max(8, label_width // 6 - 1))[: max(1, h // 12)]
        draw.multiline_text((4, r * h + max(0, h - 12 * len(lines)) // 2), "\n".join(lines), fill="black", spacing=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    grid.save(tmp)
    tmp.replace(path)
    return path


def data_uri(png: bytes) -> str:
    """A PNG as an inline `data:` URI, so a report is one self-contained file."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def histogram_png(counts, edges, threshold: float, title: str) -> bytes:
    """Bar chart of a similarity histogram (counts over bin edges) with the threshold marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    used = np.nonzero(counts)[0]
    low, high = (edges[used[0]], edges[used[-1] + 1]) if len(used) else (0.0, 1.0)
    figure, axis = plt.subplots(figsize=(7, 3.2), dpi=100)
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0")
    axis.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
    axis.set_xlim(min(low, threshold) - 0.02, max(high, threshold) + 0.02)
    axis.set_xlabel("similarity to the nearest training image")
    axis.set_ylabel("images")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 13px; }}
.pairs {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.pair {{ border: 2px solid #ccc; padding: 6px; font-size: 12px; width: 212px; }}
.pair.copy {{ border-color: #c44e52; background: #fdeeee; }}
.pair img {{ width: 96px; height: 96px; image-rendering: pixelated; }}
.key {{ overflow-wrap: anywhere; color: #555; }}
.region {{ color: #c44e52; }}
</style></head>
<body>
{body}
<script>
window.addEventListener("load", function () {{
  var images = document.querySelectorAll("img");
  var loaded = Array.prototype.filter.call(images, function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-loaded", loaded.length);
}});
</script>
</body></html>
"""


def region_png(image, region: str, size: int = 96) -> bytes:
    """A thumbnail of a training image with the matched region ("region(l,t,r,b)", fractions) outlined in red."""
    import io

    from PIL import Image, ImageDraw

    from medisyn_cli.screening.embed import to_8bit

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

    from medisyn_cli.screening.audit import BINS, thumbnail_png
    from medisyn_cli.core.datasets import open_key

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
