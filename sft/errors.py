"""User-facing errors: one line naming the file, line or field at fault, and exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class InputError(Exception):
    """Bad input from the user (a file, a column, a value, an option). Reported in one line, exit 2."""

    exit_code = 2


def report_errors(fn: F) -> F:
    """Wrap a CLI entry point: InputError -> 'error: …' on stderr and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
