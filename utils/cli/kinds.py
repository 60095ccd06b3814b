"""The kinds of flag value: how each is read from the command line, checked when given from Python,
and written back (:class:`Kind` and its integers, floats, booleans, names, paths, choices,
optional values and lists). Used by the flag records of :mod:`utils.cli.flags`.
"""
from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any

from utils.errors import UserError
from utils.paths import check_safe_name
from utils.train.options import COMPILE_BACKENDS, COMPILE_MODES


class Kind:
    """How a flag's value is read from the command line, checked from Python, and written back."""
    python_type: Any = str
    label = "value"

    def parse(self, text: str, flag: str) -> Any:
        """The value of ``--flag text`` (raises UserError)."""
        return self.check(text, flag)

    def check(self, value: Any, flag: str) -> Any:
        """A value given from Python, validated and normalised (raises UserError)."""
        raise NotImplementedError

    def render(self, value: Any) -> str:
        """``value`` as the text :meth:`parse` reads back."""
        return str(value)


def _bad(flag: str, what: str, value: Any) -> UserError:
    return UserError(f"--{flag} takes {what}, got {value!r}")


@dataclass(frozen=True)
class Int(Kind):
    lo: int | None = None
    hi: int | None = None
    python_type = int
    label = "int"

    def parse(self, text: str, flag: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
            raise _bad(flag, "an integer", text)
        return self.check(int(text), flag)

    def check(self, value: Any, flag: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _bad(flag, "an integer", value)
        value = int(value)
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            raise UserError(f"--{flag} must lie in {_range(self.lo, self.hi)}, got {value}")
        return value


@dataclass(frozen=True)
class Float(Kind):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    python_type = float
    label = "float"

    def parse(self, text: str, flag: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _bad(flag, "a number", text) from None
        return self.check(value, flag)

    def check(self, value: Any, flag: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _bad(flag, "a number", value)
        value = float(value)
        too_low = self.lo is not None and (value < self.lo or self.lo_open and value == self.lo)
        too_high = self.hi is not None and (value > self.hi or self.hi_open and value == self.hi)
        if not math.isfinite(value) or too_low or too_high:
            raise UserError(f"--{flag} must be a finite number in "
                            f"{_range(self.lo, self.hi, self.lo_open, self.hi_open)}, got {value:g}")
        return value

    def render(self, value: Any) -> str:
        text = repr(float(value))  # exact, and read back to the same float
        return text[:-2] if text.endswith(".0") else text


def _range(lo, hi, lo_open=False, hi_open=False) -> str:
    def end(v, missing):
        return missing if v is None else (str(v) if isinstance(v, int) else f"{v:g}")
    return f"{'(' if lo_open else '['}{end(lo, '-inf')}, {end(hi, 'inf')}{')' if hi_open else ']'}"


TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


@dataclass(frozen=True)
class Bool(Kind):
    python_type = bool
    label = "bool"

    def parse(self, text: str, flag: str) -> bool:
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise UserError(f"--{flag} takes true/false, yes/no or 1/0 (or the bare flag --{flag}), got {text!r}")

    def check(self, value: Any, flag: str) -> bool:
        if type(value).__name__ == "bool_":  # numpy's bool
            value = bool(value)
        if not isinstance(value, bool):
            raise _bad(flag, "True or False", value)
        return value

    def render(self, value: Any) -> str:
        return "true" if value else "false"


# C0 controls, DEL and C1 controls. A newline or carriage return in a path splits the line of an
# emitted script or a log (and a line-based recipe such as ``grep | sed | bash`` then runs the rest
# as a command); the others hide text on a terminal. No real file or model name needs one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL character", "\t": "a tab"}


def check_no_controls(value: str, what: str) -> str:
    """``value`` if it holds no control character; else a UserError naming ``what``, the first such
    character and its position (0-based). The one check of every text, path and name flag."""
    found = _CONTROL.search(value)
    if found:
        char = found.group()
        name = _CONTROL_NAMES.get(char, f"control character U+{ord(char):04X}")
        raise UserError(f"{what} must not contain control characters ({name} at position {found.start()})")
    return value


def _text(value: Any, flag: str, wanted: str) -> str:
    """``value`` if it is text a file system, a shell script and a terminal carry as one line."""
    if not isinstance(value, str):
        raise _bad(flag, wanted, value)
    return check_no_controls(value, f"--{flag}")


@dataclass(frozen=True)
class Str(Kind):
    """Free text, or one of ``choices`` (matched case-insensitively, returned as spelled there)."""
    choices: tuple[str, ...] = ()
    label = "str"

    def check(self, value: Any, flag: str) -> str:
        value = _text(value, flag, "a string")
        if self.choices:
            for choice in self.choices:
                if choice.lower() == value.lower():
                    return choice
            raise UserError(f"unknown --{flag} {value!r}; choose one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class Path(Kind):
    """A file or folder name: always text, however it looks."""
    label = "path"

    def check(self, value: Any, flag: str) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        return _text(value, flag, "a path")


@dataclass(frozen=True)
class Name(Kind):
    """Text that becomes part of a file name (a run name, a tag); empty means 'derive it'."""
    label = "name"

    def check(self, value: Any, flag: str) -> str:
        if isinstance(value, str):  # the control-character message first, as for paths and text
            check_no_controls(value, f"--{flag}")
        return value if value == "" else check_safe_name(value, f"--{flag}")


@dataclass(frozen=True)
class Choice(Kind):
    """One of a fixed set; ``choices`` may be a callable, for registries filled at run time."""
    choices: Any = ()
    label = "str"

    def names(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def check(self, value: Any, flag: str) -> str:
        return Str(self.names()).check(value, flag)


@dataclass(frozen=True)
class Optional(Kind):
    """``None`` (written ``none``) or a value of ``kind``."""
    kind: Kind = Str()

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"{self.kind.label} or none"

    @property
    def python_type(self):  # type: ignore[override]
        return self.kind.python_type  # Fire's help adds "Optional[...]" for a None default

    def parse(self, text: str, flag: str) -> Any:
        return None if text.strip().lower() == "none" else self.kind.parse(text, flag)

    def check(self, value: Any, flag: str) -> Any:
        return None if value is None else self.kind.check(value, flag)

    def render(self, value: Any) -> str:
        return "none" if value is None else self.kind.render(value)


@dataclass(frozen=True)
class ListOf(Kind):
    """A list: ``[a,b]``, ``a,b`` or one value ``a`` on the command line; a list, tuple or one value
    from Python. Duplicates are kept unless ``unique``."""
    kind: Kind = Str()
    unique: bool = False
    python_type = list

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"list of {self.kind.label}"

    def parse(self, text: str, flag: str) -> list:
        body = text.strip()
        if body[:1] in "[(" and body[-1:] in "])":
            body = body[1:-1]
        items = [item.strip().strip("'\"") for item in body.split(",")] if body.strip() else []
        if any(item == "" for item in items):
            raise UserError(f"--{flag} takes a list such as [a,b], got {text!r}")
        return self._finish([self.kind.parse(item, flag) for item in items], flag)

    def check(self, value: Any, flag: str) -> list:
        if isinstance(value, str):
            return self.parse(value, flag)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return self._finish([self.kind.check(item, flag) for item in items], flag)

    def _finish(self, items: list, flag: str) -> list:
        if self.unique:
            seen = []
            for item in items:
                if item not in seen:
                    seen.append(item)
            return seen
        return items

    def render(self, value: Any) -> str:
        return "[" + ",".join(self.kind.render(v) for v in value) + "]"


@dataclass(frozen=True)
class CompileKind(Kind):
    """``--compile``: a boolean (False: eager; True: the right mode for the device), a mode, or
    a debug backend."""
    label = "bool or mode"
    python_type = bool | str

    def parse(self, text: str, flag: str) -> Any:
        word = text.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        return self.check(word, flag)

    def check(self, value: Any, flag: str) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in COMPILE_MODES + COMPILE_BACKENDS + ("inductor", "auto"):
            return value.lower()
        raise UserError(f"unknown --{flag} {value!r}; use true or false, a mode ({', '.join(COMPILE_MODES)}), "
                        f"or a debug backend ({', '.join(COMPILE_BACKENDS)})")

    def render(self, value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class DeviceKind(Kind):
    """``--device``: auto, cpu, cuda or cuda:N."""
    label = "device"

    def check(self, value: Any, flag: str) -> str:
        if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", value.strip().lower()):
            return value.strip().lower()
        raise UserError(f"unknown --{flag} {value!r}; use auto, cpu, cuda or cuda:N")
