"""Entry-point helpers shared by every script.

A user error (bad flag, missing file, foreign pickle) is reported as a single line
``error: <what is wrong and what to do>`` on stderr with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Any, Callable, NoReturn

from utils.errors import UserError, one_line


def run_cli(main: Callable[..., Any], argv: list[str] | None = None) -> int:
    """Run a script's ``main`` from the command line; returns the exit status.

    The command line is read strictly against ``main``'s flags (a :class:`utils.cli.flags.FlagSet`
    attached by ``FlagSet.command``)
    before any work; ``--help`` (or ``-h``) goes to Fire, which shows the flags and their help.
    A :class:`UserError` becomes ``error: ...`` and exit status 2. Output is line-buffered, so
    that a log file shows each line as it is printed.
    """
    argv = sys.argv[1:] if argv is None else argv
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    try:
        if any(word in ("--help", "-h", "--helpfull") for word in argv) or "--" in argv:
            return _fire_help(main, argv)
        main(**main._flagset.parse_argv(argv))
        return 0
    except UserError as exc:
        print("error: " + one_line(str(exc)), file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours, and no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


def _fire_help(main: Callable[..., Any], argv: list[str]) -> int:
    import fire  # imported here so that library modules stay importable without it

    rest = argv[argv.index("--") + 1:] if "--" in argv else argv
    if not any(word in ("--help", "-h", "--helpfull") for word in rest):
        raise UserError("after '--' only --help is understood; every flag goes before it")
    try:
        fire.Fire(main, command=["--help"], name=os.path.basename(sys.argv[0] or "script"))
    except SystemExit as exc:  # Fire exits after showing help
        return int(exc.code or 0)
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the benchmark scripts, with the project's one-line errors: an unknown flag is
    named with the nearest known one, and every error is ``error: ...`` with exit status 2.
    Abbreviations are refused too (``--smal`` is a typo, not ``--small``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            word = extra[0]
            known = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
            close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            kind = "flag" if word.startswith("-") else "argument"
            self.error(f"unknown {kind} {word}{hint}")
        return parsed

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print(f"error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(2)
