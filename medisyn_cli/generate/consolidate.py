"""Consolidation: when every batch of a run is done, each format (dataset.formats) writes its final folder in plan
order (built under OUT/_work and published by one rename), then rejected.parquet."""

from __future__ import annotations

from pathlib import Path

from medisyn_cli.core.ownership import remove_private
from medisyn_cli.core.store import WorkDir, batch_name
from medisyn_cli.dataset.base import run_info
from medisyn_cli.dataset.formats import get_format


def consolidate(work: WorkDir, formats: tuple[str, ...], rejected_log=None) -> list[dict]:
    """Write the final dataset files from the batches, in plan order; returns the outputs for run.json.

    `rejected_log`: the log class the run's rejections were written with (None: an unscreened run).

    Each format is built under OUT/_work and published by one rename; a consolidation killed after a rename
    finds that format published and describes it instead of building it again.
    """
    run = run_info(work.read_config())
    batches = [batch_name(number) for number in sorted(work.done())]
    outputs = [get_format(name).consolidate(work.root, work.out, batches, run) for name in formats]
    if rejected_log is not None:
        outputs.append(
            _consolidate_rejected(work.root / "rejected", rejected_log(work.out / "rejected.parquet"))
        )
    return outputs


def _consolidate_rejected(source: Path, log) -> dict:
    import pyarrow.parquet as pq

    for batch_file in sorted(source.glob("b-*.parquet")):
        table = pq.read_table(batch_file, schema=log.schema)
        log.handle.write_table(table)
        log.rows += table.num_rows
    return {"format": "rejected", **log.close()}


def remove(work: WorkDir) -> None:
    """Delete the work folder once the dataset is consolidated."""
    remove_private(work.root)
