"""Errors a user can cause and fix. The CLI turns these into one line and exit code 2."""


class UserError(Exception):
    """Bad input: printed as one line by the CLI, never as a traceback."""


class DataUnavailableError(UserError):
    """A named data source cannot be reached; the message says what to pass instead."""
