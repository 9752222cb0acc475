"""Plumbing with no domain knowledge: errors, atomic writes, progress, dataset readers, shard arithmetic,
run locks and output-folder ownership, the batch store shared by `generate` and sharded `index build`."""
