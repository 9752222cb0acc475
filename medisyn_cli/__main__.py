"""`python -m medisyn_cli` is the `medisyn` command (used by generated SLURM scripts)."""

from .cli import main

main()
