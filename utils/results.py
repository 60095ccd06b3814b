"""Stage-3 results: one JSON per run and one row per run in a shared CSV.

Several coreset runs may finish at the same moment (a grid on a cluster); the CSV row is appended
under an exclusive ``flock`` on a lock file beside it, so every row lands whole and the header is
written once.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from typing import Any, Mapping

from utils.cli import UserError
from utils.formats import atomic_write, ensure_dir

RESULT_COLUMNS = ("dataset", "model_arch", "score_path", "method", "score_model_arch", "order",
                  "samples_per_class", "fraction", "coreset_size", "manual_seed", "epochs",
                  "best_test_acc", "final_test_acc", "seconds")


def run_json_path(results_dir: str, name: str) -> str:
    return os.path.join(results_dir, "runs", f"{name}.json")


def write_result(results_dir: str, name: str, result: Mapping[str, Any]) -> str:
    """Write ``runs/<name>.json`` atomically, then append its row to ``results.csv``."""
    path = run_json_path(results_dir, name)
    ensure_dir(os.path.dirname(path))
    atomic_write(path, lambda f: f.write(json.dumps(dict(result), indent=2, sort_keys=True).encode()))
    append_row(os.path.join(results_dir, "results.csv"), {k: result.get(k, "") for k in RESULT_COLUMNS})
    return path


def append_row(csv_path: str, row: Mapping[str, Any]) -> None:
    """Append one row (header first if the file is new) under an exclusive lock."""
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=RESULT_COLUMNS).writerow({k: ("" if v is None else v) for k, v in row.items()})
    with open(csv_path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
            if not new:
                try:
                    with open(csv_path, newline="") as f:
                        header = next(csv.reader(f), [])
                except (csv.Error, UnicodeDecodeError):
                    header = ["(unreadable)"]
                if tuple(header) != RESULT_COLUMNS:
                    raise UserError(f"{csv_path} has other columns than this version writes ({', '.join(header)}); "
                                    f"move it away (this run's result is in {os.path.dirname(csv_path)}/runs/)")
            with open(csv_path, "a", newline="") as f:
                if new:
                    f.write(",".join(RESULT_COLUMNS) + "\r\n")
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
