"""Stage-3 results: one JSON per run, and ``results.csv`` with one row per run, made from them.

The JSONs in ``{results_dir}/runs/`` are the record; ``results.csv`` is derived from them. After a
run writes its JSON (atomically), the CSV is rebuilt whole from every JSON, under an exclusive
``flock``, and renamed into place: rows land whole or not at all (a full disk leaves the previous
CSV), a rerun with ``--overwrite`` replaces its own row, and a run killed between its JSON and the
CSV gets its row with the next write. What the old CSV held that no JSON explains (rows or values
added by hand, rows whose JSON is gone) is kept in a file that is never replaced, and said.
"""
from __future__ import annotations

import csv
import datetime
import functools
import io
import itertools
import json
import os
import subprocess
from typing import Any, Mapping

from utils import paths
from utils.errors import UserError
from utils.files.atomic import atomic_write, ensure_dir
from utils.files.locks import exclusive

RECIPE_COLUMNS = ("learning_rate", "momentum", "weight_decay", "nesterov", "schedule", "gamma", "batch_size",
                  "augment", "precision", "compile", "world_size", "commit")
RESULT_COLUMNS = ("name", "dataset", "model_arch", "method", "score_model_arch", "order", "samples_per_class",
                  "fraction", "coreset_size", "manual_seed", "epochs", *RECIPE_COLUMNS, "weighted",
                  "snapshot_epoch", "selection_model", "best_test_acc", "final_test_acc", "final_train_acc",
                  "converged", "seconds", "score_path")


@functools.lru_cache(maxsize=1)
def project_commit() -> str:
    """The project's git commit (``-dirty`` with uncommitted changes), or '' outside a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def row_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV row of a run's result (lists as ``[a,b]``; missing fields empty)."""
    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(str(v) for v in value) + "]"
        return value
    return {key: cell(result.get(key)) for key in RESULT_COLUMNS}


def write_result(results_dir: str, name: str, result: Mapping[str, Any]) -> str:
    """Write ``runs/<name>.json`` atomically, then bring ``results.csv`` up to date."""
    path = paths.run_json(results_dir, name)
    ensure_dir(os.path.dirname(path))
    # The row the JSON being replaced (--overwrite) gave: the CSV's row of it is explained by it,
    # not a hand edit, once the new JSON has taken its place.
    previous = _checked(results_dir, name)[0] if os.path.isfile(path) else None
    atomic_write(path, lambda f: f.write(json.dumps(dict(result), indent=2, sort_keys=True).encode()))
    try:
        refresh_csv(results_dir, previous=previous)
    except UserError as exc:  # the result is safe in its JSON; say so, and how the row gets added
        why = str(exc).split("; nothing was written")[0]
        raise UserError(f"the run's result is written to {path}, but its row in {paths.results_csv(results_dir)} "
                        f"is not: {why}; free some space, then run the same command again: it adds the row "
                        "without training") from None
    return path


def refresh_csv(results_dir: str, previous: Mapping[str, Any] | None = None) -> str:
    """Rebuild ``results.csv`` from the run JSONs (see the module doc); returns the CSV's path.

    The JSONs are the record, so every JSON is read, every time: a row is what its JSON gives.
    Rows or values of the CSV that no JSON explains (a row added or edited by hand, a row whose
    JSON was removed or damaged) are never dropped silently: the old CSV is first kept as a
    file that is never replaced (:func:`_keep_aside`), with one ``note:`` line. ``previous`` is
    the result a run's new JSON just replaced (``--overwrite``): its old row is explained by it.
    Reading every JSON costs their size (1,000 CIFAR-size runs: under a second), paid once per run."""
    csv_path = paths.results_csv(results_dir)
    with exclusive(paths.lock_of(csv_path)):
        old = _read_rows(csv_path)
        fresh = {}
        for name in run_names(results_dir):
            result, problem = _checked(results_dir, name)
            if not problem:  # else not a result of stage 3: left out (stage 3 warns of it before training)
                fresh[name] = row_of(result)
        text = _csv_text(fresh.values())
        if old is not None:
            replaced = _as_read(_csv_text([row_of(previous)])) if previous is not None else []
            unexplained = _unexplained(old, _as_read(text) + replaced)
            if unexplained:
                kept = _keep_aside(csv_path)
                print(f"note: {csv_path} held rows or values no run explains ({unexplained}); kept as {kept}")
        atomic_write(csv_path, lambda f: f.write(text.encode()))
    return csv_path


def _csv_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _as_read(text: str) -> list[dict]:
    """The rows of CSV ``text`` as a reader of the file sees them (every value text)."""
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _unexplained(old: list[dict], explained: list[dict]) -> str:
    """What of the old rows no JSON explains, in words ('' when everything is explained): each old
    row must match a row of ``explained`` (the JSONs' rows, and the row of a JSON just replaced by
    ``--overwrite``), each of those matching once: a row whose name no JSON has, one listed more
    often than the JSONs list it, or a value that differs from its JSON's is unexplained."""
    pool: dict[str, list[dict]] = {}
    for row in explained:
        pool.setdefault(row["name"], []).append(row)
    found = []
    for row in old:
        name, candidates = row["name"], pool.get(row["name"])
        if candidates is None:
            found.append(f"row {name!r} has no run JSON")
        elif row in candidates:
            candidates.remove(row)
        elif not candidates:
            found.append(f"row {name!r} listed twice")
        else:
            column = next(c for c in RESULT_COLUMNS if row[c] != candidates[0][c])
            found.append(f"row {name!r}: {column} {row[column]!r}, its JSON gives {candidates[0][column]!r}")
    more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
    return "; ".join(found[:3]) + more


def _keep_aside(csv_path: str, name: str = "") -> str:
    """Copy ``csv_path`` to a new file, never replacing one: ``name`` if given and free, else
    ``<csv>.<UTC time>.kept`` (``-2``, ``-3``, ... added while taken); returns its path. A copy
    (the CSV itself is replaced atomically after) so that a crash leaves both."""
    with open(csv_path, "rb") as f:
        data = f.read()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidates = itertools.chain([name] if name else [], (f"{csv_path}.{stamp}{'' if i == 1 else f'-{i}'}.kept"
                                                          for i in itertools.count(1)))
    kept = next(c for c in candidates if not os.path.lexists(c))  # under the CSV's lock: no writer races
    atomic_write(kept, lambda f: f.write(data), replace=False)
    return kept


def run_names(results_dir: str) -> list[str]:
    """The runs with a result JSON in ``{results_dir}/runs/``."""
    runs_dir = paths.runs_dir(results_dir)
    if not os.path.isdir(runs_dir):
        return []
    return sorted(f[:-5] for f in os.listdir(runs_dir) if f.endswith(".json") and not f.startswith("."))


def _checked(results_dir: str, name: str) -> tuple[dict | None, str]:
    """(the result of run ``name``, '') or (None, what is wrong with its JSON)."""
    path = paths.run_json(results_dir, name)
    try:
        result = read_result(path)
    except UserError as exc:
        return None, str(exc)
    if not isinstance(result.get("name"), str):
        return None, f"{path} is not a result of train_on_coresets.py"
    return result, ""


def foreign_results(results_dir: str) -> dict[str, str]:
    """{run name: what is wrong} for the JSONs of ``runs/`` that are not results of stage 3 (put there
    by hand, damaged, or of another program): ``results.csv`` leaves them out. Only JSONs without a
    row are read: a run's check costs the new files, not the whole folder."""
    rows = rows_present(results_dir)
    bad = {}
    for name in run_names(results_dir):
        if name not in rows:
            problem = _checked(results_dir, name)[1]
            if problem:
                bad[name] = problem
    return bad


def read_result(path: str) -> dict:
    """A run's result JSON (a user error when it is unreadable or not an object)."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read run result {path} ({exc}); move it away") from None
    if not isinstance(result, dict):
        raise UserError(f"run result {path} holds a {type(result).__name__}, not a result; move it away")
    return result


def rows_present(results_dir: str) -> set[str]:
    """The runs ``results.csv`` has a row for."""
    return {row["name"] for row in _read_rows(paths.results_csv(results_dir), quiet=True) or ()}


def has_row(results_dir: str, name: str) -> bool:
    """Whether ``results.csv`` has a row for run ``name``."""
    return name in rows_present(results_dir)


def _read_rows(csv_path: str, quiet: bool = False) -> list[dict] | None:
    """The rows of an existing ``results.csv`` (None when there is none). One of other columns (an
    older version) or with a damaged row is kept aside (:func:`_keep_aside`: ``results.csv.bak``
    unless that exists, never replaced) and has no rows: the CSV is rebuilt from the JSONs
    (``quiet``: only read, an unreadable CSV has no rows)."""
    if not os.path.exists(csv_path):
        return None
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != RESULT_COLUMNS:
                raise ValueError("other columns")
            rows = list(reader)
        if any(None in row or any(v is None for v in row.values()) for row in rows):
            raise ValueError("a ragged row")
    except (OSError, ValueError, csv.Error, UnicodeDecodeError):
        if quiet:
            return None
        kept = _keep_aside(csv_path, csv_path + ".bak")
        print(f"note: {csv_path} had other columns or a damaged row; it is kept as {kept} and rebuilt from "
              "the run results")
        return None
    return rows
