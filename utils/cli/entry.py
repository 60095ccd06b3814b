"""The entry point of every script: Fire drives it, and a user error is one line.

:func:`run_cli` checks the words of the command line against the script's flags first (an unknown
flag, a stray word or a missing value is refused with a did-you-mean hint, before torch is
imported), then hands the command line to ``fire.Fire``, which reads each value with the flag's
own parse function (:meth:`utils.cli.flags.FlagSet.parse_functions`) and calls ``main``. ``--help``
prints the script's flags from the same records, with no pager. A :class:`UserError` becomes
``error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

from cld_recorder import RecordError
from utils.errors import UserError, one_line

HELP_WORDS = ("--help", "-h", "--helpfull")


def run_cli(main: Callable[..., Any], argv: list[str] | None = None) -> int:
    """Run a script's ``main`` (decorated by :meth:`utils.cli.flags.FlagSet.command`) from the
    command line; returns the exit status. Output is line-buffered, so that a log file shows each
    line as it is printed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    script = sys.argv[0] or "script"  # as typed (e.g. bench/bench_scores.py), unless it points elsewhere
    script = os.path.relpath(script) if not os.path.relpath(script).startswith("..") else os.path.basename(script)
    try:
        if "--" in argv:  # Fire's own flags (--interactive, --trace, ...) are not offered
            if not any(word in HELP_WORDS for word in argv[argv.index("--") + 1:]):
                raise UserError("after '--' only --help is understood; every flag goes before it")
            argv = ["--help"]
        if any(word in HELP_WORDS for word in argv):
            print(main._flagset.help_text(script, main._summary), end="")
            return 0
        main._flagset.words(argv)  # what Fire would misread is refused here, with the reason
        import fire

        # serialize: the return value is for Python callers; Fire must not print it
        result = fire.Fire(main, command=argv, name=script, serialize=lambda _: None)
        # A benchmark's main returns its exit status; a stage's main returns its output.
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except (UserError, RecordError) as exc:  # RecordError: the trajectory rows and CLD sums (cld_recorder.py)
        print("error: " + one_line(str(exc)), file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours, and no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130
