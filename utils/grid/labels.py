"""The words of a grid's table and plot: row labels and the recipe caption."""
from __future__ import annotations

from collections import Counter

from utils.cli.flags import Settings


def row_label(method: str, order: str, selection_model: str | None = None, weighted: bool = False) -> str:
    """A table row's or plot line's name. A random order ignores its file's scores (a uniform draw
    within each class), so it is named as the baseline it is, not after the method it read. A
    model method scored from DeepCore's separate selection run says so, and so does a coreset
    trained with per-example weights."""
    if order == "random":
        return "random (uniform per class)"
    notes = [order] + ["weighted"] * bool(weighted) + ["DeepCore selection model"] * (selection_model == "deepcore")
    return f"{method} ({', '.join(notes)})"


def weights_note(rows) -> str:
    """Which weights the model methods of a table scored from, for its caption ('' when none did)."""
    epochs = sorted({(r.get("selection_model") or "snapshot", r["snapshot_epoch"]) for r in rows
                     if r.get("snapshot_epoch") is not None and r["order"] != "random"})
    if not epochs:
        return ""
    said = [f"the {'DeepCore selection run' if kind == 'deepcore' else 'stage-1 run'}'s weights after epoch {e}"
            for kind, e in epochs]
    return f" Model-based methods scored from {' and '.join(said)}."


def recipe_text(g: Settings) -> str:
    """The stage-3 recipe in a few words, for captions."""
    schedule = ",".join(map(str, g.schedule)) or "none"
    return (f"SGD lr {g.learning_rate:g} (x{g.gamma:g} after epochs {schedule}), batch {g.batch_size}, "
            f"{g.epochs} epochs, weight decay {g.weight_decay:g}")


def _machine_words(m: dict) -> str:
    if not m:
        return "an earlier version that recorded no machine"
    aten = "default" if m.get("aten") == "DEFAULT" else m.get("aten")
    kernels = (f"{m.get('cpu_kernels')} CPU kernels (ATen {aten}, oneDNN {'on' if m.get('onednn') else 'off'}, "
               f"MKL_CBWR={m.get('mkl_cbwr') or 'unset'})")
    threads = int(m.get("threads", 0))
    where = f"{m.get('gpu')} (CUDA) beside {m.get('cpu')}" if m.get("device") == "cuda" else m.get("cpu")
    return (f"{kernels}, {threads} thread{'s' * (threads != 1)} per run, on {where}; torch {m.get('torch')}, "
            f"numpy {m.get('numpy')}")


def machine_note(runs) -> str:
    """Where a table's runs computed, for its header: CPU kernels, threads, CPU (or GPU) and library
    versions; runs on several machines or settings are each counted."""
    seen = Counter(_machine_words(r.get("machine") or {}) for r in runs)
    if len(seen) == 1:
        return f"Computed with {next(iter(seen))}."
    return "Computed with " + "; ".join(f"{words} ({n} run{'s' * (n != 1)})" for words, n in seen.items()) + "."
