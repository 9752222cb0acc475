"""Same inputs, same outputs across versions: run one small pipeline with two versions of medisyn and compare
every file they write.

Each version runs from its own source tree (the base revision exported with `git archive`, and this working
tree), as `python -m medisyn_cli` in a fresh process: `index build` of the fixture images, `generate` of the
bundled model screened against that index in both formats, and `screen` of the result. Every output file is
compared byte for byte; JSON files, whose records hold times, run ids and paths, are compared with those fields
left out (listed in VOLATILE), and cards and reports with their time stamps masked. Used for the re-layout
(issue #15), which must change no output.

    python benchmarks/identity.py --base 87af3b6     # the last commit before the re-layout

It also times `medisyn --help` of both versions (median of alternating runs): the re-layout moved medisyn's own
imports to module level, and `--help` must stay as fast as before.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "identity"
VOLATILE = {  # times, ids and timings only: both versions run on the same inputs at the same paths
    "created",
    "started",
    "finished",
    "seconds",
    "elapsed_s",
    "run_id",
    "pid",
    "time",
    "wall_s",
    "images_per_second",
    "rate",
    "started_at",
    "finished_at",
    "updated",
}


def export(revision: str, target: Path) -> Path:
    """The package and its data at `revision`, as files under `target`."""
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "tree.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), revision], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target / "tree", filter="data")
    return target / "tree"


def run_version(tree: Path, work: Path, inputs: Path, n: int) -> None:
    """index build -> generate --index -> screen, with the medisyn of `tree`, in `work` (the same path for every
    version, so paths recorded in the outputs agree)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    commands = [
        ["index", "build", str(inputs / "images"), "--out", str(work / "index")],
        [
            "generate",
            "--manifest",
            str(inputs / "manifest.csv"),
            "--n",
            str(n),
            "--index",
            str(work / "index"),
            "--out",
            str(work / "synth"),
            "--threads",
            "1",
            "--model",
            str(inputs / "model"),
        ],
        [
            "screen",
            str(work / "synth"),
            "--index",
            str(work / "index"),
            "--report",
            str(work / "audit"),
            "--keep-out",
            str(work / "clean"),
        ],
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "medisyn_cli", *command], env=env, cwd=work, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{tree}: medisyn {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def help_seconds(trees: dict[str, Path], repeats: int) -> dict[str, float]:
    """Median wall time of `medisyn --help` per version, runs alternating between versions (same load)."""
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "medisyn_cli", "--help"], env=env, capture_output=True, check=True
            )
            times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def stable(value):
    """A JSON value without the fields that name times, runs and paths."""
    if isinstance(value, dict):
        return {key: stable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [stable(item) for item in value]
    return value


def compare(base: Path, new: Path) -> dict:
    """file -> 'identical' | 'same after removing volatile fields' | 'DIFFERENT' | 'only in base/new'."""
    names = {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()}
    names |= {str(p.relative_to(new)) for p in new.rglob("*") if p.is_file()}
    verdicts = {}
    for name in sorted(names):
        a, b = base / name, new / name
        if not (a.exists() and b.exists()):
            verdicts[name] = "only in " + ("base" if a.exists() else "new")
        elif a.read_bytes() == b.read_bytes():
            verdicts[name] = "identical"
        elif _json_like(name) and stable(json.loads(a.read_text())) == stable(json.loads(b.read_text())):
            verdicts[name] = "same after removing volatile fields"
        elif name.endswith((".md", ".html", ".csv")) and _masked(a) == _masked(b):
            verdicts[name] = "same after removing volatile fields"
        else:
            verdicts[name] = "DIFFERENT"
    return verdicts


def _masked(path: Path) -> str:
    """A text file with its time stamps masked (dataset cards and reports say when they were made)."""
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00)?", "<time>", path.read_text())


def _json_like(name: str) -> bool:
    return name.endswith(".json") or name.endswith(".medisyn")


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix in {".png", ".parquet", ".csv"}
    ):
        sha.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base", default="87af3b6", help="revision to compare with (default: before the re-layout)"
    )
    parser.add_argument("--n", type=int, default=24, help="images to generate")
    parser.add_argument("--keep", type=Path, help="copy both versions' outputs here, to inspect differences")
    parser.add_argument("--help-repeats", type=int, default=7, help="`medisyn --help` timings per version")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"base": export(args.base, tmp / "base-src"), "new": REPO}
        inputs = tmp / "inputs"  # the same images and manifest, at the same paths, for both versions
        shutil.copytree(REPO / "tests" / "fixtures" / "images", inputs / "images")
        shutil.copy(REPO / "prompts" / "mini_dermoscopy.csv", inputs / "manifest.csv")
        shutil.copytree(REPO / "medisyn_cli" / "bundled" / "mini", inputs / "model")
        seconds = {}
        for name, tree in trees.items():
            (tmp / "run").mkdir()
            started = time.time()
            run_version(tree, tmp / "run", inputs, args.n)
            seconds[name] = round(time.time() - started, 1)
            (tmp / "run").rename(tmp / name)
        verdicts = compare(tmp / "base", tmp / "new")
        help_time = help_seconds(trees, args.help_repeats)
        data_digest = {name: digest(tmp / name) for name in trees}
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("base-src"))
    counts = {
        verdict: sum(v == verdict for v in verdicts.values()) for verdict in sorted(set(verdicts.values()))
    }
    revision = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result = {
        "base": args.base,
        "new": f"{revision} (working tree)",
        "n": args.n,
        "files": len(verdicts),
        "verdicts": counts,
        "data_sha256": data_digest,
        "seconds": seconds,
        "help_seconds": help_time,
        "help_ratio": round(help_time["new"] / help_time["base"], 3),
        "per_file": verdicts,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "identity.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"base {args.base} vs {result['new']}: {len(verdicts)} files; "
        + ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    )
    print(
        f"medisyn --help: base {help_time['base']:.3f} s, new {help_time['new']:.3f} s "
        f"(ratio {result['help_ratio']:.2f}, median of {args.help_repeats})"
    )
    print(f"images + parquet + csv sha256: base {data_digest['base'][:16]}, new {data_digest['new'][:16]}")
    different = [
        name
        for name, verdict in verdicts.items()
        if verdict not in ("identical", "same after removing volatile fields")
    ]
    for name in different:
        print(f"  {verdicts[name]}: {name}")
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
