"""Readers' answer files: check them against the study key, one precise message per problem."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.study.design import CANNOT_TELL, PAIR_ANSWERS
from medisyn_cli.study.site import ANSWERS_FORMAT, KEY_FORMAT

MAX_ANSWER_BYTES = 2 * 1024 * 1024  # far above a 1,000-item study's file (about 100 KB)


@dataclass(frozen=True)
class Reader:
    """One reader's checked answers: {item id: answer}, their experience and where they came from."""

    id: str
    years: float | None
    role: str
    answers: dict
    source: str
    updated: str = ""


def load_key(study: str | Path) -> dict:
    """STUDY/key.json (MedisynError when missing or not a study key)."""
    path = Path(study) / "key.json"
    if not path.is_file():
        raise MedisynError(f"{path}: no such file (expected a folder written by `medisyn study build`)")
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MedisynError(f"{path}: not JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise MedisynError(f"{path}: not a medisyn study key")
    return key


def check_answers(data, key: dict, source: str = "") -> Reader:
    """A Reader from a parsed answer file, or MedisynError naming what does not match the study."""
    if not isinstance(data, dict) or data.get("format") != ANSWERS_FORMAT:
        raise MedisynError(f'not a medisyn study answer file (no "format": "{ANSWERS_FORMAT}")')
    if data.get("study_id") != key["study_id"]:
        raise MedisynError(f"answers for study {data.get('study_id')!r}, this study is {key['study_id']!r}")
    reader = data.get("reader")
    if not isinstance(reader, dict) or not isinstance(reader.get("id"), str) or not reader["id"].strip():
        raise MedisynError('no reader id ("reader": {"id": ...})')
    years = reader.get("years")
    if years is not None and (
        not isinstance(years, (int, float)) or isinstance(years, bool) or not 0 <= years <= 100
    ):
        raise MedisynError(
            f"reader {reader['id']!r}: years of experience {years!r} is not a number in 0..100"
        )
    entries = data.get("answers")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("item"), str) and "answer" in e for e in entries
    ):
        raise MedisynError('"answers" is not a list of {"item": ..., "answer": ...}')
    answers = _answers(entries, key)
    return Reader(
        reader["id"].strip(),
        years,
        str(reader.get("role") or ""),
        answers,
        source,
        str(data.get("updated") or ""),
    )


def _answers(entries: list[dict], key: dict) -> dict:
    items = {item["id"]: item for item in key["items"]}
    unknown = [str(e["item"]) for e in entries if e["item"] not in items]
    if unknown:
        raise MedisynError(
            f"{len(unknown)} unknown items: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''} (this study has {_id_ranges(key)})"
        )
    repeated = [
        f"{item} ({count} times)" for item, count in Counter(e["item"] for e in entries).items() if count > 1
    ]
    if repeated:
        raise MedisynError(f"items answered more than once: {', '.join(repeated[:5])}")
    classes = list(key["classes"]) + [CANNOT_TELL]
    for entry in entries:
        allowed = PAIR_ANSWERS if items[entry["item"]]["task"] == "pair" else classes
        if entry["answer"] not in allowed:
            raise MedisynError(
                f"item {entry['item']}: answer {entry['answer']!r} is not one of "
                f"{', '.join(map(str, allowed))}"
            )
    return {e["item"]: e["answer"] for e in entries}


def _id_ranges(key: dict) -> str:
    ranges = []
    for task in ("pair", "classify"):
        ids = [item["id"] for item in key["items"] if item["task"] == task]
        if ids:
            ranges.append(f"{ids[0]}-{ids[-1]}")
    return ", ".join(ranges)


def read_answer_file(path: Path, key: dict) -> Reader:
    """One answer file checked against the key; MedisynError starting with the file name."""
    try:
        if path.stat().st_size > MAX_ANSWER_BYTES:
            raise MedisynError(f"larger than {MAX_ANSWER_BYTES // 1024} KB")
        data = json.loads(path.read_text(encoding="utf-8"))
        return check_answers(data, key, str(path))
    except json.JSONDecodeError as exc:
        raise MedisynError(f"{path}: not JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise MedisynError(f"{path}: not UTF-8 text") from exc
    except MedisynError as exc:
        raise MedisynError(f"{path}: {exc}") from exc


def read_answers(paths: list[str | Path], key: dict) -> tuple[list[Reader], list[str]]:
    """Every reader's answers from files and folders (*.json), and one problem line per file left out."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise MedisynError(f"{path}: no such file or folder")
    if not files:
        raise MedisynError(f"{', '.join(map(str, paths))}: no answer files (*.json)")
    readers, problems = [], []
    for file in files:
        try:
            readers.append(read_answer_file(file, key))
        except MedisynError as exc:
            problems.append(str(exc))
    return _one_per_reader(readers, problems)


def _one_per_reader(readers: list[Reader], problems: list[str]) -> tuple[list[Reader], list[str]]:
    """Keep each reader's most complete (then latest) file; name the duplicates left out."""
    best: dict[str, Reader] = {}
    for reader in readers:
        kept = best.get(reader.id)
        if kept is None or (len(reader.answers), reader.updated) > (len(kept.answers), kept.updated):
            best[reader.id] = reader
    for reader in readers:
        kept = best[reader.id]
        if reader is not kept:
            problems.append(
                f"{reader.source}: reader {reader.id!r} again ({len(reader.answers)} answers); "
                f"kept {kept.source} ({len(kept.answers)} answers)"
            )
    return sorted(best.values(), key=lambda r: r.id), problems
