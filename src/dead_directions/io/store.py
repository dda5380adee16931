"""The Fisher-rate store: one Zarr v3 store of rate curves and reads, one chunk per cell.

Layout
------
A *cell* is one (family, size, step, layer): the directions the detectors found in one
layer of one checkpoint. The store at ``PATH`` (a plain Zarr v3 group, no consolidated
metadata, no sharding) holds flat arrays over a ``cell`` dimension::

    family, size, layer (cell) str; step (cell) int64        cell labels (coordinates)
    fisher (cell, direction, radius) float64                  rate curves g(t)
    order, lam, kind, label, detector, ... (cell, direction)  per-direction reads
    n_directions, device, dtype, git_commit, ... (cell)       per-cell provenance
    radius (radius), direction (direction)                    index coordinates

``direction`` has a fixed capacity (``max_directions``, set at init); a cell with fewer
directions leaves the rest at the fill value (``label == ""``). ``radius`` is the unit
radius grid; direction ``j`` was read at ``radius * scale[j]``. Every array is chunked
with one cell per chunk and the whole of its other dimensions, so a cell's data is one
file per array and no two cells share a chunk (and nothing is sharded).

Beside it, the *ledger* ``PATH.ledger/`` (plain files, outside the Zarr hierarchy):

* ``cells.jsonl`` — the append-only registry ``{"index", "family", "size", "step",
  "layer"}``: a cell's index is fixed the first time it is written and never changes;
* ``lock`` — an ``fcntl`` lock taken only to register a cell (read the registry, append a
  line, grow every cell array by resizing, which rewrites only ``zarr.json`` metadata,
  and write the new index's label chunks);
* ``done/{family}/{size}/step{step:07d}/{layer}.json`` — the completion marker with the
  cell's provenance and the store's identity, written atomically after all of the cell's
  chunks;
* ``store_id`` — the identity of the store this ledger belongs to;
* ``cells/{family}/{size}/step{step:07d}/{layer}.lock`` — a cell's writer lock.

Store and ledger are one unit. :func:`init` gives every new store a random identity
(``store_id`` in the group attributes) and writes it into the ledger; a marker counts only
when it carries the store's current identity. A store created where a ledger of another (a
deleted or replaced) store lies moves that ledger aside to ``PATH.ledger.stale-…`` first, so
that no stale marker can count an empty cell as done.

Concurrency and growth: any number of writers run at once; each registers under the lock,
then writes only its own index's chunks without the registry lock, holding its cell's
writer lock from removing the marker to writing it again: a second writer of the same cell
waits, so a cell is always wholly one writer's. Growing the sweep appends
cells; existing chunk files are never rewritten, moved or truncated (resizing a Zarr array
to a larger shape leaves its chunks alone). Completion is the marker alone: Zarr does not
store fill-value chunks, so a missing chunk proves nothing. A writer first removes its
cell's marker, then writes, then writes the marker; a writer killed at any point leaves
the cell uncounted and a rerun rewrites the same chunks (and removes any ``*.partial``
temporary files a killed write left under its own chunk paths). The lock needs a file
system with working ``flock`` (local disks, NFSv4, Lustre mounted with ``flock``).

``xarray.open_zarr(PATH)`` opens the flat view (labels as non-index coordinates on
``cell``); :func:`open` selects the completed cells and unstacks them into dims
``(family, size, step, layer, direction, radius)``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as _dt
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import subprocess
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dead_directions.core.assembly import nu_of_read
from dead_directions.core.read import DEFAULT_RADII
from dead_directions.io import files
from dead_directions.version import __version__

STORE_VERSION = 1
DEFAULT_MAX_DIRECTIONS = 64
LABELS = ("family", "size", "step", "layer")


@dataclass(frozen=True, order=True)
class CellKey:
    """One cell of the sweep: a layer of one checkpoint of one model size of one family."""

    family: str
    size: str
    step: int
    layer: str

    def __post_init__(self):
        for name in ("family", "size", "layer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or "/" in value or value in {".", ".."}:
                raise ValueError(
                    f"cell {name} must be a non-empty string without '/', got {value!r}."
                )
        if isinstance(self.step, bool) or not isinstance(self.step, int | np.integer):
            raise ValueError(f"cell step must be an integer, got {self.step!r}.")
        if self.step < 0:
            raise ValueError(f"cell step must be ≥ 0, got {self.step}.")
        object.__setattr__(self, "step", int(self.step))

    @property
    def path(self) -> str:
        """``family/size/step{step:07d}/layer``: the cell's path under ``done/`` (and logs)."""
        return f"{self.family}/{self.size}/step{self.step:07d}/{self.layer}"

    def __str__(self) -> str:
        return f"{self.family}/{self.size}/step{self.step}/{self.layer}"


@dataclass(frozen=True)
class Layout:
    """What fixes the shape of a store: direction capacity and the unit radius grid."""

    max_directions: int
    radii: tuple[float, ...]

    def __post_init__(self):
        if int(self.max_directions) < 1:
            raise ValueError("max_directions must be ≥ 1.")
        grid = np.asarray(self.radii, dtype=float)
        if grid.ndim != 1 or len(grid) < 4 or np.any(~np.isfinite(grid)) or np.any(grid <= 0):
            raise ValueError("radii: give at least 4 finite positive radii.")
        if np.any(np.diff(grid) <= 0):
            raise ValueError("radii must be strictly increasing.")
        object.__setattr__(self, "max_directions", int(self.max_directions))
        object.__setattr__(self, "radii", tuple(float(r) for r in grid))


@dataclass(frozen=True)
class Provenance:
    """Where a cell's numbers came from (stored per cell and in its marker)."""

    package_version: str
    git_commit: str
    torch_version: str
    device: str
    dtype: str
    seed: int
    probe_hash: str
    checkpoint: str
    checkpoint_hash: str
    wall_seconds: float
    written_at: str
    host: str
    spot_check_n: int = 0
    spot_check_order_diff: float = math.nan
    spot_check_kind_agreement: float = math.nan

    @classmethod
    def collect(
        cls,
        *,
        device: str,
        dtype: str,
        seed: int,
        probe_hash: str = "",
        checkpoint: str = "",
        checkpoint_hash: str = "",
        wall_seconds: float = math.nan,
        spot_check=None,
    ) -> Provenance:
        """Fill in versions, commit, host and time of the running process.

        ``spot_check``: the ``dd.SpotCheck`` of a lower-precision read, if any.
        """

        try:
            torch_version = torch.__version__
        except ImportError:  # pragma: no cover - torch is a dependency
            torch_version = ""
        return cls(
            package_version=__version__,
            git_commit=git_commit(),
            torch_version=torch_version,
            device=str(device),
            dtype=str(dtype),
            seed=int(seed),
            probe_hash=probe_hash,
            checkpoint=str(checkpoint),
            checkpoint_hash=checkpoint_hash,
            wall_seconds=float(wall_seconds),
            written_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            host=platform.node(),
            spot_check_n=len(spot_check.indices) if spot_check else 0,
            spot_check_order_diff=spot_check.max_order_diff if spot_check else math.nan,
            spot_check_kind_agreement=spot_check.kind_agreement if spot_check else math.nan,
        )


@functools.cache
def git_commit() -> str:
    """``git describe --always --dirty`` of the package source, or ``"unknown"``."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (or of every file under a directory, in sorted order)."""
    path = Path(path)
    h = hashlib.new(algorithm)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with builtins.open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Variables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """One array of the store: dims, dtype, fill value and what it means (its attrs)."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    fill: object
    long_name: str
    units: str = "1"
    description: str = ""


_C, _CD, _CDR = ("cell",), ("cell", "direction"), ("cell", "direction", "radius")
G_UNITS = "squared output units per squared parameter unit (÷σ² for the Gaussian head)"

LABEL_VARIABLES = (
    Variable("family", _C, "str", "", "model family", "", "dd.zoo family name"),
    Variable("size", _C, "str", "", "model size", "", "the family's size name"),
    Variable("step", _C, "int64", -1, "training step of the checkpoint", "step"),
    Variable("layer", _C, "str", "", "layer", "", "module name in model.named_modules()"),
)

DATA_VARIABLES = (
    Variable(
        "fisher",
        _CDR,
        "float64",
        np.nan,
        "directional Fisher g(θ_base + t u; u)",
        G_UNITS,
        "rate curve at radius t = radius · scale",
    ),
    Variable("fisher_base", _CD, "float64", np.nan, "g at t = 0", G_UNITS),
    Variable(
        "g_ref",
        _CD,
        "float64",
        np.nan,
        "median g of random unit directions in the same tensors",
        G_UNITS,
    ),
    Variable("label", _CD, "str", "", "direction name", "", "'' marks an unused slot"),
    Variable("detector", _CD, "str", "", "detector that proposed the direction", ""),
    Variable(
        "kind",
        _CD,
        "str",
        "",
        "measured kind",
        "",
        "regular | singular | gauge | undetermined | unresolved",
    ),
    Variable(
        "order",
        _CD,
        "float64",
        np.nan,
        "measured KL order k̂",
        "1",
        "g ≍ t^{2(k−1)}; inf for a gauge, NaN when unresolved",
    ),
    Variable("lam", _CD, "float64", np.nan, "learning coefficient λ_u = 1/(2k̂)", "1"),
    Variable(
        "nu",
        _CD,
        "float64",
        np.nan,
        "singular fluctuation ν(k) of the direction",
        "1",
        "regular ½, gauge 0, singular ν(k) for the integer k within 0.1 of k̂ (k ≤ 6), "
        "else NaN (METHOD §6; dd.assembly.nu)",
    ),
    Variable("nu_error", _CD, "float64", np.nan, "numerical error bound of nu", "1"),
    Variable("slope", _CD, "float64", np.nan, "log–log slope of g over the window", "1"),
    Variable(
        "spread",
        _CD,
        "float64",
        np.nan,
        "largest deviation of a local order from k̂ in the window",
        "1",
    ),
    Variable("window_lo", _CD, "float64", np.nan, "scaling window, lower radius", "param"),
    Variable("window_hi", _CD, "float64", np.nan, "scaling window, upper radius", "param"),
    Variable("magnitude", _CD, "float64", np.nan, "g(θ_base; u) / g_ref", "1"),
    Variable(
        "correctability",
        _CD,
        "float64",
        np.nan,
        "second-order correctability residual ρ (METHOD §3)",
        "1",
        "NaN where not computed",
    ),
    Variable(
        "rho_status",
        _CD,
        "str",
        "",
        "how ρ was obtained: solved | not-converged | under-determined | ill-conditioned | "
        "no-departure",
        "",
        "'' where not computed",
    ),
    Variable(
        "heldout",
        _CD,
        "float64",
        np.nan,
        "held-out check of a gauge candidate: max g / g_ref (flat) or ρ of the fitted "
        "correction (curved) on held-out inputs",
        "1",
        "NaN where not checked",
    ),
    Variable("ray_order", _CD, "float64", np.nan, "order of the straight ray alone", "1"),
    Variable(
        "lower_slope",
        _CD,
        "float64",
        np.nan,
        "two regimes: log–log slope of the lower plateau (≈ 0)",
        "1",
        "NaN for a curve with one regime",
    ),
    Variable(
        "upper_slope",
        _CD,
        "float64",
        np.nan,
        "two regimes: log–log slope of the upper plateau",
        "1",
        "NaN for a curve with one regime",
    ),
    Variable(
        "crossover",
        _CD,
        "float64",
        np.nan,
        "two regimes: radius r* where the plateaus' fits meet (distance to the singular set)",
        "param",
        "NaN for a curve with one regime",
    ),
    Variable(
        "support_magnitude",
        _CD,
        "float64",
        np.nan,
        "g(θ_base; u) over the largest directional Fisher of a unit vector in ρ's "
        "correction space (a curved gauge is tangent to its orbit: ≤ near_dead)",
        "1",
        "NaN where ρ was not solved",
    ),
    Variable(
        "base_distance",
        _CD,
        "float64",
        np.nan,
        "distance of the detector's base projection from the checkpoint, relative to the "
        "norm of the tensors it moves",
        "1",
        "NaN for a direction read at the checkpoint only (no base); a base read counts as "
        "recovered only within base_tol (METHOD §5)",
    ),
    Variable(
        "checkpoint_kind",
        _CD,
        "str",
        "",
        "kind read at the checkpoint itself",
        "",
        "a direction with a base is read at the base (kind) and at the checkpoint; without "
        "a base, equal to kind",
    ),
    Variable(
        "checkpoint_order",
        _CD,
        "float64",
        np.nan,
        "KL order k̂ read at the checkpoint itself",
        "1",
        "without a base, equal to order",
    ),
    Variable(
        "checkpoint_magnitude",
        _CD,
        "float64",
        np.nan,
        "g(θ_checkpoint; u) / g_ref",
        "1",
        "without a base, equal to magnitude",
    ),
    Variable(
        "checkpoint_matches",
        _CD,
        "int8",
        -1,
        "read at the checkpoint matches the prediction",
        "1",
        "1 yes, 0 no, -1 no prediction (dd.Read.matches_at_checkpoint)",
    ),
    Variable("scale", _CD, "float64", np.nan, "radius scale of the direction", "1"),
    Variable(
        "predicted_kind",
        _CD,
        "str",
        "",
        "predicted kind",
        "",
        "'' when the architecture predicts nothing",
    ),
    Variable(
        "predicted_order",
        _CD,
        "float64",
        np.nan,
        "predicted order",
        "1",
        "inf for a gauge, NaN when nothing is predicted",
    ),
    Variable(
        "matches",
        _CD,
        "int8",
        -1,
        "read matches the prediction",
        "1",
        "1 yes, 0 no, -1 no prediction (dd.Read.matches_prediction)",
    ),
    Variable("note", _CD, "str", "", "note of the read", ""),
    Variable("seconds", _CD, "float64", np.nan, "read time per direction", "s"),
    Variable("n_directions", _C, "int32", -1, "directions written in the cell", "1"),
)

PROVENANCE_VARIABLES = tuple(
    Variable(name, _C, dtype, fill, f"provenance: {name.replace('_', ' ')}", units)
    for name, dtype, fill, units in (
        ("package_version", "str", "", ""),
        ("git_commit", "str", "", ""),
        ("torch_version", "str", "", ""),
        ("device", "str", "", ""),
        ("dtype", "str", "", ""),
        ("seed", "int64", -1, "1"),
        ("probe_hash", "str", "", ""),
        ("checkpoint", "str", "", ""),
        ("checkpoint_hash", "str", "", ""),
        ("wall_seconds", "float64", np.nan, "s"),
        ("written_at", "str", "", ""),
        ("host", "str", "", ""),
        ("spot_check_n", "int32", -1, "1"),
        ("spot_check_order_diff", "float64", np.nan, "1"),
        ("spot_check_kind_agreement", "float64", np.nan, "1"),
    )
)

#: The cell's layer's dead dimension (METHOD §7; ``dd.dead_dimension``), -1 / "" where not
#: computed (a cell written without one, or a layer neither count applies to).
DIMENSION_VARIABLES = (
    Variable(
        "dead_dim",
        _C,
        "int32",
        -1,
        "dead dimension of the layer",
        "1",
        "parameter dimensions along which the layer's Fisher block vanishes: the exact "
        "count where computed, else the K-FAC count (dead_dim_method)",
    ),
    Variable("dead_dim_exact", _C, "int32", -1, "dead dimension, exact Fisher block", "1"),
    Variable("dead_dim_kfac", _C, "int32", -1, "dead dimension, K-FAC factor ranks", "1"),
    Variable("layer_params", _C, "int32", -1, "parameters of the layer (its own)", "1"),
    Variable("dead_dim_method", _C, "str", "", "how dead_dim was counted", "", "exact | kfac"),
    Variable("dead_dim_rtol", _C, "float64", np.nan, "relative eigenvalue tolerance", "1"),
    Variable(
        "dead_dim_rank_cap",
        _C,
        "int32",
        -1,
        "largest rank the probe allows",
        "1",
        "below layer_params the probe itself leaves a kernel (data-limited)",
    ),
)

CELL_VARIABLES = LABEL_VARIABLES + DATA_VARIABLES + DIMENSION_VARIABLES + PROVENANCE_VARIABLES


# --------------------------------------------------------------------------------------
# Paths, lock and registry
# --------------------------------------------------------------------------------------


def ledger_path(path: str | os.PathLike) -> Path:
    """The store's ledger directory ``PATH.ledger`` (registry, lock, markers)."""
    path = Path(path)
    return path.with_name(path.name + ".ledger")


def marker_path(path: str | os.PathLike, key: CellKey) -> Path:
    """The completion marker of a cell."""
    return ledger_path(path) / "done" / f"{key.path}.json"


def store_id(path: str | os.PathLike) -> str:
    """The identity of the store at ``path`` (``""`` for a store made before identities).

    Raises ``ValueError`` when there is no store at ``path``.
    """
    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except FileNotFoundError:
        raise ValueError(f"no store at {path}: run `dead-directions init-store` first.") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"store {path}: unreadable {meta.name} ({err}).") from None
    return str(attrs.get("store_id", ""))


def _ledger_id(path: str | os.PathLike) -> str | None:
    """The store identity the ledger records (None: the ledger records none)."""
    file = ledger_path(path) / "store_id"
    return file.read_text().strip() if file.exists() else None


def _set_aside_stale_ledger(path: Path) -> Path | None:
    """Move what a ledger of an earlier store at ``path`` holds (registry, markers, identity)
    aside to ``PATH.ledger.stale-…``; return where, or None when there was nothing. Call
    under the lock, before creating the store: the lock file itself stays."""
    ledger = ledger_path(path)
    stale = (
        [p for p in ledger.iterdir() if p.name not in ("lock", "cells")] if ledger.exists() else []
    )
    if not stale:
        return None
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    aside = ledger.with_name(f"{ledger.name}.stale-{stamp}-{uuid.uuid4().hex[:8]}")
    aside.mkdir()
    for entry in stale:
        os.replace(entry, aside / entry.name)
    return aside


@contextlib.contextmanager
def _cell_lock(path: str | os.PathLike, key: CellKey) -> Iterator[None]:
    """Exclusive writer lock of one cell (waits while another writer holds it)."""
    file = ledger_path(path) / "cells" / f"{key.path}.lock"
    file.parent.mkdir(parents=True, exist_ok=True)
    with builtins.open(file, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _locked(path: str | os.PathLike) -> Iterator[None]:
    ledger = ledger_path(path)
    ledger.mkdir(parents=True, exist_ok=True)
    with builtins.open(ledger / "lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def registry(path: str | os.PathLike) -> dict[CellKey, int]:
    """The registered cells and their fixed indices (complete or not)."""
    file = ledger_path(path) / "cells.jsonl"
    if not file.exists():
        return {}
    out: dict[CellKey, int] = {}
    for line in file.read_text().splitlines():
        try:
            entry = json.loads(line)
            key = CellKey(entry["family"], entry["size"], int(entry["step"]), entry["layer"])
            out.setdefault(key, int(entry["index"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn trailing line of a killed registration
    return out


# --------------------------------------------------------------------------------------
# Init
# --------------------------------------------------------------------------------------


def _zarr():
    import zarr  # lazy: zarr is needed by the store's writers only

    return zarr


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        yield


def _attrs(v: Variable, coordinates: bool) -> dict:
    attrs = {"long_name": v.long_name, "units": v.units}
    if v.description:
        attrs["description"] = v.description
    if coordinates:
        attrs["coordinates"] = " ".join(LABELS)
    return attrs


def init(
    path: str | os.PathLike,
    *,
    max_directions: int = DEFAULT_MAX_DIRECTIONS,
    radii: Sequence[float] | None = None,
) -> Layout:
    """Create an empty store (no cells) at ``path``, or check an existing one's layout.

    Never truncates: on an existing store with the same layout this does nothing; with a
    different layout it raises ``ValueError`` naming what differs. A new store gets a fresh
    identity (:func:`store_id`); a ledger left by a deleted or replaced store at the same
    path is moved aside (``PATH.ledger.stale-…``) before the new ledger is started.
    """

    wanted = Layout(max_directions, tuple(DEFAULT_RADII if radii is None else radii))
    path = Path(path)
    with _locked(path):
        if not (path / "zarr.json").exists():
            aside = _set_aside_stale_ledger(path)
            if aside is not None:
                warnings.warn(
                    f"store {path} is new but the ledger of an earlier store was there; moved "
                    f"it to {aside} (its markers do not describe this store).",
                    stacklevel=2,
                )
        if (path / "zarr.json").exists():
            have = layout(path)
            if have.max_directions != wanted.max_directions:
                raise ValueError(
                    f"store {path}: max_directions is {have.max_directions}, the config asks "
                    f"for {wanted.max_directions}; use a new store path to change it."
                )
            if len(have.radii) != len(wanted.radii) or not np.allclose(
                have.radii, wanted.radii, rtol=1e-12, atol=0
            ):
                raise ValueError(
                    f"store {path}: its radius grid differs from the config's radii; use a "
                    "new store path to change it."
                )
            return have
        zarr = _zarr()
        with _quiet():
            root = zarr.open_group(str(path), mode="w-", zarr_format=3)
            identity = uuid.uuid4().hex
            root.attrs.update(
                {
                    "title": "dead-directions Fisher-rate store",
                    "store_version": STORE_VERSION,
                    "store_id": identity,
                    "max_directions": wanted.max_directions,
                    "description": (
                        "Rate curves g(t) = uᵀF(θ + t u)u and reads of the detectors' "
                        "directions per (family, size, step, layer) cell. Completed cells are "
                        "those with a marker in the sibling '.ledger/done'; open with "
                        "dead_directions.io.store.open()."
                    ),
                }
            )
            D, R = wanted.max_directions, len(wanted.radii)
            sizes = {"cell": 0, "direction": D, "radius": R}
            for v in CELL_VARIABLES:
                shape = tuple(sizes[d] for d in v.dims)
                chunks = (1,) + shape[1:]
                root.create_array(
                    v.name,
                    shape=shape,
                    chunks=chunks,
                    dtype=str if v.dtype == "str" else v.dtype,
                    fill_value=v.fill,
                    dimension_names=list(v.dims),
                    attributes=_attrs(v, coordinates=v not in LABEL_VARIABLES),
                )
            radius = root.create_array(
                "radius",
                shape=(R,),
                chunks=(R,),
                dtype="float64",
                fill_value=np.nan,
                dimension_names=["radius"],
                attributes={
                    "long_name": "unit radius t (multiply by scale for the direction's t)",
                    "units": "parameter units",
                },
            )
            radius[:] = np.asarray(wanted.radii)
            direction = root.create_array(
                "direction",
                shape=(D,),
                chunks=(D,),
                dtype="int32",
                fill_value=-1,
                dimension_names=["direction"],
                attributes={"long_name": "direction slot within the cell", "units": "1"},
            )
            direction[:] = np.arange(D, dtype=np.int32)
        files.write_text_atomic(ledger_path(path) / "store_id", identity + "\n")
        return wanted


def layout(path: str | os.PathLike) -> Layout:
    """The layout of an existing store; ``ValueError`` when there is none at ``path``."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise ValueError(f"no store at {path}: run `dead-directions init-store` first.")
    zarr = _zarr()
    with _quiet():
        root = zarr.open_group(str(path), mode="r")
        radii = tuple(float(r) for r in root["radius"][:])
        return Layout(int(root.attrs["max_directions"]), radii)


# --------------------------------------------------------------------------------------
# Writing a cell
# --------------------------------------------------------------------------------------


def _run(coro):
    from zarr.core.sync import sync  # lazy: zarr is needed by the store's writers only

    with _quiet():
        return sync(coro)


async def _open_arrays(path: Path, names: Sequence[str]) -> dict:

    import zarr.api.asynchronous as za  # lazy: zarr is needed by the store's writers only

    root = await za.open_group(str(path), mode="r+", zarr_format=3)
    arrays = await asyncio.gather(*(root.getitem(name) for name in names))
    return dict(zip(names, arrays, strict=True))


async def _grow(path: Path, key: CellKey, index: int) -> dict:
    """Grow every cell array to hold ``index`` and write the cell's labels."""

    arrays = await _open_arrays(path, [v.name for v in CELL_VARIABLES])
    await asyncio.gather(
        *(
            arr.resize((index + 1,) + arr.shape[1:], delete_outside_chunks=False)
            for arr in arrays.values()
            if arr.shape[0] <= index
        )
    )
    await asyncio.gather(*(arrays[name].setitem(index, getattr(key, name)) for name in LABELS))
    return arrays


def _check_ledger(path: Path) -> str:
    """The store's identity, after checking the ledger belongs to it. Call under the lock."""
    identity = store_id(path)
    recorded = _ledger_id(path)
    if recorded is None:
        files.write_text_atomic(ledger_path(path) / "store_id", identity + "\n")
    elif recorded != identity:
        raise ValueError(
            f"store {path}: its ledger {ledger_path(path)} belongs to another store "
            f"(identity {recorded or 'none'}, the store's is {identity or 'none'}); the store "
            "was replaced by hand. Move the ledger aside (or delete the store and rerun the "
            "sweep, which rebuilds both)."
        )
    return identity


def _register(path: Path, key: CellKey) -> tuple[int, dict]:
    """Index of ``key`` (registering it if new) and the opened arrays. Call under the lock."""
    known = registry(path)
    index = known[key] if key in known else max(known.values(), default=-1) + 1
    arrays = _run(_grow(path, key, index))
    if key not in known:
        file = ledger_path(path) / "cells.jsonl"
        line = json.dumps({"index": index, **asdict(key)}, sort_keys=True) + "\n"
        fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size:
                with builtins.open(file, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        os.write(fd, b"\n")  # close a torn line of a killed registration
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return index, arrays


def _cell_values(reads: Sequence, layout_: Layout, key: CellKey) -> dict[str, np.ndarray]:
    """Arrays for one cell's chunks (shapes without the cell dim), padded to capacity."""

    D, R = layout_.max_directions, len(layout_.radii)
    grid = np.asarray(layout_.radii)
    if len(reads) > D:
        raise ValueError(
            f"cell {key}: {len(reads)} directions exceed the store's max_directions = {D}; "
            "raise store.max_directions (new store) or lower the detectors' max_per_layer."
        )
    out: dict[str, np.ndarray] = {}
    for v in DATA_VARIABLES:
        if v.dims == _C:
            continue
        shape = (D, R) if v.dims == _CDR else (D,)
        if v.dtype == "str":
            out[v.name] = np.full(shape, "", dtype=object)
        else:
            out[v.name] = np.full(shape, v.fill, dtype=v.dtype)
    for j, r in enumerate(reads):
        radii = np.asarray(r.radii, dtype=float)
        scale = float(radii[0] / grid[0]) if len(radii) else math.nan
        if len(radii) != R or not np.allclose(radii, grid * scale, rtol=1e-9, atol=0):
            raise ValueError(
                f"cell {key}, direction {r.name!r}: its radii are not the store's radius grid "
                "times a scale; read with radii=store.layout(path).radii."
            )
        fisher = np.asarray(r.fisher, dtype=float)
        out["fisher"][j] = fisher
        out["fisher_base"][j] = r.fisher_base
        out["g_ref"][j] = r.g_ref
        out["label"][j] = r.name
        out["detector"][j] = r.detector
        out["kind"][j] = r.kind
        out["order"][j] = r.order
        out["lam"][j] = r.lam
        out["nu"][j], out["nu_error"][j] = nu_of_read(r.kind, r.order)
        out["slope"][j] = r.slope
        out["spread"][j] = r.spread
        lo, hi = r.window if r.window is not None else (math.nan, math.nan)
        out["window_lo"][j], out["window_hi"][j] = lo, hi
        out["magnitude"][j] = r.magnitude
        out["correctability"][j] = r.correctability
        out["rho_status"][j] = r.rho_status
        out["heldout"][j] = r.heldout
        out["ray_order"][j] = r.ray_order
        out["lower_slope"][j] = r.lower_slope
        out["upper_slope"][j] = r.upper_slope
        out["crossover"][j] = r.crossover
        out["support_magnitude"][j] = r.support_magnitude
        out["base_distance"][j] = r.base_distance
        out["checkpoint_kind"][j] = r.checkpoint_kind
        out["checkpoint_order"][j] = r.checkpoint_order
        out["checkpoint_magnitude"][j] = r.checkpoint_magnitude
        mc = r.matches_at_checkpoint
        out["checkpoint_matches"][j] = -1 if mc is None else int(bool(mc))
        out["scale"][j] = scale
        out["predicted_kind"][j] = r.predicted_kind or ""
        po = r.predicted_order
        out["predicted_order"][j] = math.nan if po is None else po
        m = r.matches_prediction
        out["matches"][j] = -1 if m is None else int(bool(m))
        out["note"][j] = r.note
        out["seconds"][j] = r.seconds
    out["n_directions"] = np.int32(len(reads))
    return out


def _remove_partials(path: Path, index: int) -> None:
    for v in CELL_VARIABLES:
        base = path / v.name / "c"
        for tmp in base.glob(f"{index}.*.partial"):
            tmp.unlink(missing_ok=True)
        if (base / str(index)).is_dir():
            for tmp in (base / str(index)).rglob("*.partial"):
                tmp.unlink(missing_ok=True)


async def _write_chunks(arrays: dict, index: int, values: Mapping[str, np.ndarray]) -> None:

    await asyncio.gather(*(arrays[name].setitem(index, value) for name, value in values.items()))


def _dimension_values(dead) -> dict[str, np.ndarray]:
    """Per-cell dead-dimension values of a ``dd.dead_dimension.DeadDimension`` (or None)."""
    if dead is None:
        return {
            v.name: np.asarray("", dtype=object)
            if v.dtype == "str"
            else np.asarray(v.fill, dtype=v.dtype)
            for v in DIMENSION_VARIABLES
        }
    return {
        "dead_dim": np.int32(dead.dead),
        "dead_dim_exact": np.int32(-1 if dead.exact is None else dead.exact),
        "dead_dim_kfac": np.int32(-1 if dead.kfac is None else dead.kfac),
        "layer_params": np.int32(dead.n_params),
        "dead_dim_method": np.asarray(dead.method, dtype=object),
        "dead_dim_rtol": np.float64(dead.rtol),
        "dead_dim_rank_cap": np.int32(dead.rank_cap),
    }


def write_cell(
    path: str | os.PathLike,
    key: CellKey,
    reads: Sequence,
    provenance: Provenance,
    dead_dimension=None,
) -> int:
    """Write one cell's reads (``dd.Read``s) and provenance; return the cell's index.

    ``dead_dimension``: the layer's ``dd.dead_dimension.DeadDimension`` (None: stored as
    not computed). The cell's marker is removed first and written last: until it exists the
    cell is not counted as done. Rewriting a cell overwrites exactly its own chunks. The
    whole write holds the cell's writer lock: a second writer of the same cell waits for the
    first to finish, then rewrites the whole cell (never a mix of both). Raises
    ``ValueError`` when there is no store at ``path``, when the ledger belongs to another
    store, or when the reads do not fit the store's layout.
    """
    path = Path(path)
    lay = layout(path)
    missing = [v.name for v in CELL_VARIABLES if not (path / v.name / "zarr.json").exists()]
    if missing:
        raise ValueError(
            f"store {path} has no arrays {missing[:3]}: it was created by an older version "
            "of dead-directions; write to a new store path (init-store creates them)."
        )
    values = _cell_values(reads, lay, key)
    values.update(_dimension_values(dead_dimension))
    marker = marker_path(path, key)
    with _cell_lock(path, key):
        marker.unlink(missing_ok=True)
        with _locked(path):
            identity = _check_ledger(path)
            index, arrays = _register(path, key)
        _remove_partials(path, index)
        prov = asdict(provenance)
        values.update({v.name: np.asarray(prov[v.name]) for v in PROVENANCE_VARIABLES})
        _run(_write_chunks(arrays, index, values))
        if store_id(path) != identity:
            raise ValueError(
                f"store {path} was deleted or replaced while cell {key} was written; rerun "
                "the sweep (it rebuilds the store)."
            )
        record = {
            "cell": asdict(key),
            "index": index,
            "store_id": identity,
            "n_directions": len(reads),
            "kinds": {k: sum(r.kind == k for r in reads) for k in sorted({r.kind for r in reads})},
            "provenance": prov,
        }
        files.write_text_atomic(
            marker, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n"
        )
    return index


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def is_done(path: str | os.PathLike, key: CellKey) -> bool:
    """Whether the cell has a marker written for this store (the only proof that its chunks
    are complete)."""
    try:
        record = json.loads(marker_path(path, key).read_text())
    except (OSError, ValueError):
        return False
    return record.get("store_id", "") == store_id(path)


def done_cells(path: str | os.PathLike) -> dict[CellKey, int]:
    """Completed cells and their indices: registered cells with a readable marker written
    for this store (a marker of a deleted or replaced store, whose identity differs, is
    stale and does not count)."""
    known = registry(path)
    identity = store_id(path)
    out = {}
    for key, index in known.items():
        marker = marker_path(path, key)
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if record.get("index") == index and record.get("store_id", "") == identity:
            out[key] = index
    return dict(sorted(out.items()))


def open_cells(
    path: str | os.PathLike,
    *,
    complete_only: bool = True,
    chunks: int | None = 256,
    keys: Sequence[CellKey] | None = None,
):
    """The flat view ``(cell, direction, radius)``, cells sorted by label; dask-backed.

    ``complete_only`` keeps the cells with a marker (default); ``keys`` keeps only those
    cells; ``chunks`` is the number of cells per dask chunk (``None``: numpy, lazily).
    """
    import xarray as xr  # lazy: xarray is heavy and only reading the store needs it

    path = Path(path)
    layout(path)
    with _quiet():
        ds = xr.open_zarr(
            str(path),
            consolidated=False,
            chunks={"cell": chunks} if chunks else None,
            zarr_format=3,
        )
    cells = done_cells(path) if complete_only else registry(path)
    if keys is not None:
        missing = [k for k in keys if k not in cells]
        if missing:
            raise ValueError(f"cell {missing[0]} is not complete in store {path}.")
        cells = {k: cells[k] for k in keys}
    order = sorted(cells)
    ds = ds.isel(cell=[cells[k] for k in order])
    strings = [v.name for v in CELL_VARIABLES if v.dtype == "str" and v.name not in LABELS]
    ds = ds.assign({name: ds[name].astype(object) for name in strings})
    ds = ds.assign_coords(
        cell=("cell", np.array([cells[k] for k in order], dtype=np.int64)),
        family=("cell", np.array([k.family for k in order], dtype=object)),
        size=("cell", np.array([k.size for k in order], dtype=object)),
        step=("cell", np.array([k.step for k in order], dtype=np.int64)),
        layer=("cell", np.array([k.layer for k in order], dtype=object)),
    )
    ds["cell"].attrs = {"long_name": "cell index in the store (fixed at first write)"}
    # the identity ties the store to its ledger (bookkeeping, not data): two stores holding
    # the same cells compare equal
    ds.attrs.pop("store_id", None)
    return ds


def open(path: str | os.PathLike, *, complete_only: bool = True, chunks: int | None = 256):  # noqa: A001
    """The completed cells as ``(family, size, step, layer, direction, radius)`` arrays.

    Cells absent from the sweep (e.g. a layer only one size has) are NaN / ``""``.
    """
    ds = open_cells(path, complete_only=complete_only, chunks=chunks)
    ds = ds.drop_vars("cell").set_index(cell=list(LABELS))
    fill = {v.name: "" for v in CELL_VARIABLES if v.dtype == "str" and v.name not in LABELS}
    fill.update({v.name: v.fill for v in CELL_VARIABLES if v.dtype in ("int8", "int32", "int64")})
    ds = ds.unstack("cell", fill_value=fill)
    return ds.transpose(*LABELS, "direction", "radius")


def cell_datasets(path: str | os.PathLike, keys: Sequence[CellKey]) -> dict[CellKey, object]:
    """Completed cells as ``(direction, radius)`` datasets holding only their used slots."""
    ds = open_cells(path, chunks=None, keys=keys).load()
    out = {}
    for i, key in enumerate(sorted(keys)):
        one = ds.isel(cell=i)
        out[key] = one.isel(direction=slice(0, int(one["n_directions"])))
    return out


def cell_dataset(path: str | os.PathLike, key: CellKey):
    """One completed cell as a ``(direction, radius)`` dataset with only its used slots."""
    return cell_datasets(path, [key])[key]


def read_records(reads: Sequence) -> list[Mapping[str, object]]:
    """Plain dicts of reads (for tables): name, detector, kind, order, λ, ρ, …"""
    return [
        {
            "label": r.name,
            "detector": r.detector,
            "kind": r.kind,
            "order": r.order,
            "lam": r.lam,
            "spread": r.spread,
            "magnitude": r.magnitude,
            "correctability": r.correctability,
            "predicted_kind": r.predicted_kind,
            "predicted_order": r.predicted_order,
            "matches": r.matches_prediction,
        }
        for r in reads
    ]
