"""Checkpoints: round trips (safetensors, torch state dict), errors, external families."""

import json
import math
import os
import pickle

import pytest
import torch

import dead_directions as dd
from dead_directions import zoo
from dead_directions.io import checkpoints
from dead_directions.io.checkpoints import CheckpointError


def _trained_cnn(size="c4", seed=0):
    """A cnn with non-trivial BatchNorm running statistics (a few training-mode passes)."""
    model = zoo.get_family("cnn").build(size, seed=seed)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(zoo.digits().x_train[64 * i : 64 * (i + 1)])
    return model.eval()


@pytest.fixture()
def cnn_file(tmp_path):
    model = _trained_cnn()
    path = checkpoints.save(
        model, tmp_path / "cnn" / "c4" / "step0000000.safetensors", {"family": "cnn", "size": "c4"}
    )
    return model, path


@pytest.mark.parametrize("name", ["cnn", "vit", "transformer", "mlp-z2"])
def test_round_trip_identical_outputs(tmp_path, name):
    fam = zoo.get_family(name)
    size = fam.sizes[1]
    model = _trained_cnn(size, seed=4) if name == "cnn" else fam.build(size, seed=4).eval()
    meta = {"family": name, "size": size, "step": 7, "seed": 4, "seconds": 1.5, "acc": float("nan")}
    path = checkpoints.save(model, tmp_path / f"step{7:07d}.safetensors", meta)
    loaded, got = checkpoints.load(path)
    # NaN is written as "nan" (strict JSON has none) and read back as NaN (io.files)
    assert got["step"] == 7 and got["seconds"] == 1.5 and math.isnan(got["acc"])
    assert '"acc": "nan"' in checkpoints.sidecar_path(path).read_text()
    assert got["format"] == "safetensors" and got["path"] == str(path)
    assert not loaded.training
    probe = fam.probe(n=32)
    assert torch.equal(loaded(probe), model(probe))
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b) and a.dtype == b.dtype
    # the header carries the metadata too, without the volatile keys
    checkpoints.sidecar_path(path).unlink()
    header = checkpoints.read_meta(path)
    assert header["step"] == 7 and "seconds" not in header


def test_save_is_byte_stable_and_ignores_volatile_keys(tmp_path):
    model = zoo.get_family("mlp").build("h4")
    meta = {"family": "mlp", "size": "h4", "step": 1, "seed": 0, "test_loss": 0.5}
    a = checkpoints.save(model, tmp_path / "a.safetensors", {**meta, "seconds": 0.1})
    for i in range(6):  # the header must not depend on hash order
        b = checkpoints.save(model, tmp_path / f"b{i}.safetensors", {**meta, "seconds": 9.9})
        assert a.read_bytes() == b.read_bytes()
    c = checkpoints.save(model, tmp_path / "c.safetensors", {**meta, "step": 2})
    assert c.read_bytes() != a.read_bytes()
    with pytest.raises(ValueError, match=".safetensors"):
        checkpoints.save(model, tmp_path / "x.pt", {})


def test_torch_state_dict_round_trip(tmp_path):
    model = _trained_cnn()
    path = tmp_path / "cnn.pt"
    torch.save(model.state_dict(), path)
    loaded, meta = checkpoints.load(path, family="cnn", size="c4")
    assert meta["format"] == "torch"
    x = zoo.get_family("cnn").probe(n=16)
    assert torch.equal(loaded(x), model(x))
    # a float32 state dict (e.g. from elsewhere) loads into the float64 model
    torch.save(
        {
            "state_dict": {
                k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()
            }
        },
        path,
    )
    loaded, _ = checkpoints.load(path, builder="cnn", size="c4")
    assert loaded.conv1.weight.dtype == torch.float64
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "step0000010.safetensors"
    with pytest.raises(CheckpointError, match="no such file") as err:
        checkpoints.load(path, family="cnn", size="c4")
    assert isinstance(err.value, ValueError) and err.value.path == path
    assert str(path) in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_bytes(cnn_file, damage):
    _, path = cnn_file
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(os.urandom(64) + data[64:])
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as err:
        checkpoints.load(path, family="cnn", size="c4")
    assert str(path) in str(err.value)


def test_corrupt_torch_file(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(CheckpointError, match="not a loadable torch state dict"):
        checkpoints.load(path, family="cnn", size="c4")


def test_pickled_code_is_never_run(tmp_path):
    """weights_only=True refuses a pickle that would run code on load."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        checkpoints.load(path, family="cnn", size="c4")
    assert not marker.exists()


def test_wrong_shape_names_file_and_tensor(tmp_path):
    path = checkpoints.save(zoo.get_family("cnn").build("c8"), tmp_path / "c8.safetensors", {})
    with pytest.raises(CheckpointError) as err:
        checkpoints.load(path, family="cnn", size="c4")
    msg = str(err.value)
    assert err.value.tensor == "conv1.weight" and "'conv1.weight'" in msg and str(path) in msg
    assert "(8, 1, 3, 3)" in msg and "(4, 1, 3, 3)" in msg


def test_unknown_and_missing_tensor_names(cnn_file, tmp_path):
    model, _ = cnn_file
    state = dict(model.state_dict())
    extra = checkpoints.save({**state, "head.weight": torch.zeros(3)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="unknown tensor name") as err:
        checkpoints.load(extra, family="cnn", size="c4")
    assert err.value.tensor == "head.weight" and str(extra) in str(err.value)
    del state["fc.bias"]
    lacking = checkpoints.save(state, tmp_path / "y.safetensors")
    with pytest.raises(CheckpointError, match="lacks it") as err:
        checkpoints.load(lacking, family="cnn", size="c4")
    assert err.value.tensor == "fc.bias" and str(lacking) in str(err.value)


def test_nan_weights_load_but_the_read_rejects_them(cnn_file, tmp_path):
    model, _ = cnn_file
    state = dict(model.state_dict())
    state["fc.weight"] = state["fc.weight"].clone()
    state["fc.weight"][0, 0] = float("nan")
    path = checkpoints.save(state, tmp_path / "nan.safetensors", {"family": "cnn", "size": "c4"})
    loaded, _ = checkpoints.load(path)
    assert torch.isnan(loaded.fc.weight).sum() == 1
    u = {"fc.weight": torch.ones_like(loaded.fc.weight)}
    with pytest.raises(ValueError, match="'fc.weight'.*NaN"):
        dd.read(loaded, zoo.get_family("cnn").probe(n=8), u, likelihood="categorical")


def test_no_family_no_sidecar(cnn_file):
    _, path = cnn_file
    checkpoints.sidecar_path(path).unlink()
    path.write_bytes(path.read_bytes())  # header still names the family
    model, meta = checkpoints.load(path)
    assert meta["family"] == "cnn"
    bare = path.with_name("bare.safetensors")
    checkpoints.save(model, bare)
    checkpoints.sidecar_path(bare).unlink()
    with pytest.raises(CheckpointError, match="no family or builder"):
        checkpoints.load(bare)
    with pytest.raises(CheckpointError, match="no size"):
        checkpoints.load(bare, family="cnn")


def test_builders(tmp_path):
    assert checkpoints.get_builder("vit") is zoo.get_family("vit").build
    fn = checkpoints.get_builder("dead_directions.zoo:build_cnn")
    assert fn("c4").conv1.out_channels == 4
    with pytest.raises(ValueError, match="unknown builder 'nope'"):
        checkpoints.get_builder("nope")
    with pytest.raises(ValueError, match="cannot import"):
        checkpoints.get_builder("dead_directions.zoo:no_such_function")

    @checkpoints.register_builder("test-linear")
    def linear(size):
        return torch.nn.Linear(int(size), 2, dtype=torch.float64)

    try:
        path = checkpoints.save(linear("3"), tmp_path / "lin.safetensors")
        model, _ = checkpoints.load(path, family="test-linear", size="3")
        assert model.weight.shape == (2, 3)
        with pytest.raises(CheckpointError, match=r"'weight'.*\(2, 3\).*\(2, 5\)"):
            checkpoints.load(path, builder=linear, size="5")
    finally:
        checkpoints.BUILDERS.pop("test-linear")


def test_external_family(tmp_path):
    for size in ("c4", "c8"):
        for step in (0, 10, 100):
            model = zoo.get_family("cnn").build(size, seed=step)
            checkpoints.save(model, tmp_path / f"run-{size}" / f"ckpt_{step:05d}.safetensors")
    entry = {
        "name": "mycnn",
        "pattern": str(tmp_path / "run-{size}" / "ckpt_{step:05d}.safetensors"),
        "builder": "cnn",
    }
    ext = checkpoints.external_family(entry)
    found = ext.checkpoints()
    assert [(s, t) for s, t, _ in found] == [
        ("c4", 0),
        ("c4", 10),
        ("c4", 100),
        ("c8", 0),
        ("c8", 10),
        ("c8", 100),
    ]
    model, meta = ext.load("c8", 10)
    assert model.conv1.out_channels == 8 and meta["family"] == "mycnn" and meta["step"] == 10
    expected = zoo.get_family("cnn").build("c8", seed=10)
    assert torch.equal(model.conv1.weight, expected.conv1.weight)
    # a checkpoint the config names but the disk lacks fails alone, naming the file
    limited = checkpoints.external_family({**entry, "sizes": ["c4"], "steps": [0, 50]})
    assert [(s, t) for s, t, _ in limited.checkpoints()] == [("c4", 0), ("c4", 50)]
    with pytest.raises(CheckpointError, match="ckpt_00050.safetensors"):
        limited.load("c4", 50)
    # the wrong builder: its sizes do not fit, or its tensors do not match
    wrong = checkpoints.external_family({**entry, "builder": "vit"})
    with pytest.raises(CheckpointError, match="vit cannot build size 'c4'"):
        wrong.load("c4", 0)
    wrong = checkpoints.external_family({**entry, "builder": "dead_directions.zoo:build_mlp"})
    with pytest.raises(CheckpointError, match="unknown tensor name"):
        checkpoints.load(ext.path("c4", 0), builder=wrong.builder, size="h4")
    with pytest.raises(ValueError, match="lacks builder"):
        checkpoints.external_family({"name": "x", "pattern": "a/{step}"})
    with pytest.raises(ValueError, match="unknown field"):
        checkpoints.external_family({"name": "x", "pattern": "{epoch}", "builder": "cnn"})


def test_iter_checkpoints(tmp_path):
    paths = zoo.train("mlp", "h4", [0, 3, 12], tmp_path, tiny=True)
    listed = list(checkpoints.iter_checkpoints(tmp_path, "mlp"))
    assert [(s, t) for s, t, _ in listed] == [("h4", 0), ("h4", 3), ("h4", 12)]
    assert [p for _, _, p in listed] == paths
    meta = json.loads(checkpoints.sidecar_path(paths[-1]).read_text())
    assert meta["step"] == 12 and meta["recipe"]["lr"] == zoo.get_family("mlp").tiny_recipe.lr


# ------------------------------------------------------------------ pruned checkpoints
def _planted(name):
    """A zoo model with planted node deaths (and, for the mlp, a duplicate unit)."""
    if name == "mlp":
        model = zoo.get_family("mlp").build("h8", seed=2).eval()
        with torch.no_grad():
            model.fc1.weight[3], model.fc1.bias[3] = 0.0, 0.0  # tanh(0) = 0: silent
            model.fc1.weight[6], model.fc1.bias[6] = 0.0, 0.0
            model.fc1.weight[5], model.fc1.bias[5] = model.fc1.weight[2], model.fc1.bias[2]
        return model, "h8", {"fc1": (8, 5)}
    model = _trained_cnn("c4", seed=2)
    with torch.no_grad():
        model.bn1.weight[1], model.bn1.bias[1] = 0.0, -1.0  # ReLU(−1) = 0: channel 1 dead
        model.bn2.weight[4], model.bn2.bias[4] = 0.0, -1.0
    return model, "c4", {"bn1": (4, 3), "bn2": (8, 7)}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_pruned_checkpoint_loads_like_any_and_reads_no_node_death(tmp_path, name):
    from dead_directions.prune import PRUNE_DETECTORS, save_pruned
    from dead_directions.zoo import loading

    fam = zoo.get_family(name)
    model, size, widths = _planted(name)
    x, xh = fam.probe(n=128, seed=0), fam.probe(n=256, seed=1)
    kw = {"output": fam.output, "likelihood": fam.likelihood}
    pruned, report = dd.prune(model, inputs=x, held_out=xh, **kw)
    assert {lp.layer: (lp.width_before, lp.width_after) for lp in report.layers} == widths
    meta = {"family": name, "size": size, "step": 9}
    path = save_pruned(pruned, report, tmp_path / name / size / "step0000009.safetensors", meta)
    loaded, got = checkpoints.load(path)  # no family given: the sidecar's, narrowed
    assert got["pruned"]["widths"] == {k: w for k, (_, w) in widths.items()}
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after
    with torch.no_grad():
        y_pruned, y_loaded, y0 = pruned(xh), loaded(xh), model(xh)
    assert float((y_loaded - y_pruned).abs().max()) <= 1e-12
    assert float((y_loaded - y0).norm() / y0.norm()) <= 1e-9
    # the sweep's loader (detect, measure, `read`) takes it as an ordinary checkpoint
    swept, _ = loading.load_model(path, name, size)
    assert torch.equal(swept(xh), y_loaded)
    # acceptance 3: a second detect + read finds no node death or duplicate left
    dirs = dd.detect(loaded, x, detectors=list(PRUNE_DETECTORS), max_per_layer=1 << 20, **kw)
    reads = dd.read_many(loaded, x, dirs, **kw)
    dead = [r.name for r in reads if r.kind in ("singular", "gauge")]
    assert dead == []
    _, again = dd.prune(loaded, reads, dirs, inputs=x, held_out=xh, **kw)
    assert again.actions == () and again.params_saved == 0


def test_pruned_shapes_wider_than_the_build_name_the_tensor(tmp_path):
    model = zoo.get_family("mlp").build("h8")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    shapes["fc1.weight"] = [9, 4]  # wider than h4's 4 units
    path = checkpoints.save(
        model,
        tmp_path / "p.safetensors",
        {"family": "mlp", "size": "h4", "pruned": {"shapes": shapes}},
    )
    with pytest.raises(CheckpointError, match=r"fc1\.weight does not fit the built \(4, 4\)"):
        checkpoints.load(path)
