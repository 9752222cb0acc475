"""`medisyn publish`: a finished dataset to the Hugging Face Hub (card, Parquet, WebDataset; never local paths)."""

from __future__ import annotations

from pathlib import Path

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import argument, json_option, option
from medisyn_cli.cli.tables import Tables, column
from medisyn_cli.core.progress import console
from medisyn_cli.dataset.publish import PublishConfig, hub_client, plan_upload, publish


def publish_command(
    dataset: Path = argument(PublishConfig, "dataset"),
    repo: str = option(PublishConfig, "repo", "--repo"),
    private: bool = option(PublishConfig, "private", "--private"),
    dry_run: bool = option(PublishConfig, "dry_run", "--dry-run"),
    json_path: str | None = json_option(),
) -> None:
    """Upload a finished dataset to a Hugging Face Hub dataset repository: its card, Parquet and WebDataset files.

    --json writes the table of files (uploaded, or with --dry-run those that would be).

    Example: medisyn publish derm-synth --repo my-lab/derm-synth --private --dry-run
    """
    with Tables("publish", json_path) as tables, errors_as_exit_codes():
        files = plan_upload(dataset)
        if not dry_run:
            hub_client()  # offline or no token: one line before anything is listed as uploading
        rows = [{"file": upload.path_in_repo, "bytes": upload.size} for upload in files]
        rows.append({"file": "all", "bytes": sum(u.size for u in files)})
        tables.values.update(repo=repo, dry_run=dry_run)
        tables.show(
            "files",
            f"{'would upload' if dry_run else 'uploading'} to {repo}",
            [column("file"), column("bytes", fmt=lambda v: f"{v:,}")],
            rows,
            style=lambda row: "bold" if row is rows[-1] else None,
        )
        if dry_run:
            console.print("--dry-run: nothing was sent", highlight=False)
            return
        url = publish(dataset, repo, private)
        tables.values["url"] = url
    console.print(f"published: {url}", highlight=False, soft_wrap=True)
