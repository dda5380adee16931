"""The sweep's per-job steps (probe data, layers, detect, measure, …) and their CLI commands."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from dead_directions import detectors, zoo
from dead_directions.analysis.aggregate import aggregate, table_paths, write_tables
from dead_directions.analysis.dead_dimension import dead_dimension
from dead_directions.analysis.report import figure_paths, figures, write_report
from dead_directions.cli import fmt
from dead_directions.cli.args import step_path
from dead_directions.core.device import DTYPES, resolve_device, torch_dtype
from dead_directions.core.direction import BASE_TOL
from dead_directions.core.read import on_terminal, read_on_device, split_probe
from dead_directions.detectors import Context, detect
from dead_directions.io import checkpoints, files, store
from dead_directions.io.artefacts import (
    cap_directions,
    check_directions,
    check_probe,
    load_directions,
    load_probe,
    module_name,
    probe_hash,
    save_directions,
    save_probe,
    sweep_layer,
)
from dead_directions.zoo import declared
from dead_directions.zoo.declared import DeclaredFamily
from dead_directions.zoo.loading import family, load_model

SPEC_HELP = "a declared family's config entry as JSON (zoo.declared); default: the zoo family"


# --------------------------------------------------------------------------------------
# Files between jobs: probe data and directions (safetensors, no pickle)
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def _threads(n: int | None) -> None:

    if n:
        torch.set_num_threads(int(n))


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def _sidecar_matches(path: Path, family_name: str, size: str, seed: int, tiny: bool) -> bool:

    try:
        meta = checkpoints.read_meta(path)
    except (OSError, ValueError):
        return False
    return (
        meta.get("family") == family_name
        and str(meta.get("size")) == size
        and int(meta.get("seed", -1)) == seed
        and bool(meta.get("tiny", False)) == tiny
    )


def cmd_manifest(args) -> int:
    """Obtain one (family, size)'s checkpoints and write their manifest.

    Trains the zoo family (``dd.zoo.train``) at the ``--save`` steps unless every one is
    already on disk from the same family, size, seed and recipe; or, with ``--external``,
    registers checkpoint files the user brings (``STEP=PATH``, read as they are).
    """
    started = time.perf_counter()
    _threads(args.threads)
    root = Path(args.root)
    fam = family(args.family, args.spec)
    missing: list[int] = []

    if isinstance(fam, DeclaredFamily):
        on_disk = fam.steps_on_disk(args.size)
        wanted = args.save or on_disk
        steps = {s: str(fam.checkpoint(args.size, s)) for s in wanted if s in on_disk}
        missing = [s for s in wanted if s not in on_disk]
        for s in missing:
            print(
                f"warning: {args.family}/{args.size} step {s}: no checkpoint at "
                f"{fam.checkpoint(args.size, s)}",
                file=sys.stderr,
            )
        how = "found"
    elif args.external:
        steps = {}
        for item in args.external:
            step, path = step_path(item, "--external")
            steps[step] = str(path)
        how = "registered"
    else:
        fam = family(args.family)
        save = sorted(set(args.save or fam.default_steps(args.tiny)))
        paths = {s: root / args.family / args.size / f"step{s:07d}.safetensors" for s in save}
        have = all(
            p.exists() and _sidecar_matches(p, args.family, args.size, args.seed, args.tiny)
            for p in paths.values()
        )
        if not have:
            zoo.train(args.family, args.size, save, root, seed=args.seed, tiny=args.tiny)
        steps = {s: str(p) for s, p in paths.items()}
        how = "found" if have else "trained"
    record = {
        "family": args.family,
        "size": args.size,
        "seed": args.seed,
        "tiny": bool(args.tiny),
        "how": how,
        "checkpoints": {str(k): v for k, v in sorted(steps.items())},
        "missing": missing,
    }
    out = Path(args.manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"{args.family}/{args.size}: {len(steps)} checkpoints {how} in "
        f"{time.perf_counter() - started:.1f} s -> {out}"
    )
    return 0


def cmd_probe(args) -> int:
    """Draw a family's probe inputs and save them (with their hash)."""

    fam = family(args.family, args.spec)
    if isinstance(fam, DeclaredFamily):
        inputs = fam.probe(n=args.n, seed=args.seed, tokenizer_from=args.tokenizer_from)
    else:
        inputs = fam.probe(n=args.n, seed=args.seed)
    digest = save_probe(inputs, args.out)
    print(f"probe data of {args.family}: {args.out} (sha256 {digest[:12]})")
    return 0


def cmd_layers(args) -> int:
    """Write the layer names a sweep fans out over for one family and size (JSON list)."""

    _threads(args.threads)
    fam = family(args.family, args.spec)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    else:
        model = fam.build(args.size)
    select = getattr(fam, "select_layers", detectors.layers)
    names = [sweep_layer(n) for n in select(model)]
    if args.only:
        unknown = [p for p in args.only if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unknown:
            raise ValueError(
                f"layers {unknown} match no sweep layer of {args.family}/{args.size}; "
                f"available: {names}"
            )
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in args.only)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(names, indent=1) + "\n")
    print(f"{len(names)} layers of {args.family}/{args.size}: {', '.join(names)}")
    return 0


def detect_cell(
    model, inputs, fam, layer: str, *, detectors=None, max_per_layer=None, limit=None, seed=0
):
    """The directions of one layer (capped at ``limit``) and how many were dropped.

    The detectors see only the fit part of the probe (:func:`dead_directions.split_probe`):
    the read holds the rest out to confirm every gauge verdict (METHOD §3 rule 1)."""
    found = detect_cells(
        model,
        inputs,
        fam,
        [layer],
        detectors=detectors,
        max_per_layer=max_per_layer,
        limit=limit,
        seed=seed,
    )
    return found[layer]


def detect_cells(
    model, inputs, fam, layers, *, detectors=None, max_per_layer=None, limit=None, seed=0
):
    """The directions of every layer of one checkpoint: ``{layer: (directions capped at
    ``limit``, how many were dropped)}`` (one ``dd.detect`` call per layer; a detect job is
    the one-layer case, :func:`detect_cell`). The calls share one ``dd.detectors.Context``:
    the probe batches in float64 and the traced module graph are made once, not once per
    layer. (One call for
    all layers would also share the detectors that run at every anchor, but would plan
    K-FAC's factors of all layers in one pass: a call per layer computes exactly what a
    detect job computes, so both units write the same store.)"""
    fit = split_probe(inputs)[0]
    output = fam.output  # one object: a declared family makes a new one at each access
    ctx = Context(
        model,
        fit,
        likelihood=fam.likelihood,
        output=output,
        seed=seed,
        max_per_layer=max_per_layer,
    )
    out = {}
    for layer in layers:
        found = detect(
            model,
            fit,
            detectors=detectors,
            layers=[module_name(layer)],
            max_per_layer=max_per_layer,
            seed=seed,
            output=output,
            likelihood=fam.likelihood,
            context=ctx,
        )
        out[layer] = cap_directions(found, limit) if limit else (found, 0)
    return out


def parse_detectors(values: Sequence[str] | None):
    """``--detectors`` values: detector names (each run at every layer), or entries
    ``LayerType=name,name`` (a mapping from layer type to names, overriding
    ``dd.detectors.DEFAULT_BY_LAYER_TYPE`` per type); None or empty: the defaults."""
    if not values:
        return None
    typed = ["=" in v for v in values]
    if not any(typed):
        return list(values)
    if not all(typed):
        raise ValueError(
            f"--detectors {' '.join(values)}: give either detector names or LayerType=names "
            "entries (e.g. Linear=dead_unit,kfac LayerNorm=layernorm_kernel), not both."
        )
    mapping: dict[str, list[str]] = {}
    for v in values:
        kind, _, names = v.partition("=")
        if not kind or kind in mapping:
            raise ValueError(f"--detectors {v!r}: each entry is LayerType=name[,name...], once.")
        mapping[kind] = [n for n in names.split(",") if n]
    return mapping


def cmd_detect(args) -> int:
    """Run the detectors on one layer of one checkpoint; save the directions."""
    started = time.perf_counter()
    _threads(args.threads)
    fam = family(args.family, args.spec)
    model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    inputs, digest = load_probe(args.probe)
    check_probe(model, inputs, args.probe)
    limit = store.layout(args.store).max_directions if args.store else args.limit
    found, dropped = detect_cell(
        model,
        inputs,
        fam,
        args.layer,
        detectors=parse_detectors(args.detectors),
        max_per_layer=args.max_per_layer,
        limit=limit,
        seed=args.seed,
    )
    if dropped:
        print(
            f"warning: {dropped} directions dropped to fit the store's max_directions = {limit}",
            file=sys.stderr,
        )
    info = {"checkpoint": str(args.checkpoint), "probe_hash": digest, "dropped": dropped}
    save_directions(found, args.out, info)
    counts: dict[str, int] = {}
    for d in found:
        counts[d.detector] = counts.get(d.detector, 0) + 1
    print(
        f"{args.family}/{args.size}/step{args.step}/{args.layer}: {len(found)} directions "
        f"{counts} in {time.perf_counter() - started:.1f} s"
    )
    return 0


def measure_cell(model, inputs, directions, fam, radii, *, device, dtype, seed=0):
    """Read every direction of one cell on ``device`` (``dd.read_on_device``).

    ``dtype=None`` lets the device choose (float32 with a float64 spot check on CUDA,
    float64 on CPU). Returns ``(reads, spot check or None, device name, dtype name)``.
    """

    if not directions:
        name = "float64" if dtype is None else str(dtype).replace("torch.", "")
        return [], None, str(device), name
    model = model.to(device=device)
    return read_on_device(
        model,
        inputs,
        directions,
        device=device,
        dtype=dtype,
        likelihood=fam.likelihood,
        output=fam.output,
        radii=radii,
        seed=seed,
    )


def layer_dead_dimension(model, inputs, fam, layer: str):
    """The dead dimension of a sweep layer (``dd.dead_dimension``, float64 on the CPU,
    before the read moves the model), or None for a layer without parameters of its own."""

    name = module_name(layer)
    modules = dict(model.named_modules())
    if name not in modules or not any(True for _ in modules[name].parameters(recurse=False)):
        return None
    return dead_dimension(model, inputs, name, likelihood=fam.likelihood, output=fam.output)


def measure_and_write(
    model, inputs, digest, directions, fam, key, args, started, *, lay=None, checkpoint_hash=None
) -> int:
    """Read one cell's directions (``measure_cell``), count its layer's dead dimension, and
    write its chunks, provenance and marker to ``args.store``; returns the cell's index.
    ``args``: the command's checkpoint, store, device, dtype and seed; ``started``: when the
    cell's work began (its wall time). ``lay`` (the store's layout) and ``checkpoint_hash``
    are computed when not given (a job reading many cells of one checkpoint passes them:
    hashing a large checkpoint folder once per layer would cost more than its reads)."""
    lay = lay if lay is not None else store.layout(args.store)
    if checkpoint_hash is None:
        checkpoint_hash = store.file_hash(args.checkpoint)
    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype)
    dead = layer_dead_dimension(model, inputs, fam, key.layer)
    reads, check, device_name, dtype_name = measure_cell(
        model, inputs, directions, fam, lay.radii, device=device, dtype=dtype, seed=args.seed
    )
    prov = store.Provenance.collect(
        device=device_name,
        dtype=dtype_name,
        spot_check=check,
        seed=args.seed,
        probe_hash=digest,
        checkpoint=str(args.checkpoint),
        checkpoint_hash=checkpoint_hash,
        wall_seconds=time.perf_counter() - started,
    )
    index = store.write_cell(args.store, key, reads, prov, dead)
    kinds: dict[str, int] = {}
    for r in reads:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    if dead is not None:
        print(
            f"{key}: dead dimension {dead.dead} of {dead.n_params} ({dead.method}, rtol "
            f"{dead.rtol:g}, rank cap {dead.rank_cap})"
        )
    print(
        f"{key}: {len(reads)} reads {kinds} on {device_name} ({dtype_name}) in "
        f"{time.perf_counter() - started:.1f} s -> {args.store} cell {index}"
    )
    return index


def cmd_measure(args) -> int:
    """Read one cell's directions at its checkpoint and write its chunks and marker."""
    started = time.perf_counter()
    _threads(args.threads)
    key = store.CellKey(args.family, args.size, int(args.step), args.layer)
    fam = family(args.family, args.spec)
    model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    inputs, digest = load_probe(args.probe)
    check_probe(model, inputs, args.probe)
    directions = load_directions(args.directions)
    check_directions(directions, model, args.directions)
    measure_and_write(model, inputs, digest, directions, fam, key, args, started)
    return 0


def cmd_measure_checkpoint(args) -> int:
    """Detect and read every layer of one checkpoint in one process (the sweep's
    per-checkpoint unit of work): the model and probe load once; each layer's directions
    are saved under ``--directions-dir`` and written as its own store cell, exactly as the
    per-layer `detect` and `measure` jobs do; then the checkpoint's marker is written."""

    started = time.perf_counter()
    _threads(args.threads)
    fam = family(args.family, args.spec)
    model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    inputs, digest = load_probe(args.probe)
    check_probe(model, inputs, args.probe)
    layers = json.loads(Path(args.layers).read_text())
    lay = store.layout(args.store)
    checkpoint_hash = store.file_hash(args.checkpoint)
    out_dir = Path(args.directions_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # every layer's directions (on the CPU, as in a detect job), sharing one detector
    # context; the time is charged to the layers in equal shares
    detect_started = time.perf_counter()
    detected = detect_cells(
        model,
        inputs,
        fam,
        layers,
        detectors=parse_detectors(args.detectors),
        max_per_layer=args.max_per_layer,
        limit=lay.max_directions,
        seed=args.seed,
    )
    share = (time.perf_counter() - detect_started) / max(len(layers), 1)
    cells = []
    for layer in tqdm(layers, desc="layers", unit="layer", disable=not on_terminal()):
        layer_started = time.perf_counter() - share
        model = model.to("cpu")  # the read may have moved it to the device
        found, dropped = detected[layer]
        path = out_dir / f"{layer}.safetensors"
        info = {"checkpoint": str(args.checkpoint), "probe_hash": digest, "dropped": dropped}
        save_directions(found, path, info)
        directions = load_directions(path)  # the round trip a measure job reads
        key = store.CellKey(args.family, args.size, int(args.step), layer)
        index = measure_and_write(
            model,
            inputs,
            digest,
            directions,
            fam,
            key,
            args,
            layer_started,
            lay=lay,
            checkpoint_hash=checkpoint_hash,
        )
        cells.append({"layer": layer, "index": index, "n_directions": len(directions)})
    record = {
        "family": args.family,
        "size": args.size,
        "step": int(args.step),
        "cells": cells,
        "seconds": time.perf_counter() - started,
    }
    files.write_text_atomic(Path(args.marker), json.dumps(record, indent=1) + "\n")
    print(
        f"{args.family}/{args.size}/step{args.step}: {len(cells)} layers in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def _radii(args) -> np.ndarray | None:
    if args.radii:
        return np.asarray(args.radii, dtype=float)
    if args.n_radii:
        if not 0 < args.r_min < args.r_max:
            raise ValueError(
                f"--r-min {args.r_min} and --r-max {args.r_max}: need 0 < r_min < r_max "
                "(config store_layout.r_min, store_layout.r_max)."
            )
        return np.logspace(np.log10(args.r_min), np.log10(args.r_max), args.n_radii)
    return None


def cmd_init_store(args) -> int:
    """Create the store (or check an existing one's layout) and write a marker file.

    The marker records the store's path, identity and layout: the workflow compares them
    with the store and the config before any job runs (a deleted or replaced store is
    rebuilt; a changed layout is refused).
    """
    lay = store.init(args.store, max_directions=args.max_directions, radii=_radii(args))
    if args.marker:
        record = {
            "store": str(args.store),
            "store_id": store.store_id(args.store),
            "max_directions": lay.max_directions,
            "radii": lay.radii,
        }
        files.write_text_atomic(Path(args.marker), json.dumps(record) + "\n")
    print(f"store {args.store}: max_directions {lay.max_directions}, {len(lay.radii)} radii")
    return 0


def _dask_spec(text: str):
    """``--dask``: a JSON mapping (``ClusterSpec`` fields), a kind, or an address."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--dask: not valid JSON ({err}).") from None
    return text or None


def cmd_aggregate(args) -> int:
    """Summarise the completed cells of the store with dask; write the tidy CSV."""

    started = time.perf_counter()
    frame = aggregate(args.store, _dask_spec(args.dask), base_tol=args.base_tol)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    cells = int((frame["layer"] != "all").sum()) if len(frame) else 0
    print(f"{cells} cells aggregated in {time.perf_counter() - started:.1f} s -> {out}")
    return 0


def _summary(path):
    import pandas as pd  # lazy: pandas is heavy and only the table writers need it

    path = Path(path)
    if not path.exists():
        raise ValueError(f"summary {path} does not exist; run `dead-directions aggregate`.")
    return pd.read_csv(path, dtype={"family": str, "size": str, "layer": str})


def _assignments(items: Sequence[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` items as a mapping; ``ValueError`` naming ``option`` otherwise."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}.")
        out[key] = value
    return out


def cmd_tables(args) -> int:
    """Write one family's step × size tables (a CSV per metric, a Markdown summary)."""
    frame = _summary(args.summary)
    csv = _assignments(args.csv, "--csv")
    if args.out_dir:
        csv, markdown = table_paths(args.out_dir, args.family)
    else:
        markdown = args.markdown
    if not markdown:
        raise ValueError("tables: give --markdown PATH and --csv METRIC=PATH, or --out-dir.")
    written = write_tables(frame, args.family, csv, markdown)
    print("\n".join(map(str, written)))
    return 0


def cmd_figures(args) -> int:
    """Draw one family's figures (dead dimension, order heatmap, counts, rate curves)."""
    frame = _summary(args.summary)
    checkpoint = None
    if args.checkpoint:
        size, _, step = args.checkpoint.rpartition(":")
        checkpoint = (size, int(step))
    paths = figure_paths(args.out_dir) if args.out_dir else _assignments(args.figure, "--figure")
    written = figures(frame, args.store, args.family, paths, checkpoint)
    print("\n".join(map(str, written)))
    return 0


def cmd_report(args) -> int:
    """Write the report (Markdown and HTML) from the summary and the figures."""
    frame = _summary(args.summary)
    dirs = _assignments(args.figures, "--figures")
    tables = _assignments(args.prune_table, "--prune-table")
    pngs = _assignments(args.prune_figure, "--prune-figure")
    if set(tables) != set(pngs):
        raise ValueError("--prune-table and --prune-figure must name the same families.")
    paths = write_report(
        frame,
        dirs,
        args.out,
        store_path=args.store or "",
        missing=args.missing,
        html_out=args.html,
        prune={family: (tables[family], pngs[family]) for family in tables},
    )
    print("\n".join(map(str, paths)))
    return 0


def cmd_check_family(args) -> int:
    """Check a declared family on one of its checkpoints before a sweep runs (the workflow
    calls this when it starts): builder, probe, output and layer patterns."""

    fam = declared.DeclaredFamily.from_config(args.family, json.loads(args.spec))
    layers = declared.check(fam, args.size, args.step)
    print(f"{args.family}: {len(layers)} layers: {', '.join(layers)}")
    return 0


def cmd_missing(args) -> int:
    """Write the table of checkpoints the config lists but the disk lacks or cannot read (CSV:
    family, size, step, path, reason)."""
    import pandas as pd  # lazy: pandas is heavy and only the table writers need it

    try:
        records = json.loads(args.records)
    except json.JSONDecodeError as err:
        raise ValueError(f"--records: not valid JSON ({err}).") from None
    for row in records:
        row.setdefault("reason", "not on disk")
    frame = pd.DataFrame(records, columns=["family", "size", "step", "path", "reason"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    for row in records:
        print(
            f"missing: {row['family']}/{row['size']} step {row['step']}: {row['path']} "
            f"({row['reason']})"
        )
    print(f"{len(records)} missing checkpoints -> {out}")
    return 0


def cmd_read(args) -> int:
    """Detect and read the directions of one checkpoint; print a table; optionally store."""

    started = time.perf_counter()
    _threads(args.threads)
    spec = _read_spec(args)
    args.family = args.family or "checkpoint"
    fam = family(args.family, spec)
    model, meta = load_model(
        args.checkpoint,
        args.family,
        args.size,
        override_family=args.override_family,
        fam=fam if spec else None,
    )
    size = args.size or str(meta.get("size", "")) or "default"
    step = args.step if args.step is not None else int(meta.get("step", 0) or 0)
    if spec:
        inputs = fam.probe(n=args.probe_n, seed=args.seed, tokenizer_from=args.checkpoint)
        check_probe(model, inputs, args.probe_file)
    else:
        inputs = fam.probe(n=args.probe_n, seed=args.seed)
    select = getattr(fam, "select_layers", detectors.layers)
    layers = args.layers or [sweep_layer(n) for n in select(model)]
    device, dtype = resolve_device(args.device), torch_dtype(args.dtype)
    radii, limit = None, None
    if args.store:
        lay = (
            store.layout(args.store)
            if _has_store(args.store)
            else store.init(args.store, max_directions=args.max_directions)
        )
        radii, limit = lay.radii, lay.max_directions
    # The dead dimension goes with the stored cells; counted before the read moves the model.
    dead = (
        {layer: layer_dead_dimension(model, inputs, fam, layer) for layer in layers}
        if args.store
        else {}
    )
    rows, per_layer = [], {}
    # every layer's directions at once, sharing one detector context (as a sweep's
    # per-checkpoint job does), on the CPU before any read moves the model
    detected = detect_cells(
        model,
        inputs,
        fam,
        layers,
        detectors=parse_detectors(args.detectors),
        max_per_layer=args.max_per_layer,
        limit=limit,
        seed=args.seed,
    )
    for layer in tqdm(layers, desc="layers", unit="layer", disable=not on_terminal()):
        found, _ = detected[layer]
        reads, check, device_name, dtype_name = measure_cell(
            model, inputs, found, fam, radii, device=device, dtype=dtype, seed=args.seed
        )
        per_layer[layer] = (reads, check, device_name, dtype_name)
        for r in reads:
            rows.append(
                [
                    layer,
                    r.name,
                    r.kind,
                    fmt(r.order),
                    r.predicted_kind or "—",
                    fmt(r.predicted_order, 0),
                    fmt(r.lam),
                    fmt(r.nu),
                    fmt(r.correctability),
                    f"{r.magnitude:.1e}",
                    # a direction with a base is read at the base and at the checkpoint
                    f"{r.checkpoint_kind} {fmt(r.checkpoint_order)}" if r.has_base else "—",
                    f"{r.base_distance:.1e}" if r.has_base else "—",
                ]
            )
    headers = ["layer", "direction", "kind", "k̂", "pred kind", "pred k", "λ", "ν", "ρ", "g/g_ref"]
    headers += ["at checkpoint", "base dist"]
    print(tabulate(rows, headers=headers, tablefmt=args.format))
    seconds = time.perf_counter() - started
    print(f"\n{len(rows)} directions in {len(layers)} layers read in {seconds:.1f} s.")
    if args.store:
        digest, checkpoint_hash = probe_hash(inputs), store.file_hash(args.checkpoint)
        for layer, (reads, check, device_name, dtype_name) in per_layer.items():
            prov = store.Provenance.collect(
                device=device_name,
                dtype=dtype_name,
                spot_check=check,
                seed=args.seed,
                probe_hash=digest,
                checkpoint=str(args.checkpoint),
                checkpoint_hash=checkpoint_hash,
                wall_seconds=seconds / max(1, len(layers)),
            )
            key = store.CellKey(args.family, size, step, layer)
            store.write_cell(args.store, key, reads, prov, dead.get(layer))
        print(f"written to {args.store} ({len(per_layer)} cells).")
    return 0


def _read_spec(args) -> dict | None:
    """A declared family's config entry from `read`'s command line (``--builder`` …), or
    None to read as the zoo family ``--family``."""
    if not args.builder:
        if not args.family:
            raise ValueError(
                "read: give --family (a zoo family) or --builder (hf, module:function)."
            )
        return None
    if not args.probe_file:
        raise ValueError("read: --builder needs --probe-file (the probe data) and --probe-kind.")
    spec = {
        "builder": args.builder,
        "task": args.task,
        "likelihood": args.likelihood,
        "probe": {"path": args.probe_file, "kind": args.probe_kind, "length": args.probe_length},
    }
    if args.output:
        spec["output"] = args.output
    return spec


def _has_store(path) -> bool:
    return (Path(path) / "zarr.json").exists()


def _family_args(
    p: argparse.ArgumentParser, size: bool = True, spec_required: bool = False
) -> None:
    """``--family``, ``--size`` (unless ``size`` is False) and ``--spec``: which model."""
    p.add_argument("--family", required=True)
    if size:
        p.add_argument("--size", required=True)
    p.add_argument("--spec", required=spec_required, default=None, help=SPEC_HELP)


def _cell_args(p: argparse.ArgumentParser, layer: bool = True) -> None:
    """:func:`_family_args` and the cell's step, layer, checkpoint and probe."""
    _family_args(p)
    p.add_argument("--step", required=True, type=int)
    if layer:
        p.add_argument("--layer", required=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint file")
    p.add_argument("--probe", required=True, help="probe data (from `dead-directions probe`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "manifest", help="train (or register) one family size's checkpoints; write their manifest"
    )
    _family_args(p)
    p.add_argument("--root", required=True, help="checkpoint root ({root}/{family}/{size}/…)")
    p.add_argument("--save", type=int, nargs="*", default=None, help="steps to save")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the zoo's tiny recipe")
    p.add_argument("--external", nargs="*", default=None, help="STEP=PATH checkpoints to use")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--manifest", required=True, help="manifest JSON to write")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("probe", help="save a family's probe inputs")
    _family_args(p, size=False)
    p.add_argument("--n", type=int, default=None, help="probe inputs (family default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--tokenizer-from", default=None, help="a checkpoint folder with the tokenizer (text)"
    )
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("layers", help="list the layers a sweep fans out over (JSON)")
    _family_args(p)
    p.add_argument("--checkpoint", default=None, help="read the model from this checkpoint")
    p.add_argument("--only", nargs="*", default=None, help="keep only these layers")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("detect", help="run the detectors on one layer of one checkpoint")
    _cell_args(p)
    p.add_argument("--detectors", nargs="*", default=None, help="detector names (default all)")
    p.add_argument("--max-per-layer", type=int, default=None)
    p.add_argument("--store", default=None, help="cap at this store's max_directions")
    p.add_argument("--limit", type=int, default=None, help="cap without a store")
    p.add_argument("--out", required=True, help="directions file (.safetensors)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("measure", help="read one cell and write it to the store")
    _cell_args(p)
    p.add_argument("--directions", required=True, help="from `dead-directions detect`")
    p.add_argument("--store", required=True)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:0…")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="auto: float32 on CUDA, else float64"
    )
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser(
        "measure-checkpoint", help="detect and read every layer of one checkpoint (one job)"
    )
    _cell_args(p, layer=False)
    p.add_argument("--layers", required=True, help="the layers JSON (`dead-directions layers`)")
    p.add_argument("--detectors", nargs="*", default=None, help="detector names (default all)")
    p.add_argument("--max-per-layer", type=int, default=None)
    p.add_argument("--store", required=True)
    p.add_argument("--directions-dir", required=True, help="folder of the layers' directions")
    p.add_argument("--marker", required=True, help="the checkpoint's marker (JSON) to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:0…")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="auto: float32 on CUDA, else float64"
    )
    p.set_defaults(func=cmd_measure_checkpoint)

    p = sub.add_parser("init-store", help="create the Fisher-rate store (never truncates)")
    p.add_argument("--store", required=True)
    p.add_argument("--max-directions", type=int, default=store.DEFAULT_MAX_DIRECTIONS)
    p.add_argument("--n-radii", type=int, default=None, help="log-spaced radii (default 25)")
    p.add_argument("--r-min", type=float, default=1e-4)
    p.add_argument("--r-max", type=float, default=1.0)
    p.add_argument("--radii", type=float, nargs="*", default=None, help="explicit radii")
    p.add_argument("--marker", default=None, help="write this marker file when done")
    p.set_defaults(func=cmd_init_store)

    p = sub.add_parser("aggregate", help="summarise the store with dask (tidy CSV)")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--dask",
        default="local",
        help="local (LocalCluster), threads, synchronous, tcp://address, slurm, or a JSON "
        "mapping of dead_directions.analysis.cluster.ClusterSpec fields",
    )
    p.add_argument(
        "--base-tol",
        type=float,
        default=BASE_TOL,
        help="a base read counts as recovered only where the base lies within this distance "
        "of the checkpoint, relative to the norm of the tensors it moves (default %(default)g)",
    )
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("tables", help="one family's step × size tables (CSV, Markdown)")
    p.add_argument("--summary", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--markdown", default=None, help="the Markdown summary's path")
    p.add_argument("--csv", nargs="*", default=None, help="METRIC=PATH per metric")
    p.add_argument("--out-dir", default=None, help="instead: {dir}/{family}/{metric}.csv, …")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("figures", help="one family's figures (PNG)")
    p.add_argument("--summary", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--figure", nargs="*", default=None, help="NAME=PATH per figure")
    p.add_argument("--out-dir", default=None, help="instead: {dir}/{name}.png")
    p.add_argument("--checkpoint", default=None, help="SIZE:STEP of the rate curves")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("report", help="the sweep report (Markdown + HTML)")
    p.add_argument("--summary", required=True)
    p.add_argument("--figures", nargs="*", default=None, help="FAMILY=DIR of its figures")
    p.add_argument("--store", default=None)
    p.add_argument("--missing", default=None, help="CSV of missing checkpoints (a section)")
    p.add_argument("--out", required=True, help="the report's Markdown path")
    p.add_argument("--html", default=None, help="its HTML path (default: --out as .html)")
    p.add_argument("--prune-table", nargs="*", default=None, help="FAMILY=CSV (prune tables)")
    p.add_argument("--prune-figure", nargs="*", default=None, help="FAMILY=PNG (prune figure)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("check-family", help="check a declared family before a sweep")
    _family_args(p, spec_required=True)
    p.add_argument("--step", required=True, type=int)
    p.set_defaults(func=cmd_check_family)

    p = sub.add_parser("missing", help="table of the checkpoints the config lists but lacks")
    p.add_argument("--records", required=True, help="JSON list of {family, size, step, path}")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_missing)

    p = sub.add_parser("read", help="detect and read one checkpoint; print a table")
    p.add_argument("checkpoint")
    p.add_argument("--family", default=None, help="a zoo family (or a name for --builder)")
    p.add_argument("--builder", default=None, help="hf or module:function: no zoo family")
    p.add_argument(
        "--task",
        default="base",
        choices=["base", "causal-lm", "sequence-classification", "image-classification"],
        help="with --builder hf: the head the model is built with",
    )
    p.add_argument("--probe-file", default=None, help="with --builder: the probe data")
    p.add_argument(
        "--probe-kind", default="tensor", choices=["text", "tensor", "images", "datasets"]
    )
    p.add_argument("--probe-length", type=int, default=32, help="text: tokens per example")
    p.add_argument("--likelihood", default="gaussian", choices=["gaussian", "categorical"])
    p.add_argument("--output", default=None, help="output field (logits, ...) or tensor")
    p.add_argument(
        "--override-family",
        action="store_true",
        help="read with --family even where the checkpoint's sidecar names another family",
    )
    p.add_argument("--size", default=None, help="default: from the checkpoint's sidecar")
    p.add_argument("--step", type=int, default=None, help="default: from the sidecar")
    p.add_argument("--layers", nargs="*", default=None, help="default: all sweep layers")
    p.add_argument("--detectors", nargs="*", default=None)
    p.add_argument("--max-per-layer", type=int, default=None)
    p.add_argument("--probe-n", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--store", default=None, help="also write the cells to this store")
    p.add_argument("--max-directions", type=int, default=store.DEFAULT_MAX_DIRECTIONS)
    p.add_argument("--format", default="github")
    p.set_defaults(func=cmd_read)
