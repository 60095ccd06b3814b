"""``accuracy_vs_size.png``: test accuracy against coreset size, one line per method and order.

CLD's orders are drawn heavier and first, the random baseline dashed and black; every other
method has its own colour and marker. With more than :data:`ONE_PANEL` lines the plot has one
panel per group of methods (training dynamics, uncertainty and boundary, geometry, gradients),
each with CLD and random for reference. Legends sit beside the axes; the recipe is in the title.
Matplotlib is imported (utils.files.png) only when a grid draws its plot.
"""
from __future__ import annotations

from typing import Sequence

from utils.cli.flags import Settings
from utils.files.png import pyplot, save_png
from utils.grid.labels import recipe_text, row_label
from utils.methods.registry import GROUPS

ONE_PANEL = 8  # lines one panel shows readably
# Reference lines: CLD's orders (the paper's Figure 1) and the uniform random baseline.
REFERENCE_STYLES = {
    ("cld", "top"): dict(color="#c0392b", marker="o", linewidth=2.8, markersize=6),
    ("cld", "zero"): dict(color="#e67e22", marker="s", linewidth=2.2, markersize=5),
    ("cld", "bottom"): dict(color="#7b241c", marker="v", linewidth=2.2, markersize=6),
    ("cld", "middle"): dict(color="#f1948a", marker="D", linewidth=2.0, markersize=5),
    ("cld", "ccs"): dict(color="#d98880", marker="P", linewidth=2.0, markersize=6),
    "random": dict(color="black", marker="x", linewidth=1.8, linestyle="--", markersize=6),
}
# Colours and markers of the other methods (no red: CLD's; no black: random's).
COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#1a5276",
           "#117a65", "#6c3483", "#b9770e")
MARKERS = ("^", "s", "D", "P", "X", "*", "h", "<", ">", "p", "d", "H")


def _line_key(r: dict) -> tuple:
    return r["method"], r["order"], r["score_model_arch"], r["model_arch"], r.get("selection_model"), \
        bool(r.get("weighted"))


def _is_reference(key: tuple) -> bool:
    return key[0] == "cld" or key[1] == "random"


def _style(key: tuple, index: int) -> dict:
    method, order = key[0], key[1]
    if order == "random":
        return REFERENCE_STYLES["random"]
    if (method, order) in REFERENCE_STYLES:
        return REFERENCE_STYLES[(method, order)]
    return dict(color=COLOURS[index % len(COLOURS)], marker=MARKERS[(index // len(COLOURS) + index) % len(MARKERS)],
                linewidth=1.3, markersize=5)


def _panels(keys: list[tuple]) -> list[tuple[str, list[tuple]]]:
    """[(title, line keys)]: one panel for a few lines, else one per group of methods, each with the
    reference lines first."""
    reference = [k for k in keys if _is_reference(k)]
    others = [k for k in keys if not _is_reference(k)]
    if len(keys) <= ONE_PANEL:
        return [("", reference + others)]
    panels = []
    grouped = set()
    for title, names in GROUPS.items():
        members = [k for k in others if k[0] in names]
        grouped.update(members)
        if members:
            panels.append((title, reference + members))
    rest = [k for k in others if k not in grouped]
    if rest:
        panels.append(("other methods", reference + rest))
    return panels


def plot(path: str, rows: Sequence[dict], g: Settings) -> None:
    """Accuracy against coreset budget, mean ± std over seeds (error bars), one line per method/order."""
    plt = pyplot()

    by_fraction = g.samples_per_class is None
    lines: dict[tuple, list[dict]] = {}
    for r in rows:
        lines.setdefault(_line_key(r), []).append(r)
    # CLD's orders first, then random, then the other methods in the grid's order.
    keys = sorted(lines, key=lambda k: 0 if k[0] == "cld" and k[1] != "random" else 1 if k[1] == "random" else 2)
    styles = {k: _style(k, i) for i, k in enumerate(k for k in keys if not _is_reference(k))}
    styles.update({k: _style(k, 0) for k in keys if _is_reference(k)})
    panels = _panels(keys)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.5, 1.2 + 3.6 * len(panels)), squeeze=False)
    ticks = sorted({100 * f for f in g.fractions} if by_fraction else set(g.samples_per_class))
    several_models = len(g.model_archs) > 1 or len(g.score_model_arch) > 1
    for ax, (title, members) in zip(axes[:, 0], panels):
        for key in members:
            points = sorted(lines[key], key=lambda r: r["fraction"] if by_fraction else r["samples_per_class"])
            x = [100 * r["fraction"] if by_fraction else r["samples_per_class"] for r in points]
            label = row_label(key[0], key[1], key[4], key[5])
            if several_models:
                label += f", {key[3]}" + (f" / scores {key[2]}" if len(g.score_model_arch) > 1 else "")
            ax.errorbar(x, [r["mean_test_acc"] for r in points], yerr=[r["std_test_acc"] or 0.0 for r in points],
                        capsize=3, label=label, zorder=3 if _is_reference(key) else 2, **styles[key])
        if ticks[-1] / max(ticks[0], 1e-9) >= 4:  # budgets usually grow geometrically
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("coreset size (% of each class)" if by_fraction else "coreset size (examples per class)")
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(True, alpha=0.3)
        if title:
            ax.set_title(title, fontsize="medium", loc="left")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    seeds = len(g.seeds)
    fig.suptitle(f"{g.dataset}: test accuracy vs coreset size ({seeds} seed{'s' if seeds > 1 else ''}, mean ± std)\n"
                 f"{', '.join(g.model_archs)}: {recipe_text(g)}", fontsize="medium")
    fig.tight_layout()
    save_png(fig, path)
