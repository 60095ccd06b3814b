"""Typed command-line flags: one record per flag, checked before any work.

Every flag of every script is a :class:`Flag` (name, kind, default, one line of help), grouped in
:mod:`utils.cli.config`. From those records come a script's Fire signature and parse functions
(:meth:`FlagSet.command`), its ``--help`` and the flag reference of docs/flags.md, the strict check
of a command line's words before Fire reads it (:meth:`FlagSet.words`), the check of keyword
arguments when a stage is called from Python (:meth:`FlagSet.settings`), and the commands that
``reproduce_table.py`` and stage 2 print (:meth:`FlagSet.render`).

The command line has Fire's syntax (``--flag value``, ``--flag=value``, a bare ``--flag`` or
``--noflag`` for booleans, lists as ``[a,b]`` or ``a,b``, Fire's one-letter short flags), but
every value is read as its flag's kind says rather than guessed from its spelling: a path flag
stays a string when it looks like a number, ``--overwrite no`` is False, ``--epochs 1.9`` and
``--schedule foo`` are refused, and so are unknown flags and stray positional words.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import re
import shlex
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from utils.errors import UserError
from utils.cli.kinds import Bool, Kind


# ----------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    """One command-line flag.

    Args:
        name: the flag (``--name``), also the keyword of the stage function.
        kind: how values are read and checked.
        default: the value when the flag is not given.
        help: one line for ``--help``.
    """
    name: str
    kind: Kind
    default: Any
    help: str

    def with_default(self, default: Any, help: str | None = None) -> "Flag":
        return replace(self, default=default, help=help or self.help)


class Settings(Mapping):
    """The checked values of a flag set; read as ``settings.epochs`` or ``settings['epochs']``."""

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("settings are read-only; use replace()")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self._values!r})"

    def replace(self, **changes: Any) -> "Settings":
        return Settings({**self._values, **changes})


# Abbreviations people type, mapped to the flag they mean (suggested, never accepted).
_COMMON = {"lr": "learning_rate", "bs": "batch_size", "seed": "manual_seed", "wd": "weight_decay",
           "arch": "model_arch", "model": "model_arch", "data": "data_path", "epoch": "epochs",
           "k": "samples_per_class", "resume": "resume_path", "out": "output_path", "output": "output_path"}


class FlagSet:
    """The flags of one script, in ``--help`` order, and what is derived from them.

    Args:
        flags: the flag records.
        check: cross-flag checks run on the settings (after each flag's own check); returns the
            settings, possibly completed.
    """

    def __init__(self, flags: Iterable[Flag], check: Callable[[Settings], Settings] | None = None):
        self.flags: dict[str, Flag] = {}
        for flag in flags:
            if flag.name in self.flags:
                raise ValueError(f"flag {flag.name} defined twice")
            self.flags[flag.name] = flag
        self._check = check

    def __iter__(self) -> Iterator[Flag]:
        return iter(self.flags.values())

    def __contains__(self, name: str) -> bool:
        return name in self.flags

    def __getitem__(self, name: str) -> Flag:
        return self.flags[name]

    # ------------------------------------------------------------------ checking

    def unknown(self, name: str) -> UserError:
        """The error for a flag this set does not have, with the nearest name as a hint."""
        guess = _COMMON.get(name) if _COMMON.get(name) in self.flags else None
        if guess is None:
            close = difflib.get_close_matches(name, list(self.flags), n=1, cutoff=0.6)
            guess = close[0] if close else None
        hint = f" (did you mean --{guess}?)" if guess else ""
        return UserError(f"unknown flag --{name}{hint}; see --help for the flags")

    def settings(self, values: Mapping[str, Any] | None = None, **more: Any) -> Settings:
        """Check keyword values (from Python or from :meth:`parse_argv`), fill in the defaults,
        and run the cross-flag checks."""
        given = {**(values or {}), **more}
        for name in given:
            if name not in self.flags:
                raise self.unknown(name)
        out = {}
        for flag in self:
            value = given.get(flag.name, flag.default)
            out[flag.name] = value if value is flag.default and flag.name not in given else \
                flag.kind.check(value, flag.name)
        settings = Settings(out)
        return self._check(settings) if self._check else settings

    def words(self, argv: Sequence[str]) -> dict[str, str]:
        """Read a command line's structure the way Fire does: ``{name: the text of its value}``
        (``'True'`` / ``'False'`` for a bare boolean flag and its ``--no`` form), nothing parsed yet.

        Raises:
            UserError: an unknown flag (with the nearest name), a flag given twice or without a
                value, or a positional word; Fire would misread each of them.
        """
        short = self.short_flags()
        out: dict[str, str] = {}
        i = 0
        while i < len(argv):
            word = argv[i]
            if not _is_flag(word):
                raise UserError(f"unexpected argument {word!r}: every value follows its --flag "
                                "(e.g. --epochs 10); see --help")
            body = word[2:] if word.startswith("--") else word[1:]
            name, eq, text = body.partition("=")
            name = name.replace("-", "_") if name.replace("-", "_") in self.flags else name
            if not word.startswith("--"):
                if name not in short:
                    raise UserError(f"unknown flag {word}; see --help for the flags")
                name = short[name]
            negated = name.startswith("no") and name not in self.flags and name[2:] in self.flags \
                and isinstance(self.flags[name[2:]].kind, Bool)
            key = name[2:] if negated else name
            if key not in self.flags:
                raise self.unknown(name)
            if key in out:
                raise UserError(f"--{key} is given twice")
            bare = i + 1 == len(argv) or _is_flag(argv[i + 1])
            if negated:
                if eq:
                    raise UserError(f"--{name} takes no value")
                out[key] = "False"
            elif eq:
                out[key] = text
            elif isinstance(self.flags[key].kind, Bool) and bare:
                out[key] = "True"  # a bare boolean flag
            elif not bare:
                out[key] = argv[i + 1]
                i += 1
            else:
                raise UserError(f"--{key} needs a value")
            i += 1
        return out

    def parse_argv(self, argv: Sequence[str]) -> dict[str, Any]:
        """``{name: value}`` of the flags a command line gives, each value read by its flag's kind
        (what Fire hands ``main`` through :meth:`parse_functions`)."""
        return {name: self.flags[name].kind.parse(text, name) for name, text in self.words(argv).items()}

    def parse_functions(self) -> dict[str, Callable[[str], Any]]:
        """Fire's parse function of every flag: its kind reading the flag's text (a bad value raises
        UserError)."""
        return {f.name: functools.partial(_parse, f.kind, f.name) for f in self}

    def short_flags(self) -> dict[str, str]:
        """Fire's one-letter flags: a letter that begins exactly one flag name."""
        firsts: dict[str, list[str]] = {}
        for name in self.flags:
            firsts.setdefault(name[0], []).append(name)
        return {letter: names[0] for letter, names in firsts.items() if len(names) == 1}

    # ------------------------------------------------------------------ deriving

    def signature(self) -> inspect.Signature:
        return inspect.Signature([
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                              annotation=f.kind.python_type) for f in self])

    def docstring(self, summary: str) -> str:
        lines = [summary.strip(), "", "Args:"]
        lines += [f"    {f.name}: {f.help}" for f in self]
        return "\n".join(lines) + "\n"

    def command(self, summary: str) -> Callable[[Callable], Callable]:
        """Decorate a script's ``main(**flags)``: Fire reads its signature from here and parses each
        flag with the flag's own kind (``fire.decorators.SetParseFns``)."""
        def decorate(fn: Callable) -> Callable:
            import fire.decorators  # the decorator only records metadata: Fire's import is cheap

            fn.__signature__ = self.signature()
            fn.__doc__ = self.docstring(summary)
            fn._flagset = self  # private: Fire would list a public attribute as a command group
            fn._summary = summary.strip()
            return fire.decorators.SetParseFns(**self.parse_functions())(fn)
        return decorate

    def help_text(self, script: str, summary: str) -> str:
        """``--help``: what the script does, then every flag once with its kind, help and default."""
        lines = [f"{script}: {summary.strip()}", "", f"usage: python {script} [--flag VALUE ...]", "",
                 "flags (a boolean also as a bare --flag or --noflag; a list as [a,b]):"]
        for f in self:
            lines.append(f"    --{f.name}={f.kind.label.upper().replace(' ', '_')}")
            lines.append(f"        {f.help}{default_note(f)}")
        return "\n".join(lines) + "\n"

    def render(self, script: str, values: Mapping[str, Any], launcher: str = "python",
               keep: Sequence[str] = ()) -> str:
        """The shell command that runs ``script`` with ``values``: the flags that differ from their
        defaults, plus those named in ``keep``."""
        unknown = [name for name in values if name not in self.flags]
        if unknown:
            raise self.unknown(unknown[0])
        words = [launcher, script]
        for name, flag in self.flags.items():
            if name not in values:
                continue
            value = values[name]
            if name not in keep and _same(value, flag.default):
                continue
            if isinstance(flag.kind, Bool):
                words.append(f"--{name}" if value else f"--no{name}")
            else:
                words += [f"--{name}", shlex.quote(flag.kind.render(value))]
        return " ".join(words)


def states_default(help: str) -> bool:
    """Whether a flag's help already says what its default is (then ``--help`` adds no second one)."""
    return re.search(r"\bdefault", help, re.I) is not None


def default_note(flag: Flag) -> str:
    """What ``--help`` appends to a flag's help: `` (default: ...)``, unless the help states the
    default itself or the default is empty (derived, which the help explains)."""
    if flag.default == "" or states_default(flag.help):
        return ""
    return f" (default: {'none' if flag.default is None else flag.kind.render(flag.default)})"


def _is_flag(word: str) -> bool:
    """Whether Fire takes ``word`` for a flag: ``--x``, or ``-`` and a letter (``-1`` is a value)."""
    return word.startswith("--") or re.match(r"^-[a-zA-Z]", word) is not None


def _parse(kind: Kind, name: str, text: Any) -> Any:
    return kind.parse(str(text), name)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b or (a is None and b is None)
