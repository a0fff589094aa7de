"""Error reporting for the command-line entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from ehrlab.errors import UserInputError

T = TypeVar("T")


def exit_on_user_error(function: Callable[..., T], *args, **kwargs) -> T:
    """Call `function`; a UserInputError prints its message alone and exits with status 2."""
    try:
        return function(*args, **kwargs)
    except UserInputError as error:
        print(f"ehrlab: error: {error}", file=sys.stderr)
        sys.exit(2)
