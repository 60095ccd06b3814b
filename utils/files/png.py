"""Matplotlib, imported only when a picture is drawn, and a PNG written atomically."""
from __future__ import annotations

import io

from utils.files.atomic import atomic_write


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str, dpi: int = 110, tight: bool = True, replace: bool = True) -> None:
    """Write ``fig`` to ``path`` (``tight``: the canvas grows to hold legends beside the axes) and close it;
    ``replace=False``: only as a new file (:func:`utils.files.atomic.atomic_write`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()), replace)
