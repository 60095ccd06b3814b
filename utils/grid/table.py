"""The table of a grid (``reproduce_table.py``): ``table.csv``, ``table.md`` and
``accuracy_vs_size.png`` from the run JSONs of the grid's stage-3 steps.

One row per (method, order, scoring model, training model, size): the mean and sample standard
deviation over seeds of the final-epoch test accuracy. Runs of one row must share their recipe
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
from utils.selection import results
from utils.selection.coreset import ORDERS

TABLE_COLUMNS = ("method", "order", "score_model_arch", "model_arch", "samples_per_class", "fraction",
                 "coreset_size", "n_seeds", "mean_test_acc", "std_test_acc", "min_train_acc")
# The table averages the accuracy after the last epoch. best_test_acc is the maximum over epochs
# of the *test* accuracy, i.e. chosen on the test set, and so optimistically biased.
ACCURACY_KEY = "final_test_acc"
# What the runs of one row must agree on (a differing one is named): the recorded recipe, less how
# the code was compiled and which commit ran it.
RECIPE_KEYS = ("epochs", *(c for c in results.RECIPE_COLUMNS if c not in ("compile", "commit")))


def load_runs(steps: Iterable) -> list[dict]:
    """The result JSONs of this grid's stage-3 runs (only these: other runs in the folder stay out)."""
    runs = []
    for step in steps:
        if step.stage == 3 and os.path.exists(step.output):
            with open(step.output) as f:
                runs.append(json.load(f))
    return runs


def _key(r: dict) -> tuple:
    return (r["method"], r["order"], r["score_model_arch"], r["model_arch"], r.get("samples_per_class"),
            r.get("fraction"))


def summarise(runs: Sequence[dict]) -> list[dict]:
    """One row per (method, order, scoring model, training model, size): mean and sample std
    (ddof=1; empty for a single seed) of the final-epoch test accuracy over seeds, and the mean
    lowest accuracy on the coreset itself (whether training converged)."""
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
        rows.append(dict(zip(TABLE_COLUMNS, (*key, sizes[0] if len(sizes) == 1 else round(sum(sizes) / len(sizes)),
                                             n, round(mean, 4), None if std is None else round(std, 4),
                                             round(min(train), 4) if train else None))))
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


def row_label(method: str, order: str) -> str:
    """A table row's or plot line's name. A random order ignores its file's scores (a uniform draw
    within each class), so it is named as the baseline it is, not after the method it read."""
    return "random (uniform per class)" if order == "random" else f"{method} ({order})"


def _cell(r: dict) -> str:
    return f"{r['mean_test_acc']:.2f}" + ("" if r["std_test_acc"] is None else f" ± {r['std_test_acc']:.2f}")


def table_markdown(rows: Sequence[dict], g: Settings) -> str:
    """Paper-style tables: one per (scoring model, training model); method (order) rows, size columns."""
    parts = []
    for score_arch in g.score_model_arch:
        for model_arch in g.model_archs:
            sub = [r for r in rows if r["score_model_arch"] == score_arch and r["model_arch"] == model_arch]
            if not sub:
                continue
            sizes = sorted({(r["samples_per_class"] or 0, r["fraction"] or 0, _size_label(r), r["coreset_size"])
                            for r in sub})
            labels: dict[str, Any] = {}  # size label -> coreset size of its first (smallest) entry
            for _, _, label, n in sizes:
                labels.setdefault(label, n)
            seeds = sorted({r["n_seeds"] for r in sub})
            converged = [r["min_train_acc"] for r in sub if r["min_train_acc"] is not None]
            parts.append(
                f"### {g.dataset}: test accuracy (%) of {model_arch} trained on coresets "
                f"(scores from {score_arch}, {g.score_epochs or g.epochs} epochs, seed {g.score_seed}; "
                f"{g.epochs} training epoch{'s' if g.epochs > 1 else ''})\n\n"
                f"Final-epoch test accuracy, mean ± sample std over {'/'.join(map(str, seeds))} seed(s); "
                f"column: budget per class (coreset size). Recipe: {recipe_text(g)}."
                + (f" Accuracy of every run on its own coreset: at least {min(converged):.1f}%." if converged else "")
                + "\n")
            header = "| method (order) | " + " | ".join(f"{label} ({n})" for label, n in labels.items()) + " |"
            lines = [header, "|---|" + "---:|" * len(labels)]
            cells: dict[tuple, dict[str, str]] = {}  # (method, order) -> size label -> cell of its first row
            for r in sub:
                cells.setdefault((r["method"], r["order"]), {}).setdefault(_size_label(r), _cell(r))
            for (method, order), row in cells.items():
                lines.append(f"| {row_label(method, order)} | " + " | ".join(row.get(label, "") for label in labels)
                             + " |")
            parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def recipe_text(g: Settings) -> str:
    """The stage-3 recipe in a few words, for captions."""
    schedule = ",".join(map(str, g.schedule)) or "none"
    return (f"SGD lr {g.learning_rate:g} (x{g.gamma:g} after epochs {schedule}), batch {g.batch_size}, "
            f"{g.epochs} epochs, weight decay {g.weight_decay:g}")


def plot(path: str, rows: Sequence[dict], g: Settings) -> None:
    """Accuracy against coreset budget, one line per method/order (and model), with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_fraction = g.samples_per_class is None
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        lines.setdefault((r["method"], r["order"], r["score_model_arch"], r["model_arch"]), []).append(r)
    wide = len(lines) > 8  # many methods: a legend beside the axes, and line styles as well as colours
    fig, ax = plt.subplots(figsize=(9.6 if wide else 6.4, 5.2 if wide else 4.4))
    styles = ["-", "--", ":", "-."]
    for i, ((method, order, score_arch, model_arch), members) in enumerate(lines.items()):
        members = sorted(members, key=lambda r: r["fraction"] if by_fraction else r["samples_per_class"])
        x = [100 * r["fraction"] if by_fraction else r["samples_per_class"] for r in members]
        y = [r["mean_test_acc"] for r in members]
        err = [r["std_test_acc"] or 0.0 for r in members]
        label = row_label(method, order)
        if len(g.model_archs) > 1 or len(g.score_model_arch) > 1:
            label += f", {model_arch}" + (f" / scores {score_arch}" if len(g.score_model_arch) > 1 else "")
        ax.errorbar(x, y, yerr=err, marker="o", markersize=3, capsize=3, label=label, linestyle=styles[i // 10 % 4])
    ax.set_xlabel("coreset size (% of each class)" if by_fraction else "coreset size (examples per class)")
    ax.set_ylabel("final test accuracy (%)")
    seeds = len(g.seeds)
    ax.set_title(f"{g.dataset}: accuracy vs coreset size ({seeds} seed{'s' if seeds > 1 else ''}, mean ± std)\n"
                 f"{', '.join(g.model_archs)}: {recipe_text(g)}", fontsize="small")
    ticks = sorted({100 * f for f in g.fractions} if by_fraction else set(g.samples_per_class))
    if ticks[-1] / max(ticks[0], 1e-9) >= 4:  # budgets usually grow geometrically
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.grid(True, alpha=0.3)
    if wide:
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def write_outputs(g: Settings, steps: Sequence, say: Callable[[str], None] = progress.say) -> list[dict]:
    """table.csv, table.md and accuracy_vs_size.png in ``results_dir`` from this grid's runs."""
    runs = load_runs(steps)
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
    md = table_markdown(rows, g)
    atomic_write(files["md"], lambda f: f.write(md.encode()))
    plot(files["png"], rows, g)
    say("\n" + md)
    say(f"wrote {files['csv']}, {files['md']}, {files['png']}")
    return rows
