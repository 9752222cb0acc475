"""Errors a user can act on: the CLI prints them on one line and exits 2 (Interrupted: 75)."""


class MedisynError(ValueError):
    """Bad input or a problem the user can fix (file, value, option)."""


class Interrupted(Exception):
    """SIGTERM / SIGUSR1 arrived: the batch in flight was finished and the run can be resumed."""

    exit_code = 75  # EX_TEMPFAIL: the SLURM script requeues the task


class Cancelled(Interrupted):
    """Ctrl-C (SIGINT): the run stopped at once; the batches already done are kept."""

    exit_code = 130
