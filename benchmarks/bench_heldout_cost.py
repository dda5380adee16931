"""What held-out confirmation of gauges costs the read (issue 16, acceptance 7).

Cells mode (default): every constructed cell (``dd.constructed.read_cells``) read twice,
interleaved, three times over: the default read (curves and ρ on the fit three quarters of
the probe, every gauge confirmed on the held-out quarter) and the same fit part read with
nothing held out (``heldout_fraction=0``). The difference is the confirmation's cost; a
gauge costs a second read on the held-out inputs, so it scales with the share of gauges.

Sweep mode (``--sweep RESULTS``): the default sweep's own reads, after ``make run``: every
cell of ``RESULTS/store.zarr`` re-read from its saved directions, checkpoint and probe (one
process, one thread, the same machine, variants interleaved cell by cell so that load
changes hit them alike): ``full`` (today's read: held-out confirmation and each
direction with a base read at the checkpoint too), ``no checkpoint read``
(``read_at_checkpoint=False``) and ``neither`` (the fit part with nothing held out and no
checkpoint read: the read before issue 16). Prints per-variant read seconds and the
ratios, and checks that ``full`` reproduces the store's kinds. The order of the variants
rotates from cell to cell, so that the first read of a cell (which pays its warm-up) is
spread evenly over them.

    python benchmarks/bench_heldout_cost.py
    python benchmarks/bench_heldout_cost.py --sweep results
"""

import argparse
import json
import time
from pathlib import Path

import torch

import dead_directions as dd
from dead_directions.io import artefacts, store
from dead_directions.zoo import loading


def cells_mode() -> None:
    cells = dd.constructed.read_cells()
    off = dd.ReadOptions(heldout_fraction=0)
    total = {"confirmed": 0.0, "not confirmed": 0.0}
    reps = 3
    gauges = 0
    for _ in range(reps):
        gauges = 0
        for c in cells:
            fit, _ = dd.split_probe(c.inputs)
            start = time.perf_counter()
            gauges += c.read().kind == "gauge"
            total["confirmed"] += time.perf_counter() - start
            start = time.perf_counter()
            dd.read(c.model, fit, c.direction, likelihood=c.likelihood, options=off)
            total["not confirmed"] += time.perf_counter() - start
    with_s, without_s = total["confirmed"] / reps, total["not confirmed"] / reps
    print(
        f"{len(cells)} cells ({gauges} gauges), one thread, mean of {reps} passes: "
        f"{with_s:.2f} s with held-out confirmation, {without_s:.2f} s without "
        f"({with_s / without_s:.1f}×)"
    )


def sweep_mode(results: Path, max_cells: int | None = None) -> None:

    path = results / "store.zarr"
    radii = store.layout(path).radii
    done = sorted(store.done_cells(path), key=lambda k: (k.family, k.size, k.step, k.layer))
    done = done[:max_cells] if max_cells else done
    variants = {
        "full": dd.ReadOptions(),
        "no checkpoint read": dd.ReadOptions(read_at_checkpoint=False),
        "neither": dd.ReadOptions(heldout_fraction=0, read_at_checkpoint=False),
    }
    seconds = dict.fromkeys(variants, 0.0)
    n_dirs = n_gauge = n_based = same = 0
    stored = {
        key: [str(k) for k in ds["kind"].values]
        for key, ds in store.cell_datasets(path, done).items()
    }
    probes = {}
    for index, key in enumerate(done):
        fam = loading.family(key.family)
        ckpt = results / "checkpoints" / key.family / key.size / f"step{key.step:07d}.safetensors"
        dfile = results / "directions" / key.family / key.size / f"step{key.step:07d}"
        dfile = dfile / f"{key.layer}.safetensors"
        dirs = artefacts.load_directions(dfile)
        if not dirs:
            continue
        model, _ = loading.load_model(ckpt, key.family, key.size)
        if key.family not in probes:
            probe_file = results / "probe" / f"{key.family}.safetensors"
            probes[key.family] = artefacts.load_probe(probe_file)[0]
        probe = probes[key.family]
        fit, _ = dd.split_probe(probe)
        common = dict(likelihood=fam.likelihood, output=fam.output, radii=radii, seed=0)
        names = list(variants)
        turn = index % len(names)  # rotate which variant goes first (it pays the warm-up)
        for name in names[turn:] + names[:turn]:
            options = variants[name]
            inputs = fit if name == "neither" else probe
            start = time.perf_counter()
            reads = dd.read_many(model, inputs, dirs, options=options, **common)
            seconds[name] += time.perf_counter() - start
            if name == "full":
                kinds = [r.kind for r in reads]
                same += int(kinds == stored[key])
                n_gauge += sum(k == "gauge" for k in kinds)
                n_based += sum(bool(d.base) for d in dirs)
        n_dirs += len(dirs)
        print(
            f"{key.family}/{key.size}/step{key.step}/{key.layer}: {len(dirs)} directions; "
            "cumulative s: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
            flush=True,
        )
    base = seconds["neither"]
    record = {
        "cells": len(done),
        "directions": n_dirs,
        "gauges": n_gauge,
        "with_base": n_based,
        "cells_reproducing_store_kinds": same,
        "seconds": seconds,
        "ratio_to_neither": {k: v / base for k, v in seconds.items()},
    }
    print(json.dumps(record, indent=1))
    print(
        f"{len(done)} cells, {n_dirs} directions ({n_gauge} gauges, {n_based} with a base), "
        f"one thread: read {seconds['full']:.1f} s today, "
        f"{seconds['no checkpoint read']:.1f} s without the checkpoint read, "
        f"{base:.1f} s with neither ({seconds['full'] / base:.2f}×; held-out confirmation "
        f"alone {seconds['no checkpoint read'] / base:.2f}×); {same}/{len(done)} cells "
        "reproduce the store's kinds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=None, help="a sweep's results folder")
    parser.add_argument("--max-cells", type=int, default=None, help="sweep: the first N cells")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.sweep is None:
        cells_mode()
    else:
        sweep_mode(args.sweep, args.max_cells)


if __name__ == "__main__":
    main()
