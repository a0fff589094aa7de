"""Error reporting for the command-line entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from ehrlab.errors import UserInputError

T = TypeVar("T")


def user_error_in(error: BaseException) -> UserInputError | None:
    """The UserInputError behind `error`, if any: Hydra's instantiate wraps exceptions raised
    in constructors (InstantiationException), so look along the cause chain."""
    while error is not None:
        if isinstance(error, UserInputError):
            return error
        error = error.__cause__ or error.__context__
    return None


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
