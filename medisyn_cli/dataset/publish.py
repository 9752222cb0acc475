"""`medisyn publish`: a finished dataset to a Hugging Face Hub dataset repository, portable and marked.

    plan = plan_upload("derm-synth")           # what would be uploaded, offline
    publish("derm-synth", "me/derm-synth")     # create the repo (private if asked) and upload in one commit

What goes up: the dataset card (`README.md`, whose Hugging Face header makes the Parquet files the repo's data),
`parquet/*.parquet` and, where the run wrote them, `webdataset/*.tar`. Never the ImageFolder (a duplicate of the
Parquet images), DICOM files (for a PACS, not the Hub), `_work/`, the run lock, or `run.json` (it records local
paths: the card carries what a reader needs). Before anything is sent, every text file that goes up is checked
for absolute local paths (the dataset's own folder, the home folder, any rooted path): a card that would leak
one is refused with the line that holds it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medisyn_cli.core.errors import MedisynError

# what a dataset repository receives, by folder of the run: pattern -> why
UPLOADED = ("README.md", "parquet/*.parquet", "webdataset/*.tar")
# a rooted path in text (/gpfs/lab/..., C:\\data, ~/models), not a URL (https://...) nor a ratio (images/s)
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(/[\w.-]+/|[A-Za-z]:\\|~/)")


@dataclass(frozen=True)
class PublishConfig:
    """Options of `medisyn publish`: the defaults table of the CLI and of publish's keywords."""

    dataset: str = field(metadata={"help": "A finished medisyn generate output folder."})
    repo: str = field(
        metadata={"help": "Hub dataset repository, e.g. my-lab/derm-synth (created if missing)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    dry_run: bool = field(
        default=False, metadata={"help": "List the files and sizes that would go up; send nothing."}
    )


@dataclass(frozen=True)
class Upload:
    """One file of the upload: where it lies here and where it goes in the repository."""

    local: Path
    path_in_repo: str
    size: int


def plan_upload(dataset: str | Path) -> list[Upload]:
    """The files `publish` would upload from a finished run, checked for local paths; MedisynError if unfit."""
    dataset = Path(dataset)
    if not (dataset / "run.json").is_file():
        raise MedisynError(
            f"{dataset}: not a finished medisyn dataset (no run.json); finish it with --resume"
        )
    if (dataset / "_work").exists():
        raise MedisynError(
            f"{dataset}: the run is not consolidated (_work/ is there); finish it with --resume"
        )
    files = sorted({path for pattern in UPLOADED for path in dataset.glob(pattern) if path.is_file()})
    if not any(path.parent.name == "parquet" for path in files):
        raise MedisynError(f"{dataset}: no parquet/ folder to publish (run generate with --format parquet)")
    if not (dataset / "README.md").is_file():
        raise MedisynError(f"{dataset}: no dataset card (README.md)")
    check_portable(dataset / "README.md", dataset)
    for path in files:
        if path.suffix == ".parquet":
            check_parquet_portable(path, dataset)
    return [Upload(path, path.relative_to(dataset).as_posix(), path.stat().st_size) for path in files]


def check_portable(text_file: Path, dataset: Path) -> None:
    """Refuse a text file that names an absolute local path (it would tell the world where the data lived)."""
    found = first_local_path(text_file.read_text(encoding="utf-8").splitlines(), dataset)
    if found is not None:
        number, line = found
        raise MedisynError(
            f"{text_file}:{number}: names an absolute local path, which publish would upload: {line.strip()[:120]}"
        )


def check_parquet_portable(path: Path, dataset: Path) -> None:
    """Refuse a Parquet file whose schema metadata or `model` values name an absolute local path."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    texts = [value.decode("utf-8", "replace") for value in (schema.metadata or {}).values()]
    if "model" in schema.names:
        texts += [str(v) for v in pq.read_table(path, columns=["model"]).column("model").unique().to_pylist()]
    found = first_local_path(texts, dataset)
    if found is not None:
        raise MedisynError(
            f"{path}: names an absolute local path, which publish would upload: {found[1][:120]}"
        )


def first_local_path(texts: list[str], dataset: Path) -> tuple[int, str] | None:
    """(number from 1, text) of the first of `texts` that names an absolute local path (the dataset's folder, the
    home folder, or any path ABSOLUTE_PATH matches); None if none does."""
    roots = [root for root in {str(dataset.resolve()), str(Path.home())} if len(root) > 1]
    for number, text in enumerate(texts, start=1):
        if any(root in text for root in roots) or ABSOLUTE_PATH.search(text):
            return number, text
    return None


def hub_client():
    """The Hub client and token, or one line saying why there is none (offline, no token)."""
    from huggingface_hub import HfApi, get_token

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise MedisynError(
            "publish: HF_HUB_OFFLINE is set, so nothing can be uploaded (use --dry-run to list)"
        )
    token = get_token()
    if not token:
        raise MedisynError("publish: no Hugging Face token (run `hf auth login` or set HF_TOKEN)")
    return HfApi(), token


def publish(dataset: str | Path, repo: str, private: bool = False) -> str:
    """Create `repo` (a dataset repository) if needed and upload the planned files in one commit; its URL."""
    files = plan_upload(dataset)
    api, token = hub_client()
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True, token=token)
        api.create_commit(
            repo,
            operations=[_add(upload) for upload in files],
            commit_message=f"medisyn publish {Path(dataset).name}",
            repo_type="dataset",
            token=token,
        )
    except Exception as exc:  # network, permission or name errors from the Hub, as one line
        raise MedisynError(
            f"publish to {repo}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    return str(url)


def _add(upload: Upload):
    from huggingface_hub import CommitOperationAdd

    return CommitOperationAdd(path_in_repo=upload.path_in_repo, path_or_fileobj=str(upload.local))
