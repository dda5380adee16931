"""Figures (PNG) and a report (Markdown and self-contained HTML) of an aggregated sweep."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dead_directions.analysis.aggregate import (
    DEAD_DIMENSION_NOTE,
    POOLED,
    format_value,
    markdown,
    table,
)
from dead_directions.analysis.figures import embed_figure, pyplot, save_figure
from dead_directions.analysis.outputs import CAPTIONS, FIGURES, METRICS
from dead_directions.analysis.prune_tables import report_section
from dead_directions.analysis.tables import html_table, natural_key, size_order
from dead_directions.io import files, store

KIND_COLOURS = {
    "regular": "#1f77b4",
    "singular": "#d62728",
    "gauge": "#2ca02c",
    "undetermined": "#bcbd22",
    "unresolved": "#7f7f7f",
}
#: The headline (first) table, then the per-family tables.
HEADLINE_METRIC = next(iter(METRICS))
REPORT_METRICS = ("dead_dim", "n_dead", "order_median", "recovery", "recovery_base", "n_off_locus")


def _layers(frame, family: str) -> list[str]:
    sub = frame[(frame["family"] == family) & (frame["layer"] != POOLED)]
    return sorted(sub["layer"].unique(), key=natural_key)


def order_heatmap(frame, family: str, path: str | os.PathLike) -> Path:
    """Median measured order k̂ per (layer, step), one panel per size."""
    plt = pyplot()
    sub = frame[frame["family"] == family]
    sizes = size_order(family, list(sub["size"].unique()))
    layers = _layers(frame, family)
    steps = sorted(sub["step"].unique())
    finite = sub.loc[sub["layer"] != POOLED, "order_median"].dropna()
    vmin, vmax = (1.0, 3.0) if finite.empty else (min(1.0, finite.min()), max(2.0, finite.max()))
    fig, axes = plt.subplots(
        1,
        len(sizes),
        figsize=(1.2 + 0.55 * len(steps) * len(sizes) + 1.2, 2.4 + 0.32 * len(layers)),
        squeeze=False,
        sharey=True,
        layout="constrained",  # room for the step labels, titles and colour bar
    )
    image = None
    for ax, size in zip(axes[0], sizes, strict=True):
        grid = np.full((len(layers), len(steps)), np.nan)
        cells = sub[(sub["size"] == size) & (sub["layer"] != POOLED)]
        for _, row in cells.iterrows():
            if row["layer"] in layers:
                grid[layers.index(row["layer"]), steps.index(row["step"])] = row["order_median"]
        image = ax.imshow(
            np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax
        )
        if len(layers) * len(steps) <= 120:
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
        ax.set_title(f"size {size}", fontsize=9)
        ax.set_xlabel("training step")
    axes[0][0].set_yticks(range(len(layers)), layers, fontsize=7)
    axes[0][0].set_ylabel("layer")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="median measured order k̂")
    fig.suptitle(f"{family}: median order of the detected directions", fontsize=10)
    return save_figure(fig, path)


def log_step_axis(ax, steps) -> None:
    """A symmetric-log step axis (the zoo saves log-spaced steps, step 0 included): linear
    below the smallest positive step, logarithmic above, ticks at the steps themselves."""
    positive = sorted(int(s) for s in set(steps) if s > 0)
    if positive:
        ax.set_xscale("symlog", linthresh=positive[0])
    ax.set_xticks(sorted(set(int(s) for s in steps)))
    ax.set_xticklabels([str(int(s)) for s in sorted(set(steps))], fontsize=7, rotation=45)
    ax.set_xlabel("training step (symlog)")


def _lines(frame, family: str, panels, path, title: str) -> Path:
    plt = pyplot()
    sub = frame[(frame["family"] == family) & (frame["layer"] == POOLED)]
    sizes = size_order(family, list(sub["size"].unique()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.5), squeeze=False)
    for ax, (metric, label, scale) in zip(axes[0], panels, strict=True):
        for size in sizes:
            rows = sub[sub["size"] == size].sort_values("step")
            ax.plot(rows["step"], scale * rows[metric], marker="o", label=f"size {size}")
        log_step_axis(ax, sub["step"].unique())
        ax.set_ylim(bottom=0)  # counts and fractions: 0 is the floor (all-zero lines too)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def dead_dimension(frame, family: str, path: str | os.PathLike) -> Path:
    """The dead dimension (all layers pooled) vs step, one line per size: its fraction of
    the parameters and the count."""
    panels = (
        ("dead_fraction", "dead dimension / parameters (%)", 100.0),
        ("dead_dim", "dead dimension (parameter dimensions)", 1.0),
    )
    title = f"{family}: dead dimension across training, per size"
    return _lines(frame, family, panels, path, title)


def direction_counts(frame, family: str, path: str | os.PathLike) -> Path:
    """Detector directions read dead and read singular (all layers pooled) vs step."""
    panels = (
        ("n_dead", "detector directions read dead", 1.0),
        ("n_singular", "detector directions read singular", 1.0),
        ("n_undetermined", "undetermined (gauge or genuine?)", 1.0),
    )
    title = f"{family}: detector directions read dead (counts capped by max_per_layer)"
    return _lines(frame, family, panels, path, title)


def rate_curves(
    store_path: str | os.PathLike,
    family: str,
    size: str,
    step: int,
    path: str | os.PathLike,
    layers: Sequence[str] | None = None,
) -> Path:
    """The rate curves g(t) of every direction of one checkpoint, one panel per layer."""
    plt = pyplot()
    done = [
        k
        for k in store.done_cells(store_path)
        if (k.family, k.size, k.step) == (family, size, int(step))
        and (layers is None or k.layer in layers)
    ]
    done.sort(key=lambda k: natural_key(k.layer))
    n = max(1, len(done))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(done) :]:
        ax.set_visible(False)
    if not done:
        axes[0][0].set_visible(True)
        axes[0][0].text(0.5, 0.5, "no completed cells", ha="center", va="center")
    data = store.cell_datasets(store_path, done) if done else {}
    for ax, key in zip(axes.flat, done, strict=False):
        cell = data[key]
        radius = cell["radius"].values
        for j in range(cell.sizes["direction"]):
            g = cell["fisher"].values[j]
            t = radius * cell["scale"].values[j]
            kind = str(cell["kind"].values[j])
            ok = np.isfinite(g) & (g > 0)
            if ok.any():
                ax.loglog(t[ok], g[ok], color=KIND_COLOURS.get(kind, "k"), lw=1, alpha=0.8)
        ax.set_title(key.layer, fontsize=8)
        ax.set_xlabel("radius t")
        ax.set_ylabel("g(t)")
    handles = [plt.Line2D([], [], color=c, label=k) for k, c in KIND_COLOURS.items()]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(f"{family} size {size}, step {step}: rate curves g(t) by kind", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.88, bottom=0.1, top=0.9, wspace=0.45, hspace=0.6)
    return save_figure(fig, path)


def default_checkpoint(frame, family: str) -> tuple[str, int]:
    """The checkpoint whose rate curves are drawn: the largest size, its last step."""
    sub = frame[frame["family"] == family]
    size = size_order(family, list(sub["size"].unique()))[-1]
    return size, int(sub[sub["size"] == size]["step"].max())


def figure_paths(folder: str | os.PathLike) -> dict[str, Path]:
    """Where :func:`figures` writes by default: ``{folder}/{name}.png`` per :data:`FIGURES`."""
    return {name: Path(folder) / f"{name}.png" for name in FIGURES}


def figures(
    frame,
    store_path: str | os.PathLike,
    family: str,
    paths: Mapping[str, str | os.PathLike],
    checkpoint: tuple[str, int] | None = None,
) -> list[Path]:
    """Draw the :data:`FIGURES` of one family, each to ``paths[name]``; the rate curves are
    of ``checkpoint = (size, step)`` (default: the largest size's last step). Raises
    ``ValueError`` when a figure has no path."""
    missing = [name for name in FIGURES if name not in paths]
    if missing:
        raise ValueError(f"figures of {family}: no path for {missing}.")
    size, step = checkpoint or default_checkpoint(frame, family)
    return [
        dead_dimension(frame, family, paths["dead_dimension"]),
        order_heatmap(frame, family, paths["order_heatmap"]),
        direction_counts(frame, family, paths["direction_counts"]),
        rate_curves(store_path, family, size, step, paths["rate_curves"]),
    ]


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;"
    "padding:2px 8px;text-align:right}img{max-width:100%}code{background:#f4f4f4}"
)


def write_report(
    frame,
    figure_dirs: dict[str, str | os.PathLike],
    out: str | os.PathLike,
    *,
    store_path: str | os.PathLike = "",
    title: str = "dead-directions sweep",
    missing: str | os.PathLike | None = None,
    html_out: str | os.PathLike | None = None,
    prune: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]] | None = None,
) -> list[Path]:
    """Write ``out`` (Markdown, figures linked) and ``html_out`` (HTML, figures embedded;
    default: ``out`` with suffix ``.html``). Returns both paths.

    ``figure_dirs`` maps each family to the folder holding its :data:`FIGURES`; ``prune``
    maps a family to its removable-parameters table (CSV) and figure (a section each);
    ``missing``: the CSV of checkpoints the config lists but the disk lacks (``dead-directions
    missing``), shown as its own section when it has rows.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells = frame[frame["layer"] != POOLED]
    intro = (
        f"{len(cells)} cells (family × size × step × layer), "
        f"{int(cells['n_directions'].sum())} detector directions read, "
        f"{int(cells['n_dead'].sum())} read dead (singular or gauge). "
        "Each direction's order k̂ is the log–log slope of its directional Fisher "
        "g(t) = uᵀF(θ + t u)u ≍ t^{2(k−1)}; λ_u = 1/(2k̂). Tables pool all layers of a "
        "checkpoint; rows are training steps (time), columns model sizes (scale). "
        "Direction counts depend on the detectors' caps; the dead dimension is the "
        "per-layer quantity that does not."
    )
    md = [f"# {title}", "", intro, ""]
    if store_path:
        md += [f"Store: `{store_path}` (open with `dead_directions.io.store.open`).", ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]

    def figure(family: str, name: str) -> None:
        png = Path(figure_dirs.get(family, "")) / f"{name}.png"
        lines, part = embed_figure(png, f"{family}: {CAPTIONS[name]}", f"{family} {name}", out)
        md.extend(lines)
        if part:
            body.append(part)

    families = sorted(frame["family"].unique())
    # The headline: the dead-dimension figure and its fraction of the parameters.
    md += ["## Dead dimension", "", DEAD_DIMENSION_NOTE, ""]
    body += ["<h2>Dead dimension</h2>", f"<p>{html.escape(DEAD_DIMENSION_NOTE)}</p>"]
    for family in families:
        figure(family, "dead_dimension")
    for family in families:
        wide = table(frame, family, HEADLINE_METRIC)
        md += [f"**{family}: {HEADLINE_METRIC}** — {METRICS[HEADLINE_METRIC]}", ""]
        md += [markdown(wide, HEADLINE_METRIC), ""]
        body.append(
            f"<h3>{html.escape(family)}: {html.escape(HEADLINE_METRIC)} — "
            f"{html.escape(METRICS[HEADLINE_METRIC])}</h3>"
        )
        body.append(html_table(wide, lambda v: format_value(v, HEADLINE_METRIC)))
    for family in families:
        md += [f"## {family}", ""]
        body.append(f"<h2>{html.escape(family)}</h2>")
        for metric in REPORT_METRICS:
            wide = table(frame, family, metric)
            md += [f"**{metric}** — {METRICS[metric]}", ""]
            body.append(f"<h3>{html.escape(metric)}: {html.escape(METRICS[metric])}</h3>")
            md += [markdown(wide, metric), ""]
            body.append(html_table(wide, lambda v, m=metric: format_value(v, m)))
        for name in FIGURES[1:]:
            figure(family, name)
        if family in (prune or {}):
            extra_md, extra_html = report_section(family, *prune[family], out)
            md += extra_md
            body += extra_html
    if missing is not None:
        import pandas as pd  # lazy: pandas is heavy and only the table writers need it

        absent = pd.read_csv(missing, dtype=str)
        if len(absent):
            note = (
                f"{len(absent)} checkpoint(s) listed in the config are not on disk or cannot be "
                "read (the reason column says which); the rest of the sweep was read, and a "
                "rerun reads them once they appear or are repaired."
            )
            md += ["## Missing checkpoints", "", note, "", absent.to_markdown(index=False), ""]
            body += [
                "<h2>Missing checkpoints</h2>",
                f"<p>{html.escape(note)}</p>",
                absent.to_html(index=False, escape=True),
            ]
    files.write_text_atomic(out, "\n".join(md))
    page = Path(html_out) if html_out is not None else out.with_suffix(".html")
    files.write_text_atomic(
        page,
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n",
    )
    return [out, page]
