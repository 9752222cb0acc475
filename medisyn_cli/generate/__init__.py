"""`medisyn generate`: config, manifest, plan, sampler, the run (batches, resume, shards), writers, card, SLURM."""
