"""Package attributes imported on first use, so `medisyn --help` loads no heavy module."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_getattr(package: str, api: dict[str, tuple[str, str]]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: api maps a public name to (submodule, attribute)."""

    def __getattr__(name: str):
        if name not in api:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        module, attr = api[name]
        return getattr(import_module(f".{module}", package), attr)

    return __getattr__
