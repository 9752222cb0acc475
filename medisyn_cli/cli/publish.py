"""`medisyn publish`: a finished dataset to the Hugging Face Hub (card, Parquet, WebDataset; never local paths)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from medisyn_cli.cli.common import errors_as_exit_codes
from medisyn_cli.cli.options import argument, option
from medisyn_cli.core.progress import console, results
from medisyn_cli.dataset.publish import PublishConfig, hub_client, plan_upload, publish


def publish_command(
    dataset: Path = argument(PublishConfig, "dataset"),
    repo: str = option(PublishConfig, "repo", "--repo"),
    private: bool = option(PublishConfig, "private", "--private"),
    dry_run: bool = option(PublishConfig, "dry_run", "--dry-run"),
) -> None:
    """Upload a finished dataset to a Hugging Face Hub dataset repository: its card, Parquet and WebDataset files.

    Example: medisyn publish derm-synth --repo my-lab/derm-synth --private --dry-run
    """
    with errors_as_exit_codes():
        files = plan_upload(dataset)
        if not dry_run:
            hub_client()  # offline or no token: one line before anything is listed as uploading
        table = Table(title=f"{'would upload' if dry_run else 'uploading'} to {repo}")
        table.add_column("file")
        table.add_column("bytes", justify="right")
        for upload in files:
            table.add_row(upload.path_in_repo, f"{upload.size:,}")
        table.add_row("all", f"{sum(u.size for u in files):,}", style="bold")
        results.print(table)
        if dry_run:
            console.print("--dry-run: nothing was sent", highlight=False)
            return
        url = publish(dataset, repo, private)
    console.print(f"published: {url}", highlight=False, soft_wrap=True)
