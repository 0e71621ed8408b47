"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits with status 2."""


class PaDTError(ValueError):
    """Bad input: the message names the problem and the fix."""
