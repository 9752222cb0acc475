"""The ownership names a `generate` output folder uses (markers, claims, deleting only what medisyn wrote), from
core/ownership.py. Which files a run writes there depends on its formats: dataset/layout.py."""

from __future__ import annotations

from medisyn_cli.core.ownership import (  # noqa: F401  (re-exported)
    LEGACY_MARKER,
    LOCK,
    MARKER,
    aside_path,
    claim_marker,
    discard,
    holds_files,
    is_ours,
    listed_files,
    move_aside,
    new_run_id,
    read_marker,
)
