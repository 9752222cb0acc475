"""HTML plumbing for the self-contained reports: data URIs, the similarity histogram figure, the page shell."""

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
