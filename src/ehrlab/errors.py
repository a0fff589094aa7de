"""Errors a user can cause and fix: bad paths, missing tables or columns, unknown options.

`run.py` and the command-line entry points catch `UserInputError` and print its message
alone (no stack trace) before exiting non-zero; anything else is a bug and keeps its trace.
"""


class UserInputError(Exception):
    """Bad input that the user can fix; the message names the thing and the fix."""
