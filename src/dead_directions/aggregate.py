"""Aggregation of the store with dask: dead dimension, counts by kind, order quantiles, recovery."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from . import store
from .direction import BASE_TOL, KINDS

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
QUANTILE_NAMES = ("order_min", "order_q25", "order_median", "order_q75", "order_max")
POOLED = "all"
COUNTS = tuple(f"n_{k}" for k in KINDS)
COLUMNS = (
    "family",
    "size",
    "step",
    "layer",
    "n_directions",
    *COUNTS,
    "n_dead",
    *QUANTILE_NAMES,
    "n_predicted",
    "n_recovered",
    "recovery",
    "n_based",
    "n_recovered_base",
    "n_off_locus",
    "recovery_base",
    "base_tol",
    "dead_dim",
    "layer_params",
    "dead_fraction",
)
INTEGERS = (
    "n_directions",
    "n_dead",
    "n_predicted",
    "n_recovered",
    "n_based",
    "n_recovered_base",
    "n_off_locus",
)
#: The tables, in order; the first is the report's headline.
METRICS: Mapping[str, str] = {
    "dead_fraction": (
        "dead dimension / parameters: the fraction of the layers' parameter dimensions "
        "along which the Fisher block vanishes (exact count for layers ≤ 2048 parameters, "
        "else K-FAC factor ranks; relative eigenvalue tolerance 1e-10)"
    ),
    "dead_dim": "dead dimension (parameter dimensions with a vanishing Fisher block)",
    "n_dead": (
        "detector directions read dead (singular or gauge); a count of detector outputs, "
        "bounded by the detectors' caps (max_per_layer), not a property of the model"
    ),
    "n_singular": "directions read singular",
    "n_gauge": "directions read gauge",
    "n_regular": "directions read regular",
    "n_undetermined": "directions the data cannot decide (gauge or genuine; see the note)",
    "n_unresolved": "directions left unresolved",
    "order_median": "median measured order k̂ (finite orders)",
    "order_q25": "25 % quantile of k̂",
    "order_q75": "75 % quantile of k̂",
    "order_min": "smallest k̂",
    "order_max": "largest k̂",
    "recovery": (
        "recovery at the checkpoint: reads at the checkpoint itself matching their "
        "prediction / predicted directions (METHOD §5: measured, not constructed)"
    ),
    "recovery_base": (
        "recovery at the base: reads at a detector's base projection matching their "
        "prediction, counted only where the base lies within base_tol (relative to the "
        "norm of the tensors it moves) of the checkpoint / predicted directions with a base"
    ),
    "n_off_locus": (
        "predicted directions whose base lies farther than base_tol from the checkpoint "
        "(their base read makes the prediction true by construction; not counted)"
    ),
}

#: Stated above the dead-dimension tables.
DEAD_DIMENSION_NOTE = (
    "Dead dimension (METHOD §7, `dd.dead_dimension`): per layer, the number of its "
    "parameter dimensions along which its Fisher block vanishes at the checkpoint — "
    "d_L − rank F_L from the whitened Jacobian where the layer has ≤ 2048 parameters, "
    "else d_A·d_G − rank A·rank G from its K-FAC factors (a lower bound on the exact "
    "count); ranks at relative eigenvalue tolerance 1e-10. A layer with more parameters "
    "than its probe has rows has a kernel of the probe's own (the store's "
    "dead_dim_rank_cap). All layers pooled: Σ dead_dim / Σ layer_params over the layers "
    "with a count."
)


IN_PROCESS = ("threads", "synchronous")


@contextlib.contextmanager
def dask_client(spec: Mapping[str, object] | str | None = None) -> Iterator[object]:
    """Run the enclosed dask computations where ``spec`` says; yields the client or None.

    ``spec``: ``"threads"`` or ``"synchronous"`` (dask's in-process schedulers, no
    cluster), or what :func:`dead_directions.cluster.make_client` takes: ``None``/
    ``"local"`` (a ``LocalCluster``), a scheduler address, ``"slurm"`` (a
    ``dask_jobqueue.SLURMCluster``, opt-in), or a mapping of ``ClusterSpec`` fields (its
    ``kind`` may also be ``"threads"``/``"synchronous"``).
    """
    import dask

    kind = spec.get("kind") if isinstance(spec, Mapping) else spec
    if kind in IN_PROCESS:
        with dask.config.set(scheduler=kind):
            yield None
        return
    from .cluster import make_client

    with make_client(spec) as client:
        yield client


def _metrics(ds, dims: Sequence[str], base_tol: float = BASE_TOL):
    """Lazy metrics of ``ds`` (unstacked store) reduced over ``dims`` (ending in direction)."""
    import xarray as xr

    kind = ds["kind"]
    valid = ds["label"] != ""
    out = {f"n_{k}": (kind == k).sum(dims) for k in KINDS}
    out["n_directions"] = valid.sum(dims)
    out["n_dead"] = out["n_singular"] + out["n_gauge"]
    order = ds["order"].where(np.isfinite(ds["order"]))
    if len(dims) > 1:
        order = order.stack(sample=dims).chunk(sample=-1)  # quantiles need one chunk
        qdim = "sample"
    else:
        qdim = dims[0]
    q = order.quantile(list(QUANTILES), dim=qdim, skipna=True)
    for name, value in zip(QUANTILE_NAMES, QUANTILES, strict=True):
        out[name] = q.sel(quantile=value, drop=True)
    matches = ds["matches"]
    out["n_predicted"] = (matches >= 0).sum(dims)
    out["n_recovered"] = (ds["checkpoint_matches"] == 1).sum(dims)
    out["recovery"] = out["n_recovered"] / out["n_predicted"].where(out["n_predicted"] > 0)
    distance = ds["base_distance"]
    based = (matches >= 0) & np.isfinite(distance)
    on_locus = distance <= base_tol
    out["n_based"] = based.sum(dims)
    out["n_recovered_base"] = (based & (matches == 1) & on_locus).sum(dims)
    out["n_off_locus"] = (based & ~on_locus).sum(dims)
    out["recovery_base"] = out["n_recovered_base"] / out["n_based"].where(out["n_based"] > 0)
    counted = ds["dead_dim"] >= 0
    cell_dims = [d for d in dims if d != "direction"]
    dead = ds["dead_dim"].where(counted)
    params = ds["layer_params"].where(counted)
    if cell_dims:
        dead, params = dead.sum(cell_dims, min_count=1), params.sum(cell_dims, min_count=1)
    out["dead_dim"] = dead
    out["layer_params"] = params
    out["dead_fraction"] = dead / params
    return xr.Dataset(out)


def summarize(ds, base_tol: float = BASE_TOL):
    """Per-cell and per-checkpoint (``layer = "all"``) metrics of an unstacked store; lazy.

    ``ds``: :func:`dead_directions.store.open`. Counts are per kind; order quantiles are
    over the finite measured orders (regular and singular reads; gauges read k = ∞ and
    unresolved reads NaN are left out); ``recovery`` is the fraction of directions with a
    prediction whose read at the checkpoint matches it (``dd.Read.matches_at_checkpoint``);
    ``recovery_base`` the fraction of those with a base whose base read matches with the
    base within ``base_tol`` of the checkpoint (``dd.Read.recovered_at_base``),
    ``n_off_locus`` how many bases lie farther (METHOD §5); ``dead_dim`` and
    ``layer_params`` are the layer's (pooled: summed over the layers with a count) and
    ``dead_fraction`` their ratio. Returns dims ``(family, size, step, layer)``.
    """
    import xarray as xr

    per_layer = _metrics(ds, ("direction",), base_tol)
    pooled = _metrics(ds, ("layer", "direction"), base_tol).expand_dims(layer=[POOLED])
    present = (ds["n_directions"] >= 0).any("layer").expand_dims(layer=[POOLED])
    pooled = pooled.where(present)
    per_layer = per_layer.where(ds["n_directions"] >= 0)
    return xr.concat([pooled, per_layer], dim="layer")


def aggregate(
    path: str | os.PathLike,
    dask: Mapping[str, object] | str | None = None,
    base_tol: float = BASE_TOL,
):
    """Summarise the completed cells of the store at ``path``; a tidy ``pandas.DataFrame``.

    One row per (family, size, step, layer) cell and per (family, size, step) with
    ``layer = "all"``; columns :data:`COLUMNS`. ``dask``: where it runs (:func:`dask_client`).
    ``base_tol``: a base read counts as recovered only where the base lies within this
    relative distance of the checkpoint (stored in the ``base_tol`` column).
    """
    if not (isinstance(base_tol, int | float) and base_tol >= 0 and math.isfinite(base_tol)):
        raise ValueError(f"base_tol must be a finite number ≥ 0, got {base_tol!r}.")
    import pandas as pd

    ds = store.open(path)
    if not all(ds.sizes[d] for d in store.LABELS):
        return pd.DataFrame(columns=list(COLUMNS))
    with dask_client(dask):
        summary = summarize(ds, base_tol).compute()
    frame = summary.to_dataframe().reset_index()
    frame = frame[frame["n_directions"].notna()]
    for name in (*COUNTS, *INTEGERS):
        frame[name] = frame[name].astype(int)
    frame["base_tol"] = float(base_tol)
    frame["layer_rank"] = (frame["layer"] != POOLED).astype(int)
    frame = frame.sort_values(["family", "size", "step", "layer_rank", "layer"])
    return frame.drop(columns="layer_rank")[list(COLUMNS)].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Tables: rows step (training time), columns size (scale)
# --------------------------------------------------------------------------------------


def natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def size_order(family: str, sizes: Sequence[str]) -> list[str]:
    """Sizes in the family's declared order (``dd.zoo``), others in natural order after."""
    declared: Sequence[str] = ()
    with contextlib.suppress(Exception):
        from . import zoo

        declared = zoo.get_family(family).sizes
    rank = {s: i for i, s in enumerate(declared)}
    return sorted(set(sizes), key=lambda s: (rank.get(s, len(rank)), natural_key(s)))


def table(frame, family: str, metric: str, layer: str = POOLED):
    """One metric of one family and layer: rows step, columns size (a ``DataFrame``)."""
    sub = frame[(frame["family"] == family) & (frame["layer"] == layer)]
    wide = sub.pivot_table(index="step", columns="size", values=metric, aggfunc="first")
    wide = wide.reindex(columns=size_order(family, list(wide.columns)))
    wide.columns.name = "size"
    return wide


def format_value(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if metric.startswith("n_"):
        return str(int(value))
    if metric in ("recovery", "recovery_base"):
        return f"{100 * value:.0f} %"
    if metric == "dead_fraction":
        return f"{100 * value:.1f} %"
    if metric in ("dead_dim", "layer_params"):
        return str(int(value))
    return f"{value:.2f}"


def markdown(wide, metric: str) -> str:
    """A step × size table as GitHub Markdown."""
    from tabulate import tabulate

    rows = [[step, *(format_value(v, metric) for v in row)] for step, row in wide.iterrows()]
    headers = ["step \\ size", *map(str, wide.columns)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def write_tables(frame, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``{family}/{metric}.csv`` (rows layer, step; columns size) and ``{family}.md``."""
    import pandas as pd

    out_dir = Path(out_dir)
    written = []
    for family in sorted(frame["family"].unique()):
        fam_dir = out_dir / family
        fam_dir.mkdir(parents=True, exist_ok=True)
        sub = frame[frame["family"] == family]
        layers = [POOLED, *sorted(x for x in sub["layer"].unique() if x != POOLED)]
        lines = [
            f"# {family}: dead directions across training time and scale",
            "",
            "Rows: training step; columns: model size; all layers pooled "
            "(`results/tables/{family}/*.csv` have every layer).".replace("{family}", family),
            "",
        ]
        for metric, meaning in METRICS.items():
            parts = {layer: table(frame, family, metric, layer) for layer in layers}
            wide = pd.concat(parts, names=["layer", "step"])
            path = fam_dir / f"{metric}.csv"
            wide.to_csv(path)
            written.append(path)
            lines += [f"## {metric}: {meaning}", ""]
            if metric == "dead_fraction":
                lines += [DEAD_DIMENSION_NOTE, ""]
            if metric in ("recovery_base", "n_off_locus") and "base_tol" in sub:
                lines += [f"base_tol = {float(sub['base_tol'].iloc[0]):g}", ""]
            lines += [markdown(parts[POOLED], metric), ""]
        per_layer = ["## order_median per layer", ""]
        for layer in layers[1:]:
            per_layer += [
                f"### {layer}",
                "",
                markdown(table(frame, family, "order_median", layer), "order_median"),
                "",
            ]
        md = out_dir / f"{family}.md"
        md.write_text("\n".join(lines + per_layer))
        written.append(md)
    return written
