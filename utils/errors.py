"""The one error a user sees, and the small checks that raise it.

A user error (bad flag, missing file, foreign pickle) is reported by the scripts as a single line
``error: <what is wrong and what to do>`` on stderr with exit status 2, never as a traceback.
Library functions meant to be called from Python (docs/api.md) raise ``ValueError`` instead.
"""
from __future__ import annotations

import numbers


class UserError(Exception):
    """A problem the user can fix; printed as one line and exit status 2."""


def one_line(message: str) -> str:
    """A message on one line, whatever it quotes (library errors sometimes span several)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name if the
    message is empty: library errors can be long, span several lines, or say nothing."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


def is_int(value: object) -> bool:
    """An integer value (numpy ints count; True/False do not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
