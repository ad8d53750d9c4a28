"""Serving-side errors. (serve must not import sft, which pulls in torch, so it has its own.)"""

from __future__ import annotations

import functools
import sys


class ServeError(Exception):
    """Bad input (bundle, file, option): one line on stderr, exit code 2."""

    exit_code = 2


def report_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ServeError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    return wrapper
