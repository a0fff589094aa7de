"""How the command-line entry points turn errors into messages and exit codes.

Library code raises; only these functions decide what a user sees:
- a `UserInputError` (bad option, bad file) is one line on stderr and exit status 2;
- anything else is a bug and keeps its traceback.
In a multirun, a job never exits the process: it raises `JobFailed` with that one line, so
that the launcher runs the remaining jobs and the sweeper (hydra_plugins/ehrlab_sweeper)
lists every failed job at the end.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from ehrlab.errors import UserInputError

T = TypeVar("T")
log = logging.getLogger("ehrlab")


class JobFailed(Exception):
    """One job of a multirun failed; the message says why in one line."""


def user_error_in(error: BaseException) -> UserInputError | None:
    """The UserInputError behind `error`, if any: Hydra's instantiate wraps exceptions raised
    in constructors (InstantiationException), so look along the cause chain."""
    while error is not None:
        if isinstance(error, UserInputError):
            return error
        error = error.__cause__ or error.__context__
    return None


def one_line_reason(error: BaseException) -> str:
    """What went wrong, in one line: a user error's message, else the type and first line."""
    if isinstance(error, JobFailed):
        return str(error)
    user_error = user_error_in(error)
    if user_error is not None:
        return " ".join(str(user_error).split())
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"


def exit_on_user_error(function: Callable[..., T], *args, **kwargs) -> T:
    """Call `function`; a UserInputError prints its message alone and exits with status 2."""
    try:
        return function(*args, **kwargs)
    except Exception as error:
        user_error = user_error_in(error)
        if user_error is None:
            raise
        print(f"ehrlab: error: {user_error}", file=sys.stderr)
        sys.exit(2)


def run_job(function: Callable[..., T], *args, multirun: bool = False, **kwargs) -> T:
    """The body of one Hydra job: a single run exits as `exit_on_user_error` does; a job of a
    multirun raises `JobFailed` (a crash's traceback goes to the job's log first)."""
    if not multirun:
        return exit_on_user_error(function, *args, **kwargs)
    try:
        return function(*args, **kwargs)
    except Exception as error:
        reason = one_line_reason(error)
        if user_error_in(error) is None:
            log.exception("job crashed")
        print(f"ehrlab: error: {reason}", file=sys.stderr)
        raise JobFailed(reason) from None
