"""The table of a grid (``reproduce_table.py``): ``table.csv``, ``table.md`` and
``accuracy_vs_size.png`` from the run JSONs of the grid's stage-3 steps.

One row per (method, order, scoring model, training model, size, selection model): the mean and
sample standard deviation over seeds of the final-epoch test accuracy, with the weights a model
method scored from (``snapshot_epoch``) and whether its coreset trained weighted. Runs of one row must share their recipe
(learning rate, batch size, schedule, epochs, precision, ...); a table never averages two recipes.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

from utils import paths, progress
from utils.cli.flags import Settings
from utils.errors import UserError
from utils.files.atomic import atomic_write, ensure_dir
from utils.coreset_training import results
from utils.grid.labels import machine_note, recipe_text, row_label, weights_note
from utils.grid.accuracy_plot import plot
from utils.core.selection import ORDERS

TABLE_COLUMNS = ("method", "order", "score_model_arch", "model_arch", "samples_per_class", "fraction",
                 "selection_model", "snapshot_epoch", "weighted", "coreset_size", "n_seeds", "mean_test_acc",
                 "std_test_acc", "min_train_acc", "converged")
# The table averages the accuracy after the last epoch. best_test_acc is the maximum over epochs
# of the *test* accuracy, i.e. chosen on the test set, and so optimistically biased.
ACCURACY_KEY = "final_test_acc"
# What the runs of one row must agree on (a differing one is named): the recorded recipe, less how
# the code was compiled and which commit ran it.
RECIPE_KEYS = ("epochs", *(c for c in results.RECIPE_COLUMNS if c not in ("compile", "commit")), "snapshot_epoch",
               "weighted", "cpu_kernels")


def load_runs(steps: Iterable) -> list[dict]:
    """The result JSONs of this grid's stage-3 runs (only these: other runs in the folder stay out)."""
    return [results.read_result(step.output) for step in steps if step.stage == 3 and os.path.exists(step.output)]


KEY = ("method", "order", "score_model_arch", "model_arch", "samples_per_class", "fraction", "selection_model")


def _key(r: dict) -> tuple:
    return tuple(r.get(k) for k in KEY)


def summarise(runs: Sequence[dict]) -> list[dict]:
    """One row per (method, order, scoring model, training model, size): mean and sample std
    (ddof=1; empty for a single seed) of the final-epoch test accuracy over seeds, the lowest
    accuracy of a run on its own coreset, and whether every run fit its coreset (``converged``)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    rows = []
    for key, members in groups.items():
        _same_recipe(key, members)
        acc = [float(m[ACCURACY_KEY]) for m in members]
        n = len(acc)
        mean = sum(acc) / n
        std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1)) if n > 1 else None
        sizes = sorted({int(m["coreset_size"]) for m in members})
        train = [float(m["final_train_acc"]) for m in members if m.get("final_train_acc") is not None]
        # Runs of earlier versions record no verdict; every seed must have fit its coreset.
        converged = all(m.get("converged", True) is not False for m in members)
        first = members[0]
        rows.append({**dict(zip(KEY, key)), "snapshot_epoch": first.get("snapshot_epoch"),
                     "weighted": bool(first.get("weighted", False)),
                     "coreset_size": sizes[0] if len(sizes) == 1 else round(sum(sizes) / len(sizes)), "n_seeds": n,
                     "mean_test_acc": round(mean, 4), "std_test_acc": None if std is None else round(std, 4),
                     "min_train_acc": round(min(train), 4) if train else None, "converged": converged})
    return rows


def _same_recipe(key: tuple, members: Sequence[dict]) -> None:
    for field in RECIPE_KEYS:
        values = {json.dumps(m.get(field)) for m in members}
        if len(values) > 1:
            raise UserError(f"the runs of {key[0]} ({key[1]}), {key[3]}, size {key[4] or key[5]} differ in {field} "
                            f"({', '.join(sorted(values))}); a table does not average two recipes: use another "
                            "--results_dir or --tag for each recipe")


def order_rows(rows: list[dict], g: Settings) -> list[dict]:
    """Rows in the grid's own order (methods, orders, models as given; sizes ascending)."""
    def rank(values: Sequence, v: Any) -> int:
        return list(values).index(v) if v in values else len(values)

    return sorted(rows, key=lambda r: (rank(g.score_model_arch, r["score_model_arch"]),
                                       rank(g.model_archs, r["model_arch"]), rank(g.methods, r["method"]),
                                       rank(ORDERS, r["order"]), r["samples_per_class"] or 0, r["fraction"] or 0))


def write_table_csv(path: str, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _size_label(r: dict) -> str:
    return f"k={r['samples_per_class']}" if r["samples_per_class"] is not None else f"{100 * r['fraction']:g}%"


def _cell(r: dict) -> str:
    return f"{r['mean_test_acc']:.2f}" + ("" if r["std_test_acc"] is None else f" ± {r['std_test_acc']:.2f}")


def table_markdown(rows: Sequence[dict], g: Settings, machines: str = "") -> str:
    """Paper-style tables: one per (scoring model, training model); method (order) rows, size columns;
    ``machines`` (:func:`utils.grid.labels.machine_note`) heads them."""
    parts = [machines + "\n"] if machines else []
    for score_arch in g.score_model_arch:
        for model_arch in g.model_archs:
            sub = [r for r in rows if r["score_model_arch"] == score_arch and r["model_arch"] == model_arch]
            if not sub:
                continue
            sizes = sorted({(r["samples_per_class"] or 0, r["fraction"] or 0, _size_label(r), r["coreset_size"])
                            for r in sub})
            labels: dict[str, Any] = {}  # size label -> coreset size (the largest: GradMatch may train on fewer)
            for _, _, label, n in sizes:
                labels[label] = max(labels.get(label, 0), n)
            seeds = sorted({r["n_seeds"] for r in sub})
            parts.append(
                f"### {g.dataset}: test accuracy (%) of {model_arch} trained on coresets "
                f"(scores from {score_arch}, {g.score_epochs or g.epochs} epochs, seed {g.score_seed}; "
                f"{g.epochs} training epoch{'s' if g.epochs > 1 else ''})\n\n"
                f"Final-epoch test accuracy, mean ± sample std over {'/'.join(map(str, seeds))} seed(s); "
                f"column: budget per class (coreset size). Recipe: {recipe_text(g)}."
                + weights_note(sub) + _fit_note(sub) + "\n")
            header = "| method (order) | " + " | ".join(f"{label} ({n})" for label, n in labels.items()) + " |"
            lines = [header, "|---|" + "---:|" * len(labels)]
            cells: dict[str, dict[str, str]] = {}  # row label -> size label -> cell of its first row
            for r in sub:
                cell = _cell(r) + ("" if r["converged"] else " †")
                label = row_label(r["method"], r["order"], r.get("selection_model"), r.get("weighted", False))
                cells.setdefault(label, {}).setdefault(_size_label(r), cell)
            for label, row in cells.items():
                lines.append(f"| {label} | " + " | ".join(row.get(size, "") for size in labels) + " |")
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _fit_note(rows: Sequence[dict]) -> str:
    """Whether every run fit its coreset (a model that did not learn its coreset says nothing about it)."""
    fits = [r["min_train_acc"] for r in rows if r["min_train_acc"] is not None]
    if not fits:
        return ""
    if all(r["converged"] for r in rows):
        return f" Every run fit its coreset: lowest accuracy on its own coreset {min(fits):.1f}%."
    return (f" † marks a cell where a run did not fit its coreset (accuracy on it below --fit_threshold; lowest "
            f"{min(fits):.1f}%): its test accuracy says little about the coreset.")


def write_outputs(g: Settings, steps: Sequence, say: Callable[[str], None] = progress.say) -> list[dict]:
    """table.csv, table.md and accuracy_vs_size.png in ``results_dir`` from this grid's runs."""
    runs = load_runs(steps)
    if {r["name"] for r in runs} - results.rows_present(g.results_dir):  # a kill between a JSON and its row
        results.refresh_csv(g.results_dir)
        say(f"note: rows missing from {paths.results_csv(g.results_dir)} were restored from the run results")
    wanted = sum(1 for s in steps if s.stage == 3)
    if len(runs) < wanted:
        say(f"warning: {wanted - len(runs)} of the grid's {wanted} coreset runs have no result yet; "
            "the table holds the others")
    rows = order_rows(summarise(runs), g)
    if not rows:
        raise UserError(f"no results of this grid in {g.results_dir}/runs; run the grid first")
    ensure_dir(g.results_dir)
    files = paths.table_files(g.results_dir)
    write_table_csv(files["csv"], rows)
    md = table_markdown(rows, g, machine_note(runs))
    atomic_write(files["md"], lambda f: f.write(md.encode()))
    plot(files["png"], rows, g)
    written = [files["csv"], files["md"], files["png"], *_pictures(g, steps, rows, files)]
    say("\n" + md)
    say(f"wrote {', '.join(written)}")
    return rows


def _pictures(g: Settings, steps: Sequence, rows: list[dict], files: dict[str, str]) -> list[str]:
    """The pictures the grid has what for (utils.grid.method_figures); returns the files written."""
    from utils.files.losses import load_losses
    from utils.files.scores import load_scores
    from utils.grid import method_figures as figures
    from utils.scoring.overview_figure import overview

    written = []
    if "cld" in g.methods and figures.cld_orders(files["orders"], rows, g):
        written.append(files["orders"])
    scored = {s.flags["method"]: s for s in steps if s.stage == 2 and os.path.exists(s.output)}
    budgets = list(g.samples_per_class or g.fractions)
    if len(scored) >= 2:
        rankings = {m: load_scores(step.output)["indices"] for m, step in scored.items()}
        figures.write_overlap(files["overlap_csv"], files["overlap_png"], figures.method_overlap(rankings, budgets),
                              budgets, g.samples_per_class is None,
                              f"{g.dataset}: how far the methods pick the same examples (mean over classes of the "
                              "per-class top-k Jaccard)")
        written += [files["overlap_csv"], files["overlap_png"]]
    if "cld" in scored and g.trajectories == "full":
        record = load_scores(scored["cld"].output)
        losses = load_losses(scored["cld"].flags["loss_path"])
        overview(files["overview"], losses, record, None, losses.get("data_path") or g.data_path)
        written.append(files["overview"])
    return written
