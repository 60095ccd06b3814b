"""Progress of long work: tqdm bars on a terminal, one flushed line per unit of work elsewhere.

Bars go to stderr and only when stderr is a terminal, so a log file (``> log.txt``, nohup, a
scheduler) never fills with per-batch lines; there each epoch (or grid step) prints one line as it
ends, with an estimate of the time left.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    """Whether progress bars are shown: stderr is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(items: Iterable[T], desc: str, total: int | None = None, unit: str = "batch") -> Iterable[T]:
    """``items`` behind a transient tqdm bar on a terminal; unchanged otherwise."""
    if not interactive():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)


class Sized:
    """An iterator with a known length (so that a bar can show how much is left)."""

    def __init__(self, items: Iterator[T], length: int):
        self.items, self.length = items, length

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return self.length


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Eta:
    """Time left from the mean duration of the units done in this process so far."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.done_before, self.done = total, done, done
        self.started = time.perf_counter()

    def step(self) -> None:
        self.done += 1

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        ran = self.done - self.done_before
        return self.elapsed / ran * (self.total - self.done) if ran else float("nan")

    def text(self) -> str:
        left = self.left()
        return "ETA ?" if left != left else f"ETA {duration(left)}"


def say(line: str) -> None:
    """Print a line, flushed (a log file shows it at once); on a terminal above any progress bar."""
    if interactive():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        print(line, flush=True)


# Where warn() sends its lines instead of stderr, inside routed() (None: stderr).
_route: Callable[[str, str], None] | None = None


def warn(message: str, kind: str = "") -> None:
    """A ``warning: ...`` line on stderr (flushed): the run goes on, but the user should know.
    Inside :func:`routed` the line goes to the router instead, with its ``kind`` ('' for a warning
    that is its own kind; ``"did not fit"`` for a stage-3 model that did not fit its coreset)."""
    line = "warning: " + " ".join(message.split())
    if _route is not None:
        _route(kind, line)
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def routed(to: Callable[[str, str], None]) -> Iterator[None]:
    """Within the block, :func:`warn` calls ``to(kind, line)`` instead of printing: a grid, whose runs
    would each repeat a warning, prints each warning once and sums up the rest (utils.grid.runner)."""
    global _route
    outer, _route = _route, to
    try:
        yield
    finally:
        _route = outer

