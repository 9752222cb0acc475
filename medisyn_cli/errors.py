"""Errors a user can act on: the CLI prints them on one line and exits 2."""


class MedisynError(ValueError):
    """Bad input or a problem the user can fix (file, value, option)."""


class CopiesFound(RuntimeError):
    """Raised when a class keeps producing near-copies beyond the attempt bound."""
