"""The words of a grid's table and plot: row labels and the recipe caption."""
from __future__ import annotations

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
