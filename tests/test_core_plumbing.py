"""core plumbing written once: atomic writes, strict JSON, folder emptiness, the HTML page shell, lazy APIs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medisyn_cli.core.files import atomic_path, atomic_write_bytes, file_sha256, finite, write_json
from medisyn_cli.core.html import LOAD_PROBE, img_tag, page
from medisyn_cli.core.lazy import lazy_getattr
from medisyn_cli.core.outdir import holds_files


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with atomic_path(target, ".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_json_is_strict_and_bytes_are_hashed(tmp_path):
    write_json(tmp_path / "x.json", {"nan": float("nan"), "n": np.int64(3), "f": np.float32(0.5)})
    assert json.loads((tmp_path / "x.json").read_text())["nan"] is None
    assert finite({"a": [np.float32(np.inf), np.int64(2)]}) == {"a": [None, 2]}
    atomic_write_bytes(tmp_path / "b.bin", b"abc")
    assert (
        file_sha256(tmp_path / "b.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_holds_files(tmp_path):
    assert not holds_files(tmp_path / "missing") and not holds_files(tmp_path)
    (tmp_path / ".lock").write_text("")
    assert holds_files(tmp_path) and not holds_files(tmp_path, ignore=lambda p: p.name == ".lock")
    assert holds_files(tmp_path / ".lock")  # a file where a folder should be counts as not empty


def test_page_shell_and_img_tag():
    html = page("T", "<p>b</p>", "p{}", LOAD_PROBE)
    assert html.startswith('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>T</title>')
    assert "<style>p{}</style>" in html and "data-loaded" in html and html.endswith("</body></html>\n")
    assert img_tag(b"\x89PNG", alt='a"b') == '<img alt="a&quot;b" src="data:image/png;base64,iVBORw==">'


def test_lazy_getattr_imports_on_first_use():
    get = lazy_getattr("medisyn_cli.core", {"batched": ("batching", "batched")})
    from medisyn_cli.core.batching import batched

    assert get("batched") is batched
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        get("nope")
