"""Plug-ins from other packages: Python entry points, loaded once per group when a registry first needs them.

A package adds an embedder, an output format or an image check by declaring an entry point (pyproject.toml):

    [project.entry-points."medisyn.embedders"]
    toy = "toy_medisyn_ext:ToyEmbedder"        # --embedder toy: the entry point's name, its object

The registry of the group (screening.embed, dataset.formats, screening.checks) registers each object under the
entry point's name, the first time it lists its names or is asked for a name it does not hold; a name the
registry already holds is refused. A plug-in that fails to load is a one-line MedisynError naming its package.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from medisyn_cli.core.errors import MedisynError

GROUPS = ("medisyn.embedders", "medisyn.formats", "medisyn.checks")
_LOADED: set[str] = set()
_LOCK = threading.RLock()
_SCAN: dict = {"points": None}  # every installed entry point, scanned once (reset_plugins scans again)


def load_plugins(group: str, register: Callable[[str, object], None]) -> None:
    """`register(name, object)` for every entry point of `group`, once per process (later calls do nothing)."""
    with _LOCK:
        if group in _LOADED:
            return
        _LOADED.add(group)  # first: a plug-in that lists the registry while it registers does not recurse
        for point in _entry_points(group):
            try:
                register(point.name, point.load())
            except MedisynError:
                raise
            except Exception as exc:  # an import error, a bad object: the plug-in's fault, named
                package = point.dist.name if point.dist is not None else point.value
                raise MedisynError(
                    f"plug-in '{point.name}' ({group}, {package}): cannot load {point.value} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc


def reset_plugins(group: str | None = None) -> None:
    """Forget which groups were loaded (tests), so the next registry look-up loads them again."""
    with _LOCK:
        _LOADED.difference_update([group] if group else list(_LOADED))
        _SCAN["points"] = None


def _entry_points(group: str) -> list:
    """The group's entry points by name (one scan of the installed packages serves every group)."""
    if _SCAN["points"] is None:
        from importlib.metadata import entry_points

        _SCAN["points"] = entry_points()
    return sorted(_SCAN["points"].select(group=group), key=lambda point: point.name)
