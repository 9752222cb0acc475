"""The package version (recorded in every index.json, run.json and model card)."""

__version__ = "0.1.0"
