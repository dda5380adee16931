"""Aggregation of the store with dask: dead dimension, counts by kind, order quantiles, recovery."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from dead_directions.analysis.cluster import make_client
from dead_directions.analysis.outputs import METRICS
from dead_directions.analysis.tables import markdown_table, step_size
from dead_directions.core.direction import BASE_TOL, KINDS
from dead_directions.io import files, store

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
    cluster), or what :func:`dead_directions.analysis.cluster.make_client` takes: ``None``/
    ``"local"`` (a ``LocalCluster``), a scheduler address, ``"slurm"`` (a
    ``dask_jobqueue.SLURMCluster``, opt-in), or a mapping of ``ClusterSpec`` fields (its
    ``kind`` may also be ``"threads"``/``"synchronous"``).
    """
    import dask  # lazy: dask is heavy and only aggregation needs it

    kind = spec.get("kind") if isinstance(spec, Mapping) else spec
    if kind in IN_PROCESS:
        with dask.config.set(scheduler=kind):
            yield None
        return

    with make_client(spec) as client:
        yield client


def _metrics(ds, dims: Sequence[str], base_tol: float = BASE_TOL):
    """Lazy metrics of ``ds`` (unstacked store) reduced over ``dims`` (ending in direction)."""
    import xarray as xr  # lazy: xarray is heavy and only reading the store needs it

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

    ``ds``: :func:`dead_directions.io.store.open`. Counts are per kind; order quantiles are
    over the finite measured orders (regular and singular reads; gauges read k = ∞ and
    unresolved reads NaN are left out); ``recovery`` is the fraction of directions with a
    prediction whose read at the checkpoint matches it (``dd.Read.matches_at_checkpoint``);
    ``recovery_base`` the fraction of those with a base whose base read matches with the
    base within ``base_tol`` of the checkpoint (``dd.Read.recovered_at_base``),
    ``n_off_locus`` how many bases lie farther (METHOD §5); ``dead_dim`` and
    ``layer_params`` are the layer's (pooled: summed over the layers with a count) and
    ``dead_fraction`` their ratio. Returns dims ``(family, size, step, layer)``.
    """
    import xarray as xr  # lazy: xarray is heavy and only reading the store needs it

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
    import pandas as pd  # lazy: pandas is heavy and only the table writers need it

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


def table(frame, family: str, metric: str, layer: str = POOLED):
    """One metric of one family and layer: rows step, columns size (a ``DataFrame``)."""
    return step_size(frame, family, metric, layer)


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
    """A step × size table of ``metric`` as GitHub Markdown."""
    return markdown_table(wide, lambda v: format_value(v, metric))


def table_paths(folder: str | os.PathLike, family: str) -> tuple[dict[str, Path], Path]:
    """Where :func:`write_tables` writes by default: ``{folder}/{family}/{metric}.csv`` and
    ``{folder}/{family}.md`` (the workflow passes its own paths)."""
    folder = Path(folder)
    return {m: folder / family / f"{m}.csv" for m in METRICS}, folder / f"{family}.md"


def write_tables(
    frame, family: str, csv: Mapping[str, str | os.PathLike], markdown_path: str | os.PathLike
) -> list[Path]:
    """Write one family's tables: per metric a CSV at ``csv[metric]`` (rows layer, step;
    columns size; every metric of :data:`METRICS` needs a path) and a Markdown summary at
    ``markdown_path`` (all layers pooled, plus the median order per layer). Returns the
    paths written. Raises ``ValueError`` naming the metrics without a path."""
    import pandas as pd  # lazy: pandas is heavy and only the table writers need it

    unknown = sorted(set(csv) - set(METRICS))
    missing = [m for m in METRICS if m not in csv]
    if unknown or missing:
        raise ValueError(
            f"tables of {family}: no path for {missing} / unknown metrics {unknown}; give one "
            f"CSV path per metric of {list(METRICS)}."
        )
    sub = frame[frame["family"] == family]
    layers = [POOLED, *sorted(x for x in sub["layer"].unique() if x != POOLED)]
    lines = [
        f"# {family}: dead directions across training time and scale",
        "",
        "Rows: training step; columns: model size; all layers pooled (the CSV tables have "
        "every layer).",
        "",
    ]
    written = []
    for metric, meaning in METRICS.items():
        parts = {layer: table(frame, family, metric, layer) for layer in layers}
        wide = pd.concat(parts, names=["layer", "step"])
        path = Path(csv[metric])
        files.atomic_write(path, lambda tmp, wide=wide: wide.to_csv(tmp))
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
    written.append(files.write_text_atomic(markdown_path, "\n".join(lines + per_layer)))
    return written
