"""File names made from user text (labels): safe on every file system, and distinct for distinct labels."""

from __future__ import annotations

import hashlib
import re


def safe_name(label: str) -> str:
    """A label made safe as a file or folder name (the exact label stays in the metadata)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "class"
    return name if name == label else f"{name}-{hashlib.sha1(label.encode()).hexdigest()[:6]}"


def class_names(labels: list[str]) -> list[str]:
    """The classes in label_id order: sorted by folder name, as torchvision's and `datasets`' ImageFolder do."""
    return sorted(labels, key=lambda label: (safe_name(label), label))
