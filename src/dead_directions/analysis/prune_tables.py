"""Tables, a figure and the report section of pruning records (``dead-directions removable``)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from tabulate import tabulate

from dead_directions.analysis.figures import embed_figure, pyplot, save_figure
from dead_directions.analysis.outputs import CAPTIONS, PRUNE_FIGURE
from dead_directions.analysis.tables import html_table, markdown_table, size_order, step_size


def load_records(paths: Sequence) -> list[dict]:
    """The ``removable`` records in the files at ``paths`` (each a record or a list of them;
    ValueError naming a missing or bad file)."""

    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ValueError(
                f"removable record {p} does not exist; run `dead-directions removable`."
            )
        try:
            got = json.loads(p.read_text())
        except ValueError as err:
            raise ValueError(f"removable record {p} is not valid JSON ({err}).") from err
        out += got if isinstance(got, list) else [got]
    return out


def records_frame(records: Sequence[Mapping]):
    """Long table: one row per (family, size, step, layer), plus ``layer == "all"``."""
    import pandas as pd  # lazy: pandas is heavy and only the table writers need it

    rows = []
    for r in records:
        base = {"family": r["family"], "size": str(r["size"]), "step": int(r["step"])}
        rows.append(
            {
                **base,
                "layer": "all",
                "params_before": r["params_before"],
                "params_after": r["params_after"],
                "fraction": r["fraction"],
                "units_removed": r["units_removed"],
                "units_merged": r["units_merged"],
                "metric": r["metric"],
                "metric_before": r["metric_before"],
                "metric_after": r["metric_after"],
            }
        )
        for lr in r["layers"]:
            rows.append(
                {
                    **base,
                    "layer": lr["layer"],
                    "params_before": lr["params_before"],
                    "params_after": lr["params_after"],
                    "fraction": lr["fraction"],
                    "units_removed": len(lr.get("removed", [])),
                    "units_merged": len(lr.get("merged", [])),
                }
            )
    return pd.DataFrame(rows)


def fraction_table(frame, family: str, layer: str = "all"):
    """Removable fraction of one family and layer: rows step, columns size."""

    return step_size(frame, family, "fraction", layer)


def _pct(v) -> str:
    return "—" if v is None or v != v else f"{100 * v:.2f} %"


def write_prune_tables(records: Sequence[Mapping], family: str, csv, md, figure) -> list[Path]:
    """``csv`` (long, every layer), ``md`` (step × size tables) and ``figure`` (PNG)."""

    mine = [r for r in records if r["family"] == family]
    if not mine:
        raise ValueError(f"no removable records of family {family!r}.")
    rank = {s: i for i, s in enumerate(size_order(family, [str(r["size"]) for r in mine]))}
    frame = records_frame(sorted(mine, key=lambda r: (rank[str(r["size"])], int(r["step"]))))
    csv, md, figure = Path(csv), Path(md), Path(figure)
    for p in (csv, md, figure):
        p.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    layers = [
        x
        for x in dict.fromkeys(frame["layer"])
        if x != "all" and frame[frame["layer"] == x]["fraction"].max() > 0
    ]

    def md_table(wide) -> str:
        rows = [[step, *(_pct(v) for v in row)] for step, row in wide.iterrows()]
        return tabulate(
            rows,
            headers=["step \\ size", *map(str, wide.columns)],
            tablefmt="github",
            disable_numparse=True,
        )

    lines = [
        f"# {family}: removable parameters across training time and scale",
        "",
        "Fraction of parameters `dead-directions prune` removes (read-confirmed node deaths "
        "removed, duplicate units merged; relative output change ≤ tolerance and the task "
        "metric within the metric tolerance on held-out data). Rows: training step; "
        "columns: model size.",
        "",
        "**all layers**",
        "",
        md_table(fraction_table(frame, family)),
        "",
    ]
    for layer in layers:
        lines += [f"**{layer}**", "", md_table(fraction_table(frame, family, layer)), ""]
    if not layers:
        lines += ["No layer has removable parameters at any checkpoint.", ""]
    pooled = frame[frame["layer"] == "all"]
    if pooled["metric"].notna().any():
        metric = pooled["metric"].dropna().iloc[0]
        got = {
            (int(r.step), str(r.size)): (r.metric_before, r.metric_after)
            for r in pooled.itertuples()
        }
        sizes = [str(c) for c in fraction_table(frame, family).columns]
        rows = [
            [step]
            + [
                f"{got[step, s][0]:.4g} → {got[step, s][1]:.4g}" if (step, s) in got else "—"
                for s in sizes
            ]
            for step in sorted({k[0] for k in got})
        ]
        lines += [
            f"**held-out {metric}, before → after**",
            "",
            tabulate(
                rows, headers=["step \\ size", *sizes], tablefmt="github", disable_numparse=True
            ),
            "",
        ]
    md.write_text("\n".join(lines))
    _prune_figure(frame, family, ["all", *layers[:5]], figure)
    return [csv, md, figure]


def _prune_figure(frame, family: str, layers: Sequence[str], path: Path) -> Path:

    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers) + 0.6, 3.2), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        wide = fraction_table(frame, family, layer)
        for size in wide.columns:
            col = wide[size].dropna()
            ax.plot(col.index, 100 * col.values, marker="o", label=str(size))
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("training step")
        ax.set_title(f"{family}: {layer}", fontsize=9)
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("removable parameters (%)")
    axes[0][0].legend(title="size", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def report_section(family: str, csv, figure, out) -> tuple[list[str], list[str]]:
    """Markdown lines and HTML parts of one family's removable parameters for the report
    (``dd.report.write_report``); empty when ``csv`` does not exist."""

    import pandas as pd  # lazy: pandas is heavy and only the table writers need it

    csv, figure = Path(csv), Path(figure)
    if not csv.is_file():
        return [], []
    frame = pd.read_csv(csv, dtype={"family": str, "size": str, "layer": str})
    wide = fraction_table(frame, family)
    title = "removable parameters (all layers; `dead-directions removable`)"
    md = [f"**{title}**", "", markdown_table(wide, _pct), ""]
    parts = [f"<h3>{html.escape(title)}</h3>", html_table(wide, _pct)]
    lines, part = embed_figure(figure, CAPTIONS[PRUNE_FIGURE], PRUNE_FIGURE, out)
    md += lines
    if part:
        parts.append(part)
    return md, parts
