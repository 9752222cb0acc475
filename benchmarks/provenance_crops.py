"""How much of a crop `medisyn provenance --index` still recognises, and how close real images come (#27).

The index holds one's own outputs: the 16 generated brain MRI slices of tests/fixtures/generated. Each is
cropped by c pixels on every side (centred) or by 2c pixels from the left and the bottom (corner) of the 64 px image and saved without metadata (no mark); every real brain MRI
slice of shared/data is the negative set. Printed per crop: the share flagged as `match` at the index's
threshold, the share whose nearest neighbour is its source (matched_id right), the lowest similarity; then the
real images' highest similarity and how many were called synthetic.

    python benchmarks/provenance_crops.py [--data ../shared/data/brain_tumor_mri/images] [--every 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medisyn_cli.cli.provenance import index_screen
from medisyn_cli.dataset.provenance import matched_id
from medisyn_cli.screening.build import build_index

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "tests" / "fixtures" / "generated"
CROPS = (0, 1, 2, 3, 4, 6, 8)


def main() -> None:
    """Build the index, screen the crops and the real images, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "brain_tumor_mri" / "images"
    )
    parser.add_argument("--every", type=int, default=1, help="Use every N-th real image.")
    args = parser.parse_args()
    outputs = sorted(GENERATED.glob("*/*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        build_index([GENERATED], Path(tmp) / "index", show_progress=False)
        screen = index_screen(Path(tmp) / "index")
        print(f"index: {len(outputs)} generated images; crop = pixels cut from every side of 64")
        print("crop     cut  area   flagged  nn right  min similarity")
        for crop in CROPS:
            for where, box in (
                ("centred", (crop, crop, 64 - crop, 64 - crop)),
                ("corner", (2 * crop, 0, 64, 64 - 2 * crop)),
            ):
                images = [Image.open(p).crop(box) for p in outputs]
                matches = screen(images)
                flagged = np.mean([m.near_copy for m in matches])
                right = np.mean([matched_id(m.matched_key) == p.stem for m, p in zip(matches, outputs)])
                area = (box[2] - box[0]) * (box[3] - box[1]) / 64**2
                low = min(m.similarity for m in matches)
                print(f"{where:7s}  {crop:3d}  {area:4.0%}  {flagged:7.0%}  {right:8.0%}  {low:14.4f}")
        real = sorted(args.data.glob("*.png"))[:: args.every]
        matches = [
            m
            for start in range(0, len(real), 64)
            for m in screen([Image.open(p) for p in real[start : start + 64]])
        ]
        similarities = np.array([m.similarity for m in matches])
        print(
            f"real: {len(real)} images, highest similarity {similarities.max():.4f}, 99th percentile "
            f"{np.percentile(similarities, 99):.4f}, called synthetic {sum(m.near_copy for m in matches)}"
        )


if __name__ == "__main__":
    main()
