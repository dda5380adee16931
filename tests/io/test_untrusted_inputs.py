"""Untrusted inputs (checkpoint metadata, probe and directions files) and the store under
careless use (a deleted or replaced store, two writers on one cell): library level.

The workflow-level cases (shell injection from config, a store deleted mid-run, two sweeps
on one results folder, config values that fail late) are in tests/workflow/test_workflow.py.
"""

import json
import multiprocessing
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from synthetic import PROVENANCE, reads_for

from dead_directions import zoo
from dead_directions.core import device
from dead_directions.io import artefacts, checkpoints, store
from dead_directions.io.checkpoints import CheckpointError
from dead_directions.prune import load_pruned
from dead_directions.zoo import loading

FORK = multiprocessing.get_context("fork")


# ------------------------------------------------------------------ checkpoint metadata
@pytest.mark.parametrize("where", ["header", "sidecar"])
def test_a_family_named_in_a_checkpoint_never_imports_or_calls_code(tmp_path, where):
    pwned = tmp_path / "pwned"
    meta = {"family": "os:system", "size": f"touch {pwned}"}
    path = tmp_path / "x.safetensors"
    header = {"dead_directions": json.dumps(meta)} if where == "header" else None
    save_file({"w": torch.zeros(1)}, str(path), metadata=header)
    if where == "sidecar":
        path.with_suffix(".json").write_text(json.dumps(meta))
    for load in (checkpoints.load, load_pruned):
        with pytest.raises(CheckpointError, match="'os:system' comes from a file") as err:
            load(path)
        assert str(path) in str(err.value)
    assert not pwned.exists()
    # a module the file names is not even imported
    meta = {"family": "antigravity:fly", "size": "x"}
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="comes from a file"):
        checkpoints.load(path)
    import sys

    assert "antigravity" not in sys.modules


def test_a_sidecar_may_name_zoo_families_but_not_the_hf_directory_builder(tmp_path):
    model = zoo.get_family("mlp").build("h4")
    path = checkpoints.save(model, tmp_path / "m.safetensors", {"family": "mlp", "size": "h4"})
    loaded, meta = checkpoints.load(path)  # a zoo family from the sidecar: allowed
    assert meta["family"] == "mlp"
    for name, p in model.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[name], p)
    path.with_suffix(".json").write_text(json.dumps({"family": "hf", "size": str(tmp_path)}))
    with pytest.raises(CheckpointError, match="'hf' builder"):
        checkpoints.load(path)


def test_module_function_builders_still_work_when_the_caller_names_them(tmp_path):
    model = zoo.build_cnn("c4").eval()
    path = checkpoints.save(model, tmp_path / "c.safetensors", {})
    loaded, _ = checkpoints.load(path, builder="dead_directions.zoo:build_cnn", size="c4")
    loaded2, _ = checkpoints.load(path, family="dead_directions.zoo:build_cnn", size="c4")
    x = zoo.get_family("cnn").probe(n=4)
    assert torch.equal(loaded(x), model(x)) and torch.equal(loaded2(x), model(x))


def test_a_family_contradicting_the_sidecar_is_refused_unless_overridden(tmp_path):
    model = zoo.get_family("mlp").build("h4")
    path = checkpoints.save(model, tmp_path / "m.safetensors", {"family": "mlp", "size": "h4"})
    with pytest.raises(CheckpointError, match="sidecar says family 'mlp'.*'mlp-z2'"):
        checkpoints.load(path, family="mlp-z2")
    with pytest.raises(ValueError, match="--override-family"):
        loading.load_model(path, "mlp-z2")
    other, _ = loading.load_model(path, "mlp-z2", override_family=True)
    x = zoo.get_family("mlp").probe(n=8)
    # the override loads the same weights into the z² architecture: another function
    assert not torch.allclose(other(x), model(x))
    same, _ = checkpoints.load(path, family="mlp")
    assert torch.equal(same(x), model(x))


# ------------------------------------------------------------ probe and directions files
def test_corrupt_probe_and_directions_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}xx")
    for load, what in (
        (artefacts.load_probe, "probe data"),
        (artefacts.load_directions, "directions"),
    ):
        with pytest.raises(ValueError, match=f"{what}.*garbage.safetensors.*not a readable"):
            load(garbage)
        with pytest.raises(ValueError, match=f"{what}.*missing.safetensors.*does not exist"):
            load(tmp_path / "missing.safetensors")
    no_input = tmp_path / "no_input.safetensors"
    save_file({"x": torch.zeros(3)}, str(no_input), metadata={"kind": "tensor"})
    with pytest.raises(ValueError, match="no_input.safetensors.*no tensor 'input'"):
        artefacts.load_probe(no_input)
    with pytest.raises(ValueError, match="no_input.safetensors.*no valid 'directions'"):
        artefacts.load_directions(no_input)
    torn = tmp_path / "torn.safetensors"
    save_file({"x": torch.zeros(3)}, str(torn), metadata={"directions": '[{"name": "a"}]'})
    with pytest.raises(ValueError, match="torn.safetensors: direction 0 is malformed"):
        artefacts.load_directions(torn)


def test_a_probe_or_directions_that_do_not_fit_the_model_name_the_file(tmp_path):
    model = zoo.get_family("mlp").build("h4")
    wrong = torch.zeros(5, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"probe data p.safetensors \(shape \(5, 7\)\) does not"):
        artefacts.check_probe(model, wrong, "p.safetensors")
    artefacts.check_probe(model, zoo.get_family("mlp").probe(n=4), "p.safetensors")  # fits
    good = _directions(model)
    artefacts.check_directions(good, model, "d.safetensors")
    bad = good[0].__class__(
        name="a", layer="fc1", vector={"fc1.weight": torch.ones(3, 3)}, detector="x"
    )
    with pytest.raises(ValueError, match=r"d.safetensors: direction 'a' has 'fc1.weight' of shape"):
        artefacts.check_directions([bad], model, "d.safetensors")
    alien = good[0].__class__(name="b", layer="fc9", vector={"fc9.w": torch.ones(2)}, detector="x")
    with pytest.raises(ValueError, match="moves 'fc9.w', which is not a parameter"):
        artefacts.check_directions([alien], model, "d.safetensors")


def _directions(model):
    import dead_directions as dd

    x = zoo.get_family("mlp").probe(n=32)
    return dd.detect(model, x, detectors=["random"], layers=["fc1"], max_per_layer=2)


def test_an_unknown_cuda_device_is_a_named_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="--device cuda: this machine has 0 CUDA device"):
        device.resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        device.resolve_device("gpu0")


# ------------------------------------------------------------------ the store's identity
def test_a_replaced_store_does_not_count_the_old_ledgers_markers(tmp_path):
    path = tmp_path / "s.zarr"
    key = store.CellKey("mlp", "h4", 0, "fc1")
    store.init(path, max_directions=8)
    store.write_cell(path, key, reads_for(key), PROVENANCE)
    assert store.is_done(path, key) and list(store.done_cells(path)) == [key]
    first = store.store_id(path)
    import shutil

    shutil.rmtree(path)  # the user deletes the store, the ledger stays
    with pytest.warns(UserWarning, match="ledger of an earlier store"):
        store.init(path, max_directions=8)
    assert store.store_id(path) != first
    assert not store.is_done(path, key) and store.done_cells(path) == {}
    stale = list(tmp_path.glob("s.zarr.ledger.stale-*"))
    assert len(stale) == 1 and (stale[0] / "done" / f"{key.path}.json").exists()
    # a marker copied back by hand does not count either: it names the old store
    marker = store.marker_path(path, key)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text((stale[0] / "done" / f"{key.path}.json").read_text())
    (store.ledger_path(path) / "cells.jsonl").write_text((stale[0] / "cells.jsonl").read_text())
    assert store.done_cells(path) == {} and not store.is_done(path, key)
    store.write_cell(path, key, reads_for(key), PROVENANCE)
    assert list(store.done_cells(path)) == [key]
    assert int(store.cell_dataset(path, key)["n_directions"]) == len(reads_for(key))


def test_a_ledger_of_another_store_is_refused_by_writers(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    store.init(a, max_directions=8)
    store.init(b, max_directions=8)
    import shutil

    shutil.rmtree(store.ledger_path(a))
    shutil.copytree(store.ledger_path(b), store.ledger_path(a))
    key = store.CellKey("mlp", "h4", 0, "fc1")
    with pytest.raises(ValueError, match="belongs to another store"):
        store.write_cell(a, key, reads_for(key), PROVENANCE)


def test_writing_to_a_deleted_store_is_a_named_error(tmp_path):
    path = tmp_path / "s.zarr"
    store.init(path, max_directions=8)
    import shutil

    shutil.rmtree(path)
    key = store.CellKey("mlp", "h4", 0, "fc1")
    with pytest.raises(ValueError, match="no store at .*init-store"):
        store.write_cell(path, key, reads_for(key), PROVENANCE)


# ------------------------------------------------------------------ two writers, one cell
def _writer(path, key, reads, provenance, barrier, round_):
    barrier.wait()
    store.write_cell(path, key, reads, provenance)
    os._exit(0)


def _cell_values(path, key) -> dict:
    ds = store.cell_dataset(path, key)
    return {name: ds[name].values for name in ds.data_vars}


def _same(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            return False
        if x.dtype.kind == "f":
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def test_two_writers_of_one_cell_leave_it_wholly_one_writers_fifty_times(tmp_path):
    key = store.CellKey("mlp", "h4", 0, "fc1")
    # two writers with different directions (counts, labels, curves) and provenance
    reads_a = reads_for(key, n=3)
    reads_b = [
        r.__class__(**{**r.__dict__, "name": f"b{j}", "fisher": r.fisher * 3.0, "note": "b"})
        for j, r in enumerate(reads_for(store.CellKey("mlp", "h4", 0, "fc2"), n=7))
    ]
    prov_a = store.Provenance(**{**PROVENANCE.__dict__, "host": "writer-a"})
    prov_b = store.Provenance(**{**PROVENANCE.__dict__, "host": "writer-b", "seed": 7})
    reference = {}
    for name, reads, prov in (("a", reads_a, prov_a), ("b", reads_b, prov_b)):
        ref = tmp_path / f"{name}.zarr"
        store.init(ref, max_directions=8)
        store.write_cell(ref, key, reads, prov)
        reference[name] = _cell_values(ref, key)
    assert not _same(reference["a"], reference["b"])
    path = tmp_path / "race.zarr"
    store.init(path, max_directions=8)
    winners = []
    for round_ in range(50):
        barrier = FORK.Barrier(2)
        procs = [
            FORK.Process(target=_writer, args=(path, key, reads, prov, barrier, round_))
            for reads, prov in ((reads_a, prov_a), (reads_b, prov_b))
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        got = _cell_values(path, key)
        matches = [name for name in ("a", "b") if _same(got, reference[name])]
        assert len(matches) == 1, f"round {round_}: the cell mixes both writers"
        winners.append(matches[0])
        assert store.is_done(path, key)
    assert sorted(store.registry(path).values()) == [0]
