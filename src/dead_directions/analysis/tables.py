"""Step × size tables: one value per (training step, model size) of a family and layer, as
a DataFrame, as GitHub Markdown and as HTML (the tables, the report and the prune tables
all use these)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence

from tabulate import tabulate  # lazy: only the table writers need it

from dead_directions import zoo

#: The header of a step × size table's first column.
CORNER = "step \\ size"


def natural_key(text: str) -> list:
    """Sort key ordering embedded integers numerically (``h4 < h16``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def size_order(family: str, sizes: Sequence[str]) -> list[str]:
    """Sizes in the zoo family's declared order, others (and other families') in natural
    order after."""
    fam = zoo.FAMILIES.get(family)
    rank = {s: i for i, s in enumerate(fam.sizes if fam is not None else ())}
    return sorted(set(sizes), key=lambda s: (rank.get(s, len(rank)), natural_key(s)))


def step_size(frame, family: str, column: str, layer: str):
    """``column`` of one family and layer of a long ``frame`` (columns ``family``,
    ``layer``, ``step``, ``size``): a DataFrame with rows step and columns size."""
    sub = frame[(frame["family"] == family) & (frame["layer"] == layer)]
    wide = sub.pivot_table(index="step", columns="size", values=column, aggfunc="first")
    wide = wide.reindex(columns=size_order(family, list(wide.columns)))
    wide.columns.name = "size"
    return wide


def markdown_table(wide, fmt: Callable[[object], str]) -> str:
    """A step × size table as GitHub Markdown, each value written by ``fmt``."""

    rows = [[step, *(fmt(v) for v in row)] for step, row in wide.iterrows()]
    headers = [CORNER, *map(str, wide.columns)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def html_table(wide, fmt: Callable[[object], str]) -> str:
    """A step × size table as an HTML ``<table>``, each value written by ``fmt``."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [CORNER, *wide.columns])
    body = "".join(
        "<tr><th>{}</th>{}</tr>".format(
            html.escape(str(step)), "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row)
        )
        for step, row in wide.iterrows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"
