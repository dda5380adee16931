"""Matplotlib without a display, and one way to write a figure (shared by every figure)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display; files only)."""
    import matplotlib  # lazy: matplotlib is needed by figures only, and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 110 dpi, no software stamp so reruns are identical),
    close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    pyplot().close(fig)
    return path
