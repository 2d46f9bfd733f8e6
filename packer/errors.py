"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and how to fix it."""

    exit_code = 2
