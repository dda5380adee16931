"""Synthetic reads and stores for the store, aggregation and report tests (no models)."""

import math
from pathlib import Path

import numpy as np

from dead_directions.analysis.dead_dimension import DeadDimension
from dead_directions.core.read import DEFAULT_RADII, Read
from dead_directions.io import store

KINDS = ("regular", "singular", "gauge", "unresolved")
PROVENANCE = store.Provenance(
    package_version="0.1.0",
    git_commit="test",
    torch_version="test",
    device="cpu",
    dtype="float64",
    seed=0,
    probe_hash="p",
    checkpoint="ckpt",
    checkpoint_hash="c",
    wall_seconds=1.0,
    written_at="2024-01-01T00:00:00+00:00",
    host="test",
)


def reads_for(key: store.CellKey, n: int | None = None) -> list[Read]:
    """Deterministic reads of a cell: kinds cycle, orders 1, 2, 3, …, curves t^{2(k−1)}."""
    seed = sum(map(ord, str(key)))
    n = 2 + seed % 4 if n is None else n
    radii = np.asarray(DEFAULT_RADII)
    out = []
    for j in range(n):
        kind = KINDS[(seed + j) % 4]
        order = {"regular": 1.0, "singular": 2.0 + (seed + j) % 3, "gauge": math.inf}.get(
            kind, math.nan
        )
        lam = 0.0 if kind == "gauge" else 1.0 / (2.0 * order)
        scale = 1.0 if j % 2 else 0.5
        expo = 0.0 if not math.isfinite(order) else 2 * (order - 1)
        fisher = (1.0 + 0.01 * seed) * (radii * scale) ** expo
        predicted = "singular" if j % 3 else None
        # every third direction carries a base 1e-2, 1e-3 or 1e-4 away (relative); its read
        # at the checkpoint is regular or the base read's kind, alternately
        based = j % 3 == 2
        distance = 10.0 ** -(2 + (seed + j) % 3) if based else math.nan
        at_checkpoint = "regular" if based and (seed + j) % 2 else kind
        checkpoint_order = 1.0 if at_checkpoint == "regular" else order
        out.append(
            Read(
                name=f"{key.layer}:d{j}",
                layer=key.layer,
                detector="synthetic",
                order=order,
                kind=kind,
                lam=lam,
                slope=expo,
                spread=0.001 * j,
                window=(1e-3 * scale, scale) if kind != "unresolved" else None,
                magnitude=10.0**-j,
                correctability=0.5 if kind == "singular" else math.nan,
                radii=radii * scale,
                fisher=fisher,
                fisher_base=0.0,
                g_ref=1.0 + seed,
                ray_order=order if math.isfinite(order) else 2.0,
                predicted_kind=predicted,
                predicted_order=2.0 if predicted else None,
                note=f"n{j}",
                seconds=0.01,
                base_distance=distance,
                checkpoint_kind=at_checkpoint,
                checkpoint_order=checkpoint_order,
                checkpoint_magnitude=10.0**-j,
            )
        )
    return out


def keys(families=("mlp",), sizes=("s", "m"), steps=(0, 10), layers=("fc1", "fc2")):
    return [
        store.CellKey(f, s, st, layer)
        for f in families
        for s in sizes
        for st in steps
        for layer in layers
    ]


def dead_for(key: store.CellKey) -> DeadDimension:
    """A deterministic dead dimension of a cell: 20 + s % 7 parameters, s % 5 dead."""
    seed = sum(map(ord, str(key)))
    n = 20 + seed % 7
    return DeadDimension(key.layer, n, seed % 5, "exact", seed % 5, seed % 3, 1e-10, 100, n)


def write(path: Path, cells, max_directions: int = 8, dead: bool = False) -> None:
    """A store of ``cells`` (with ``dead``: each cell's ``dead_for`` dead dimension)."""
    store.init(path, max_directions=max_directions)
    for key in cells:
        store.write_cell(path, key, reads_for(key), PROVENANCE, dead_for(key) if dead else None)


def chunk_files(path: Path) -> dict[str, bytes]:
    """Every chunk file of a store (metadata ``zarr.json`` left out) and its bytes."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def cell_chunks(path: Path) -> dict[tuple, dict[str, bytes]]:
    """Chunk bytes per cell label: ``{(family, size, step, layer): {array: bytes}}``."""
    out = {}
    for key, index in store.done_cells(path).items():
        files = {}
        for v in store.CELL_VARIABLES:
            base = Path(path) / v.name / "c" / str(index)
            found = sorted(p for p in [base, *base.rglob("*")] if p.is_file())
            files[v.name] = b"".join(p.read_bytes() for p in found)
        out[(key.family, key.size, key.step, key.layer)] = files
    return out
