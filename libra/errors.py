"""Errors a user can act on. Each prints as one line and sets the exit code."""


class LibraError(Exception):
    """A failure with a one-line, actionable message."""

    exit_code = 1


class ParamsError(LibraError):
    """params.yaml is invalid: wrong key, type or value."""

    exit_code = 2


class InputError(LibraError):
    """An input file (catalog, dataset, user file) is invalid."""

    exit_code = 2
