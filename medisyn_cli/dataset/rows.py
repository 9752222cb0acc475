"""The metadata row stored beside every image, in every format: its columns and their Arrow types."""

from __future__ import annotations

# Provenance columns every writer stores beside the image, with their Arrow types.
COLUMNS = {
    "id": "string",
    "label": "string",
    "label_id": "int64",
    "prompt": "string",
    "negative_prompt": "string",
    "seed": "int64",
    "attempt": "int32",
    "mode": "string",
    "model": "string",
    "scheduler": "string",
    "steps": "int32",
    "guidance": "float32",
    "height": "int32",
    "width": "int32",
    "nn_id": "int64",
    "nn_similarity": "float32",  # nearest training image (screening index); empty unscreened
    "label_score": "float32",
    "judged_label": "string",  # label check (generate --judge); empty unjudged
}
