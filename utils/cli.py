"""Entry-point helper shared by every script.

A user error (bad flag, missing file, foreign pickle) is reported as a single line
``error: <what is wrong and what to do>`` on stderr with exit status 2, never as a traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable


class UserError(Exception):
    """A problem the user can fix; printed as one line and exit status 2."""


def run_cli(main: Callable[..., Any]) -> None:
    """Run ``main`` under Fire; turn :class:`UserError` into ``error: ...`` and exit 2.

    The return value of ``main`` is not printed (the scripts print their own summaries and
    return values only for callers that import them).
    """
    import fire  # imported here so that library modules stay importable without it

    try:
        fire.Fire(main, serialize=lambda _result: None)
    except UserError as exc:
        # One line, whatever a message quotes (library errors sometimes span several).
        print("error: " + " ".join(part.strip() for part in str(exc).splitlines() if part.strip()), file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours, and no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        sys.exit(130)


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


def is_int(value: object) -> bool:
    """An integer flag value (Fire gives int; numpy ints count; True/False do not)."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
