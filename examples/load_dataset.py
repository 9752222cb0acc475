"""Load a medisyn output folder with pandas, Hugging Face datasets and torchvision.

python examples/load_dataset.py OUT
"""

import sys
from pathlib import Path

import pandas as pd
from datasets import load_dataset
from torchvision.datasets import ImageFolder

out = Path(sys.argv[1] if len(sys.argv) > 1 else "mini_chest_xray")
frame = pd.read_parquet(out / "parquet")
print(frame[["id", "label", "seed", "prompt"]].head())
print(frame.label.value_counts().to_string())

parquet = load_dataset("parquet", data_files=str(out / "parquet" / "*.parquet"), split="train")
print(parquet, parquet.features["label_id"].names, parquet[0]["image"].size)

folder = load_dataset("imagefolder", data_dir=str(out / "imagefolder"), split="train")
print(folder)

tv = ImageFolder(str(out / "imagefolder"))
print(f"torchvision: {len(tv)} images, classes {tv.classes}")
