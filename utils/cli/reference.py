"""docs/flags.md, the flag reference, generated from the flag records of :mod:`utils.cli.config`.

    python -m utils.cli.reference          # rewrites docs/flags.md

A test fails when docs/flags.md differs from what this writes, so the reference never drifts from
the flags the scripts take.
"""
from __future__ import annotations

import os

from utils.cli import config
from utils.cli.flags import FlagSet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(ROOT, "docs", "flags.md")
SCRIPTS: tuple[tuple[str, FlagSet, str], ...] = (
    ("get_loss_values.py", config.STAGE1, "Stage 1: train a model and record every training and validation "
                                          "example's loss after every epoch."),
    ("compute_cld_scores.py", config.STAGE2, "Stage 2: a loss file to per-class rankings (CLD, or a baseline with "
                                             "`--method`)."),
    ("train_on_coresets.py", config.STAGE3, "Stage 3: train on the selected examples of each class and report "
                                            "test accuracy."),
    ("reproduce_table.py", config.GRID, "A grid of the three stages, then its table and plot. Stage 1's recipe "
                                        "flags appear twice: `--score_<flag>` for stage 1, `--<flag>` for stage 3 "
                                        "(and for stage 1 where `--score_<flag>` is not given)."),
)


def _cell(text: str) -> str:
    """Text as a Markdown table cell (a pipe would end it, an angle bracket start an HTML tag)."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def flag_reference() -> str:
    """The whole of docs/flags.md."""
    parts = ["# Flags", "",
             "Every flag of every script, generated from the flag records (`python -m utils.cli.reference`); "
             "`--help` prints the same. The command line has Fire's syntax: `--flag value` or `--flag=value`, a "
             "boolean also as a bare `--flag` or `--noflag` (and true/false, yes/no, 1/0), a list as `[a,b]` "
             "or `a,b`. Every value is checked against its flag's type and range before any work; an unknown "
             "flag, a bad value or a stray word is one `error:` line and exit status 2.", ""]
    for script, flags, summary in SCRIPTS:
        parts += [f"## {script}", "", summary, "", "| flag | type | default | meaning |", "| --- | --- | --- | --- |"]
        for f in flags:
            default = "" if f.default == "" else ("none" if f.default is None else f.kind.render(f.default))
            parts.append(f"| `--{f.name}` | {f.kind.label} | {_cell(f'`{default}`' if default else '')} | "
                         f"{_cell(f.help)} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    from utils.files.atomic import atomic_write

    text = flag_reference()
    atomic_write(REFERENCE, lambda f: f.write(text.encode()))
    print(f"wrote {REFERENCE}")
