"""Features of the knn / linear judges: `thumb` (default: a small colour thumbnail, no weights) or any registered
embedder (screening.embed's registry: `pixel`, `clip:<model>`, `hf:<model>`, plug-ins); `thumb` is layered on
top of that registry here, so help and error texts list both.

The `pixel` embedder is built to find copies (band-passed grey structure: colour and overall brightness removed);
class identity also lives in colour and brightness, which `thumb` keeps. `judge.json` records the held-out
accuracy of whichever features a judge was built with, so the choice can be checked on the user's own data.
"""

from __future__ import annotations

import numpy as np

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.images import to_8bit
from medisyn_cli.screening.embed import embedder_names, find_embedder, get_embedder, l2_normalise

THUMB_SIDE = 16


class ThumbFeatures:
    """An image as its side x side RGB thumbnail (bilinear), values in [0, 1], L2-normalised."""

    binary = False

    def __init__(self, side: int = THUMB_SIDE):
        self.side, self.name, self.dim = (
            side,
            f"thumb:{side}" if side != THUMB_SIDE else "thumb",
            3 * side * side,
        )

    def settings(self) -> dict:
        """What changes the vectors (recorded in judge.json)."""
        return {
            "side": self.side,
            "colour": "RGB (grey images repeated)",
            "resample": "bilinear",
            "norm": "l2",
        }

    def embed(self, images: list) -> np.ndarray:
        """(N, 3 side^2) float32 unit vectors."""
        from PIL import Image

        if not images:
            return np.zeros((0, self.dim), np.float32)
        rows = [
            np.asarray(
                to_8bit(image).convert("RGB").resize((self.side, self.side), Image.Resampling.BILINEAR),
                np.float32,
            ).ravel()
            / 255.0
            for image in images
        ]
        return l2_normalise(np.stack(rows))


OWN = ("thumb", "thumb:<side>")  # the judge's own values, before the registry's


def feature_names() -> tuple[str, ...]:
    """Every --embedder value of `judge build`: thumb, then the registered embedders."""
    return OWN + embedder_names()


def get_features(spec: str):
    """The feature extractor named by `spec`: thumb[:side], or a registered embedder (pixel, clip:, hf:, ...)."""
    spec = (spec or "").strip()
    if spec == "thumb" or spec.startswith("thumb:"):
        side = spec.partition(":")[2] or str(THUMB_SIDE)
        if not side.isdigit() or not 4 <= int(side) <= 128:
            raise MedisynError(f"--embedder {spec}: thumb:<side> takes a side from 4 to 128 pixels")
        return ThumbFeatures(int(side))
    if find_embedder(spec) is None:
        raise MedisynError(f"--embedder: unknown features '{spec}' (valid: {', '.join(feature_names())})")
    return get_embedder(spec)
