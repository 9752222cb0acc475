"""Manifest parsing: good files load; every kind of bad input names file:line and column."""

from pathlib import Path

import pytest

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.dataset.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str, name: str = "m.csv", raw: bytes | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else text.encode("utf-8"))
    return path


def test_placeholders_variants_and_defaults_are_parsed(manifest):
    m = load_manifest(manifest)
    assert m.labels == ["melanoma", "nevus", "x ray/normal"]
    assert [r.prompt for r in m.variants("melanoma")] == [
        "dermoscopy image of melanoma with atypical network",
        "dermoscopy of melanoma showing blue-white veil",
    ]
    assert m.rows[0].negative_prompt == "blurry" and m.rows[1].negative_prompt == ""
    assert m.weights() == {"melanoma": 1.0, "nevus": 1.0, "x ray/normal": 1.0}
    assert m.rows[-1].mode == "L" and len(m.sha256) == 64


def test_weight_given_once_applies_to_all_variants_of_a_class(tmp_path):
    m = load_manifest(write(tmp_path, "label,prompt,weight\na,p1,3\na,p2,\nb,p3,\n"))
    assert m.weights() == {"a": 3.0, "b": 1.0}
    assert all(r.weight == 3.0 for r in m.variants("a"))


def test_jsonl_manifest(tmp_path):
    path = write(
        tmp_path,
        '{"label": "a", "prompt": "x-ray of {label}"}\n\n{"label": "b", "prompt": "q", "weight": 2}\n',
        name="m.jsonl",
    )
    m = load_manifest(path)
    assert [r.prompt for r in m.rows] == ["x-ray of a", "q"] and m.weights()["b"] == 2.0


def test_literal_braces_are_kept(tmp_path):
    m = load_manifest(write(tmp_path, "label,prompt\na,{{not a placeholder}} {label}\n"))
    assert m.rows[0].prompt == "{not a placeholder} a"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "manifest is empty"),
        ("label,prompt\n", "header but no rows"),
        ("label,text\na,b\n", ":1: missing required column 'prompt' (found: label, text)"),
        ("label,prompt\na,ok\n,missing label\n", ":3: column 'label' is empty"),
        ("label,prompt\na,\n", ":2: column 'prompt' is empty"),
        (
            "label,prompt,site\na,image of {organ},x\n",
            ":2: column 'prompt': unknown placeholder {organ} (available: {label}, {label_text}, {site})",
        ),
        (
            "label,prompt,negative_prompt\na,p,{nope}\n",
            ":2: column 'negative_prompt': unknown placeholder {nope}",
        ),
        ("label,prompt\na,image of {label\n", ":2: column 'prompt': bad template"),
        ("label,prompt,weight\na,p,abc\n", ":2: column 'weight': 'abc' is not a positive number"),
        ("label,prompt,weight\na,p,0\n", ":2: column 'weight': '0' is not a positive number"),
        ("label,prompt,weight\na,p,-2\n", ":2: column 'weight': '-2' is not a positive number"),
        ("label,prompt,weight\na,p,inf\n", ":2: column 'weight': 'inf' is not a positive number"),
        (
            "label,prompt,weight\na,p,1\na,q,2\n",
            ":3: column 'weight': class 'a' has weight 2 here but 1 on line 2",
        ),
        ("label,prompt,mode\na,p,CMYK\n", ":2: column 'mode': 'CMYK' is not one of RGB, L"),
        ("label,prompt\na,p,extra\n", ":2: more values than the 2 columns"),
    ],
)
def test_bad_manifest_names_file_line_and_column(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(MedisynError) as err:
        load_manifest(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path, "", raw="label,prompt\na,ok\nb,caf\xe9\n".encode("latin-1"))
    with pytest.raises(MedisynError, match=r"m\.csv:3: not UTF-8 \(byte 0xe9\)"):
        load_manifest(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MedisynError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(MedisynError, match="is a folder"):
        load_manifest(tmp_path)


def test_bad_jsonl_line(tmp_path):
    path = write(tmp_path, '{"label": "a", "prompt": "p"}\n{"label": \n', name="m.jsonl")
    with pytest.raises(MedisynError, match=r"m\.jsonl:2: invalid JSON"):
        load_manifest(path)


@pytest.mark.parametrize("path", sorted((REPO / "prompts").glob("*.csv")), ids=lambda p: p.name)
def test_shipped_manifests_are_valid(path):
    m = load_manifest(path)
    assert len(m.labels) >= 2
    assert all("{" not in row.prompt for row in m.rows)
