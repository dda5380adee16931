"""Figures (PNG) and a report (Markdown and self-contained HTML) of an aggregated sweep."""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import store
from .aggregate import (
    LAMBDA_ASSUMPTIONS,
    METRICS,
    POOLED,
    format_value,
    markdown,
    natural_key,
    size_order,
    table,
)

KIND_COLOURS = {
    "regular": "#1f77b4",
    "singular": "#d62728",
    "gauge": "#2ca02c",
    "undetermined": "#bcbd22",
    "unresolved": "#7f7f7f",
}
FIGURES = ("order_heatmap", "counts_lambda", "rate_curves")
REPORT_METRICS = ("n_dead", "order_median", "recovery", "lam_sum")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layers(frame, family: str) -> list[str]:
    sub = frame[(frame["family"] == family) & (frame["layer"] != POOLED)]
    return sorted(sub["layer"].unique(), key=natural_key)


def order_heatmap(frame, family: str, path: str | os.PathLike) -> Path:
    """Median measured order k̂ per (layer, step), one panel per size."""
    plt = _plt()
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
    return _save(fig, path)


def counts_lambda(frame, family: str, path: str | os.PathLike) -> Path:
    """Dead-direction counts, undetermined counts and summed λ (all layers pooled) vs step,
    one line per size."""
    plt = _plt()
    sub = frame[(frame["family"] == family) & (frame["layer"] == POOLED)]
    sizes = size_order(family, list(sub["size"].unique()))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    panels = (
        ("n_dead", "dead directions (singular + gauge)"),
        ("n_singular", "singular directions"),
        ("n_undetermined", "undetermined (gauge or genuine?)"),
        ("lam_sum", "λ = Σ 1/(2k̂) of the read directions"),
    )
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for size in sizes:
            rows = sub[sub["size"] == size].sort_values("step")
            ax.plot(rows["step"], rows[metric], marker="o", label=f"size {size}")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{family}: dead directions and λ across training, per size", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def rate_curves(
    store_path: str | os.PathLike,
    family: str,
    size: str,
    step: int,
    path: str | os.PathLike,
    layers: Sequence[str] | None = None,
) -> Path:
    """The rate curves g(t) of every direction of one checkpoint, one panel per layer."""
    plt = _plt()
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
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    _plt().close(fig)
    return path


def default_checkpoint(frame, family: str) -> tuple[str, int]:
    """The checkpoint whose rate curves are drawn: the largest size, its last step."""
    sub = frame[frame["family"] == family]
    size = size_order(family, list(sub["size"].unique()))[-1]
    return size, int(sub[sub["size"] == size]["step"].max())


def figures(
    frame,
    store_path: str | os.PathLike,
    family: str,
    out_dir: str | os.PathLike,
    checkpoint: tuple[str, int] | None = None,
) -> list[Path]:
    """The three figures of one family under ``out_dir``; ``checkpoint = (size, step)``."""
    out_dir = Path(out_dir)
    size, step = checkpoint or default_checkpoint(frame, family)
    return [
        order_heatmap(frame, family, out_dir / "order_heatmap.png"),
        counts_lambda(frame, family, out_dir / "counts_lambda.png"),
        rate_curves(store_path, family, size, step, out_dir / "rate_curves.png"),
    ]


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;"
    "padding:2px 8px;text-align:right}img{max-width:100%}code{background:#f4f4f4}"
)


def _html_table(wide, metric: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["step \\ size", *wide.columns])
    body = "".join(
        "<tr><th>{}</th>{}</tr>".format(
            step, "".join(f"<td>{html.escape(format_value(v, metric))}</td>" for v in row)
        )
        for step, row in wide.iterrows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    frame,
    figure_dirs: dict[str, str | os.PathLike],
    out: str | os.PathLike,
    *,
    store_path: str | os.PathLike = "",
    title: str = "dead-directions sweep",
) -> list[Path]:
    """Write ``out`` (``.md``, figures linked) and its ``.html`` twin (figures embedded).

    ``figure_dirs`` maps each family to the folder holding its :data:`FIGURES`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells = frame[frame["layer"] != POOLED]
    intro = (
        f"{len(cells)} cells (family × size × step × layer), "
        f"{int(cells['n_directions'].sum())} directions read, "
        f"{int(cells['n_dead'].sum())} read dead (singular or gauge). "
        "Each direction's order k̂ is the log–log slope of its directional Fisher "
        "g(t) = uᵀF(θ + t u)u ≍ t^{2(k−1)}; λ_u = 1/(2k̂). Tables pool all layers of a "
        "checkpoint; rows are training steps (time), columns model sizes (scale)."
    )
    md = [f"# {title}", "", intro, ""]
    if store_path:
        md += [f"Store: `{store_path}` (open with `dead_directions.store.open`).", ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]
    captions = {
        "order_heatmap": "Median measured order k̂ per layer and training step, per size.",
        "counts_lambda": "Dead-direction counts and summed λ vs training step, per size.",
        "rate_curves": "Rate curves g(t) of one checkpoint, coloured by measured kind.",
    }
    for family in sorted(frame["family"].unique()):
        md += [f"## {family}", ""]
        body.append(f"<h2>{html.escape(family)}</h2>")
        for metric in REPORT_METRICS:
            wide = table(frame, family, metric)
            md += [f"**{metric}** — {METRICS[metric]}", ""]
            body.append(f"<h3>{html.escape(metric)}: {html.escape(METRICS[metric])}</h3>")
            if metric == "lam_sum":
                md += [LAMBDA_ASSUMPTIONS, ""]
                body.append(f"<p>{html.escape(LAMBDA_ASSUMPTIONS)}</p>")
            md += [markdown(wide, metric), ""]
            body.append(_html_table(wide, metric))
        folder = Path(figure_dirs.get(family, ""))
        for name in FIGURES:
            png = folder / f"{name}.png"
            if not png.exists():
                continue
            rel = os.path.relpath(png, out.parent)
            md += [f"![{captions[name]}]({rel})", "", f"*{captions[name]}*", ""]
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(
                f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(captions[name])}</figcaption></figure>"
            )
        # removable parameters (workflow/rules/prune.smk), where its table exists
        prune_csv = out.parent / "tables" / "prune" / f"{family}.csv"
        if prune_csv.is_file():
            from .prune import report_section

            png = folder / "prune_removable.png"
            extra_md, extra_html = report_section(family, prune_csv, png, out)
            md += extra_md
            body += extra_html
    out.write_text("\n".join(md))
    page = out.with_suffix(".html")
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    return [out, page]
