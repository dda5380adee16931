"""Matplotlib without a display, and one way to write a figure (shared by every figure)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display; files only)."""
    import matplotlib  # lazy: matplotlib is needed by figures only, and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib is slow to import and only figures need it

    return plt


def save_figure(fig, path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 110 dpi, no software stamp so reruns are identical),
    close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    pyplot().close(fig)
    return path


def embed_figure(png: str | os.PathLike, caption: str, alt: str, page: str | os.PathLike):
    """A figure for the report: ``(Markdown lines linking it relative to the page, an HTML
    ``<figure>`` with the PNG inlined)``; ``([], "")`` when ``png`` does not exist."""
    png = Path(png)
    if not png.is_file():
        return [], ""
    rel = os.path.relpath(png, Path(page).parent)
    data = base64.b64encode(png.read_bytes()).decode()
    part = (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
    return [f"![{caption}]({rel})", "", f"*{caption}*", ""], part
