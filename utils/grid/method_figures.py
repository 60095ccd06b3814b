"""The grid's pictures beyond the accuracy plot, drawn when the grid has what they need.

* ``cld_orders.png``: test accuracy (mean ± std over seeds) of the top, near-zero and bottom CLD
  coresets and of random, at each size: the paper's bar chart of positive, zero and negative CLD.
* ``method_overlap.csv`` / ``.png``: how far the methods pick the same examples: for every budget and
  pair of methods, the mean over classes of the Jaccard index of their per-class top-k sets.
* ``cld_overview.png``: stage 2's overview figure (:func:`utils.scoring.overview_figure.overview`) of the
  grid's CLD score file.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from utils.cli.flags import Settings
from utils.files.atomic import atomic_write
from utils.files.png import pyplot, save_png
from utils.core.stability import jaccard, top_k

OVERLAP_COLUMNS = ("budget", "method_a", "method_b", "mean_jaccard")
CLD_ORDERS = (("top", "positive CLD (top)", "#c0392b"), ("zero", "near-zero CLD", "#e67e22"),
              ("bottom", "negative CLD (bottom)", "#7b241c"), ("random", "random (uniform per class)", "#7f8c8d"))


def budget_label(budget: float, by_fraction: bool) -> str:
    return f"{100 * budget:g}% per class" if by_fraction else f"k={int(budget)}"


def method_overlap(rankings: dict[str, dict[int, np.ndarray]], budgets: Sequence[float]) -> list[dict]:
    """Rows of :data:`OVERLAP_COLUMNS`: for each budget (k per class, or a fraction below 1) and every
    ordered pair of methods, the mean over classes of their top-k Jaccard (1.0 on the diagonal)."""
    rows = []
    for budget in budgets:
        tops = {m: top_k(r, budget) for m, r in rankings.items()}
        for a in rankings:
            for b in rankings:
                value = 1.0 if a == b else float(np.mean(list(jaccard(tops[a], tops[b]).values())))
                rows.append({"budget": budget, "method_a": a, "method_b": b, "mean_jaccard": value})
    return rows


def write_overlap(csv_path: str, png_path: str, rows: list[dict], budgets: Sequence[float], by_fraction: bool,
                  title: str) -> None:
    """The overlap table as CSV and as one heat map per budget."""
    text = ",".join(OVERLAP_COLUMNS) + "\n" + "".join(
        f"{r['budget']:g},{r['method_a']},{r['method_b']},{r['mean_jaccard']!r}\n" for r in rows)
    atomic_write(csv_path, lambda f: f.write(text.encode()))
    names = list(dict.fromkeys(r["method_a"] for r in rows))
    plt = pyplot()
    cols = min(2, len(budgets))
    rows_n = -(-len(budgets) // cols)
    side = 0.42 * len(names) + 2.5
    fig, axes = plt.subplots(rows_n, cols, figsize=(side * cols, side * rows_n), squeeze=False)
    for ax in axes.flat[len(budgets):]:
        ax.axis("off")
    for ax, budget in zip(axes.flat, budgets):
        m = np.array([[next(r["mean_jaccard"] for r in rows if r["budget"] == budget and r["method_a"] == a
                            and r["method_b"] == b) for b in names] for a in names])
        image = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize="small")
        ax.set_yticks(range(len(names)), names, fontsize="small")
        if len(names) <= 24:  # in percent: two digits fit a cell at a font size one can read
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=8.5,
                            color="black" if m[i, j] > 0.6 else "white")
        ax.set_title(f"{budget_label(budget, by_fraction)} (numbers: mean Jaccard, %)", fontsize="medium")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize="large")
    fig.tight_layout()
    save_png(fig, png_path)


def cld_orders(path: str, rows: Sequence[dict], g: Settings) -> bool:
    """The bar chart of CLD's orders; False (nothing drawn) when the grid lacks CLD's top coresets."""
    by_fraction = g.samples_per_class is None
    budgets = sorted({r["fraction"] if by_fraction else r["samples_per_class"] for r in rows})
    cells = {}
    for r in rows:
        if r["method"] == "cld" or r["order"] == "random":
            cells.setdefault(r["order"], {})[r["fraction"] if by_fraction else r["samples_per_class"]] = r
    if "top" not in cells or len(cells) < 2:
        return False
    shown = [o for o in CLD_ORDERS if o[0] in cells]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(budgets), 5.2))
    width = 0.8 / len(shown)
    for i, (order, label, colour) in enumerate(shown):
        x = np.arange(len(budgets)) + (i - (len(shown) - 1) / 2) * width
        means = [cells[order][b]["mean_test_acc"] if b in cells[order] else np.nan for b in budgets]
        stds = [(cells[order][b]["std_test_acc"] or 0.0) if b in cells[order] else 0.0 for b in budgets]
        ax.bar(x, means, width, yerr=stds, capsize=3, label=label, color=colour)
    ax.set_xticks(range(len(budgets)), [budget_label(b, by_fraction) for b in budgets])
    ax.set_ylabel("final test accuracy (%)")
    low = min(r["mean_test_acc"] for r in rows)
    ax.set_ylim(max(0.0, low - 15), 100)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{g.dataset}: coresets of positive, near-zero and negative CLD (mean ± std, {len(g.seeds)} seeds)",
                 fontsize="medium", loc="left")
    fig.tight_layout()
    save_png(fig, path)
    return True
