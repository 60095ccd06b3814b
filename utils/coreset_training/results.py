"""Stage-3 results: one JSON per run, and ``results.csv`` with one row per run, made from them.

The JSONs in ``{results_dir}/runs/`` are the record; ``results.csv`` is derived from them. After a
run writes its JSON (atomically), the CSV is rewritten whole, under an exclusive ``flock``, from
its current rows plus a row for every JSON it lacks, dropping rows whose JSON is gone, and renamed
into place: rows land whole or not at all (a full disk leaves the previous CSV), a rerun with
``--overwrite`` replaces its own row, and a run killed between its JSON and the CSV gets its row
with the next write.
"""
from __future__ import annotations

import csv
import functools
import io
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
    atomic_write(path, lambda f: f.write(json.dumps(dict(result), indent=2, sort_keys=True).encode()))
    try:
        refresh_csv(results_dir, changed=name)
    except UserError as exc:  # the result is safe in its JSON; say so, and how the row gets added
        why = str(exc).split("; nothing was written")[0]
        raise UserError(f"the run's result is written to {path}, but its row in {paths.results_csv(results_dir)} "
                        f"is not: {why}; free some space, then run the same command again: it adds the row "
                        "without training") from None
    return path


def refresh_csv(results_dir: str, changed: str | None = None) -> str:
    """Rewrite ``results.csv`` from its rows and the run JSONs (see the module doc), reading the
    JSON of ``changed`` and of every run without a row; returns the CSV's path. The runs folder
    exists (the caller wrote a JSON there)."""
    csv_path = paths.results_csv(results_dir)
    with exclusive(paths.lock_of(csv_path)):
        rows = _read_rows(csv_path)
        fresh = {}
        for name in run_names(results_dir):
            known = rows.get(name)
            if known is None or name == changed:  # rows already in the CSV were checked when they were added
                result, problem = _checked(results_dir, name)
                if problem:
                    continue  # not a result of stage 3: left out (stage 3 warns of it before training)
                known = row_of(result)
            fresh[name] = known
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(fresh.values())
        atomic_write(csv_path, lambda f: f.write(buf.getvalue().encode()))
    return csv_path


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
    return set(_read_rows(paths.results_csv(results_dir), quiet=True))


def has_row(results_dir: str, name: str) -> bool:
    """Whether ``results.csv`` has a row for run ``name``."""
    return name in rows_present(results_dir)


def _read_rows(csv_path: str, quiet: bool = False) -> dict[str, dict]:
    """The rows of an existing ``results.csv`` by run name; one of other columns (an older version)
    is kept aside as ``results.csv.bak`` and the CSV is rebuilt from the JSONs (``quiet``: only
    read, an unreadable CSV has no rows)."""
    if not os.path.exists(csv_path):
        return {}
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
            return {}
        os.replace(csv_path, csv_path + ".bak")
        print(f"note: {csv_path} had other columns or a damaged row; it is kept as {csv_path}.bak and rebuilt from "
              "the run results")
        return {}
    return {row["name"]: row for row in rows}
