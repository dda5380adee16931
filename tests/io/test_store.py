"""The Fisher-rate store: round trip, concurrent writers, growth, SIGKILLed writers."""

import json
import math
import multiprocessing
import os
import signal

import numpy as np
import pytest
import xarray as xr
from synthetic import PROVENANCE, cell_chunks, chunk_files, keys, reads_for, write

from dead_directions.core.assembly import nu_of_read
from dead_directions.core.read import DEFAULT_RADII
from dead_directions.io import store

FORK = multiprocessing.get_context("fork")


def test_round_trip_labels_values_units_and_provenance(tmp_path):
    path = tmp_path / "s.zarr"
    cells = keys()
    write(path, cells)
    raw = xr.open_zarr(path, consolidated=False)
    assert raw["fisher"].dims == ("cell", "direction", "radius")
    assert set(raw.coords) >= {"family", "size", "step", "layer", "radius", "direction"}
    ds = store.open(path).load()
    assert ds["fisher"].dims == ("family", "size", "step", "layer", "direction", "radius")
    assert list(ds["step"].values) == [0, 10] and list(ds["size"].values) == ["m", "s"]
    np.testing.assert_allclose(ds["radius"].values, DEFAULT_RADII, rtol=0)
    assert "squared output units" in ds["fisher"].attrs["units"]
    assert ds["order"].attrs["long_name"] == "measured KL order k̂"
    for key in cells:
        reads = reads_for(key)
        cell = ds.sel(family=key.family, size=key.size, step=key.step, layer=key.layer)
        n = len(reads)
        assert int(cell["n_directions"]) == n
        assert list(cell["label"].values[:n]) == [r.name for r in reads]
        assert list(cell["label"].values[n:]) == [""] * (8 - n)
        assert list(cell["kind"].values[:n]) == [r.kind for r in reads]
        np.testing.assert_array_equal(cell["order"].values[:n], [r.order for r in reads])
        assert np.isnan(cell["order"].values[n:]).all()
        nus = [nu_of_read(r.kind, r.order) for r in reads]
        np.testing.assert_array_equal(cell["nu"].values[:n], [v for v, _ in nus])
        np.testing.assert_array_equal(cell["nu_error"].values[:n], [e for _, e in nus])
        np.testing.assert_array_equal(cell["fisher"].values[:n], [r.fisher for r in reads])
        scale = cell["scale"].values[:n]
        np.testing.assert_allclose(
            cell["radius"].values[None] * scale[:, None], [r.radii for r in reads], rtol=1e-15
        )
        want = [-1 if r.matches_prediction is None else int(r.matches_prediction) for r in reads]
        assert list(cell["matches"].values[:n]) == want
        np.testing.assert_array_equal(
            cell["base_distance"].values[:n], [r.base_distance for r in reads]
        )
        assert list(cell["checkpoint_kind"].values[:n]) == [r.checkpoint_kind for r in reads]
        np.testing.assert_array_equal(
            cell["checkpoint_order"].values[:n], [r.checkpoint_order for r in reads]
        )
        at = [r.matches_at_checkpoint for r in reads]
        assert list(cell["checkpoint_matches"].values[:n]) == [-1 if m is None else m for m in at]
        assert cell["git_commit"].item() == "test" and cell["device"].item() == "cpu"
        assert cell["seed"].item() == 0 and cell["wall_seconds"].item() == 1.0
        marker = json.loads(store.marker_path(path, key).read_text())
        assert marker["n_directions"] == n and marker["provenance"]["probe_hash"] == "p"
    one = store.cell_dataset(path, cells[0])
    assert one.sizes["direction"] == len(reads_for(cells[0]))


def test_collected_provenance_names_versions_commit_and_time():
    prov = store.Provenance.collect(device="cpu", dtype="float64", seed=3, probe_hash="h")
    assert prov.package_version == "0.1.0" and prov.torch_version.startswith("2.")
    assert prov.git_commit and prov.written_at.startswith("20") and prov.seed == 3


def test_init_never_truncates_and_names_a_layout_mismatch(tmp_path):
    path = tmp_path / "s.zarr"
    write(path, keys()[:2])
    before = chunk_files(path)
    assert store.init(path, max_directions=8).max_directions == 8
    assert chunk_files(path) == before
    with pytest.raises(ValueError, match="max_directions is 8"):
        store.init(path, max_directions=16)
    with pytest.raises(ValueError, match="radius grid"):
        store.init(path, max_directions=8, radii=np.logspace(-3, 0, 10))
    key = store.CellKey("mlp", "s", 99, "fc1")
    with pytest.raises(ValueError, match="max_directions = 8"):
        store.write_cell(path, key, reads_for(key, n=9), PROVENANCE)
    with pytest.raises(ValueError, match="non-empty string"):
        store.CellKey("mlp", "a/b", 0, "fc1")


def _write_many(path, cells, barrier):
    barrier.wait()
    for key in cells:
        store.write_cell(path, key, reads_for(key), PROVENANCE)
    os._exit(0)


def test_six_concurrent_writers_leave_the_store_a_serial_run_leaves(tmp_path):
    cells = keys(families=("mlp", "cnn"), sizes=("s", "m", "l"), steps=(0, 5), layers=("a", "b"))
    serial, parallel = tmp_path / "serial.zarr", tmp_path / "parallel.zarr"
    write(serial, cells)
    store.init(parallel, max_directions=8)
    n = 6
    barrier = FORK.Barrier(n)
    procs = [
        FORK.Process(target=_write_many, args=(parallel, cells[i::n], barrier)) for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    assert len(store.done_cells(parallel)) == len(cells) == 24
    assert sorted(store.registry(parallel).values()) == list(range(24))  # no duplicates
    xr.testing.assert_identical(store.open(parallel).load(), store.open(serial).load())
    assert cell_chunks(parallel) == cell_chunks(serial)  # byte for byte, cell by cell
    assert not list(parallel.rglob("*.partial"))


def test_growing_the_sweep_leaves_every_existing_chunk_byte_identical(tmp_path):
    path = tmp_path / "s.zarr"
    old = keys()
    write(path, old)
    before = chunk_files(path)
    new = [
        *keys(steps=(20,)),  # a new step
        *keys(sizes=("xl",)),  # a new size
        *keys(families=("cnn",), sizes=("s",), steps=(0,), layers=("conv",)),  # new family
        store.CellKey("mlp", "s", 0, "fc3"),  # a new layer
    ]
    for key in new:
        store.write_cell(path, key, reads_for(key), PROVENANCE)
    after = chunk_files(path)
    assert {k: after[k] for k in before} == before
    assert len(after) > len(before)
    ds = store.open(path)
    assert list(ds["step"].values) == [0, 10, 20]
    assert set(ds["size"].values) == {"s", "m", "xl"}
    assert set(ds["layer"].values) == {"fc1", "fc2", "fc3", "conv"}
    assert len(store.done_cells(path)) == len(old) + len(new)
    # The old cells read back exactly as a store holding only them.
    only_old = tmp_path / "old.zarr"
    write(only_old, old)
    got = cell_chunks(path)
    assert {k: got[k] for k in cell_chunks(only_old)} == cell_chunks(only_old)


def _killed_writer(path, key, after):
    from zarr.core.array import AsyncArray

    calls = {"n": 0}
    original = AsyncArray.setitem

    async def setitem(self, selection, value, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, selection, value, **kwargs)

    AsyncArray.setitem = setitem
    store.write_cell(path, key, reads_for(key), PROVENANCE)
    os._exit(0)


@pytest.mark.parametrize("after", [0, 3, 12, 30])
def test_a_sigkilled_writer_is_not_done_and_a_rewrite_completes_it(tmp_path, after):
    path, clean = tmp_path / "s.zarr", tmp_path / "clean.zarr"
    cells = keys(sizes=("s",), steps=(0,))
    write(path, cells[:1])
    write(clean, cells)
    key = cells[1]
    # A fresh cell, and a complete cell being rewritten, both killed mid-write.
    for target in (key, cells[0]):
        p = FORK.Process(target=_killed_writer, args=(path, target, after))
        p.start()
        p.join(60)
        assert p.exitcode == -signal.SIGKILL
        assert not store.is_done(path, target)
        assert target not in store.done_cells(path)
        assert (target.family, target.size, target.step, target.layer) not in cell_chunks(path)
        store.write_cell(path, target, reads_for(target), PROVENANCE)
        assert store.is_done(path, target)
    assert cell_chunks(path) == cell_chunks(clean)
    xr.testing.assert_identical(store.open(path).load(), store.open(clean).load())
    assert len(store.registry(path)) == 2


def test_a_torn_registry_line_is_skipped_and_indices_stay_fixed(tmp_path):
    path = tmp_path / "s.zarr"
    cells = keys(sizes=("s",))
    write(path, cells[:2])
    with open(store.ledger_path(path) / "cells.jsonl", "a") as fh:
        fh.write('{"index": 2, "fam')  # a registration killed mid-line
    for key in cells[2:]:
        store.write_cell(path, key, reads_for(key), PROVENANCE)
    reg = store.registry(path)
    assert sorted(reg.values()) == [0, 1, 2, 3] and reg[cells[0]] == 0
    assert len(store.done_cells(path)) == 4
    ds = store.open(path)
    assert math.isinf(np.nanmax(ds["order"].values))
