"""core plumbing written once: atomic writes, strict JSON, folder emptiness, the HTML page shell, lazy APIs."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_impulses_are_isolated_extremes_not_edges_and_are_median_filtered_away():
    from PIL import Image

    from medisyn_cli.core.images import IMPULSE_SHARE, impulse_share, without_impulses

    edges = np.zeros((64, 64), np.float32)
    edges[:, 32:] = 255.0
    edges[20, :] = 255.0  # a one-pixel line is not an impulse either: it has neighbours of its own
    assert impulse_share(edges) == 0.0
    source = Path(__file__).parent / "fixtures" / "images" / "images" / "te_im_0015_0001.png"
    grey = np.asarray(Image.open(source).convert("L"))
    noisy = np.clip(grey + np.random.default_rng(0).normal(0, 10, grey.shape), 0, 255).astype(np.uint8)
    for image in (Image.fromarray(grey), Image.fromarray(noisy)):
        assert without_impulses(image) is image  # Gaussian noise of sigma 10 is not salt and pepper
    salted = grey.copy()
    spots = np.random.default_rng(1).random(grey.shape) < 0.02
    salted[spots] = 255
    assert impulse_share(salted.astype(np.float32)) > IMPULSE_SHARE
    cleaned = np.asarray(without_impulses(Image.fromarray(salted)), np.float32)
    off = lambda image: np.mean(np.abs(image.astype(np.float32) - grey) > 50)  # noqa: E731
    assert off(cleaned) < 0.1 * off(salted)  # the impulses gone, the image otherwise about as it was
    deep = Image.fromarray(salted.astype(np.uint16) * 256)  # mode I;16
    assert without_impulses(deep).mode == "F"  # high bit depth: its grey, median-filtered
