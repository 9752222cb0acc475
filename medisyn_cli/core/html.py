"""HTML plumbing for the self-contained reports: data URIs, figures, similarity histogram, the page shell."""

from __future__ import annotations


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


LOAD_PROBE = """<script>
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img");
  var loaded = Array.prototype.filter.call(images, function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-loaded", loaded.length);
});
</script>
"""  # counts the images that rendered (data-images, data-loaded on <body>): headless-browser tests read them


def page(title: str, body: str, style: str, script: str = "", lang: str = "en") -> str:
    """The shell of a self-contained report page: title, inline style, body, a script (e.g. LOAD_PROBE)."""
    return (
        f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>\n'
        f"<style>{style}</style></head>\n<body>\n{body}\n{script}</body></html>\n"
    )


def figure_png(figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (tight bounding box); the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def figure_uri(figure, dpi: int = 100) -> str:
    """A matplotlib figure as an inline PNG `data:` URI (closed afterwards)."""
    return data_uri(figure_png(figure, dpi))


def img_tag(png: bytes, alt: str | None = None) -> str:
    """An inline `<img>` element of PNG bytes."""
    import html

    alt_attribute = "" if alt is None else f' alt="{html.escape(alt)}"'
    return f'<img{alt_attribute} src="{data_uri(png)}">'
