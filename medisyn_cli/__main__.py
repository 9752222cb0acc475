"""`python -m medisyn_cli` is the `medisyn` command (used by generated SLURM scripts)."""

from medisyn_cli.cli.entry import main

main()
