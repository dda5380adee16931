"""Detectors: registry, structure, each structural detector on models with and without its
structure (read back by dd.read), kfac and fisher_block against the LayerNorm kernel."""

import numpy as np
import pytest
import torch
from detector_models import (
    ConvBN,
    DeadConv,
    NormMLP,
    UnitMLP,
    activation,
    dead_mlp,
    duplicate_mlp,
    gaussian,
)
from models import make

import dead_directions as dd
from dead_directions import detectors

CONVERGED = dd.ReadOptions(rho_stop=1e-10)  # ρ by CGLS run to convergence


def _reads(model, x, dirs, **kw):
    assert dirs, "expected directions"
    return dd.read_many(model, x, dirs, **kw)


# -- registry and detect ------------------------------------------------------------------
def test_third_party_detector_registers_without_editing_the_package():
    @detectors.register("test_first_row")
    def first_row(ctx, layer):
        """Row 0 of every Linear weight (a toy plug-in)."""
        module = ctx.modules[layer]
        if not isinstance(module, torch.nn.Linear):
            return []
        vec = torch.zeros_like(ctx.params[f"{layer}.weight"])
        vec[0] = 1.0
        return [
            dd.Direction(
                name=f"test_first_row:{layer}:0", layer=layer, vector={f"{layer}.weight": vec}
            )
        ]

    try:
        assert "test_first_row" in detectors.available()
        model, x = make("mlp")
        dirs = dd.detect(model, x, detectors=["test_first_row"])
        assert [d.name for d in dirs] == ["test_first_row:fc1:0", "test_first_row:fc2:0"]
        assert all(d.detector == "test_first_row" for d in dirs)  # filled in from the registry
        by_type = dd.detect(model, x, detectors={"Linear": ["test_first_row"]})
        assert [d.name for d in by_type] == [d.name for d in dirs]
        with pytest.raises(ValueError, match="already registered"):
            detectors.register("test_first_row")(first_row)
    finally:
        detectors.unregister("test_first_row")
    with pytest.raises(ValueError, match="unknown detector 'test_first_row'"):
        dd.detect(model, x, detectors=["test_first_row"])


def test_default_config_covers_the_layer_types_and_names_exist():
    for key in ("Linear", "Conv2d", "LayerNorm", "BatchNorm2d", "BatchNorm1d", "RMSNorm"):
        assert key in detectors.DEFAULT_BY_LAYER_TYPE
    assert detectors.DEFAULT_BY_LAYER_TYPE["attention"] == ["attention_qk"]
    for names in detectors.DEFAULT_BY_LAYER_TYPE.values():
        for name in names:
            detectors.get(name)


def test_layers_are_module_names_and_directions_live_in_them():
    model, x = make("block")
    names = detectors.layers(model)
    assert names == ["ln1", "attn", "attn.q", "attn.k", "attn.v", "attn.o", "ln2", "fc1", "fc2"]
    dirs = dd.detect(model, x)
    modules = dict(model.named_modules())
    for d in dirs:
        assert d.layer in names
        prefix = f"{d.layer}."
        assert all(k.startswith(prefix) for k in d.vector), d.name
        assert modules[d.layer] is not None
    assert len({d.name for d in dirs}) == len(dirs)


def test_names_are_stable_given_the_seed_and_the_layers_filter_works():
    model, x = make("block")
    a = dd.detect(model, x, seed=3)
    b = dd.detect(model, x, seed=3)
    c = dd.detect(model, x, seed=4)
    assert [d.name for d in a] == [d.name for d in b] == [d.name for d in c]
    for da, db in zip(a, b, strict=True):
        for k in da.vector:
            assert torch.equal(da.vector[k], db.vector[k])
    ra = next(d for d in a if d.detector == "random")
    rc = next(d for d in c if d.name == ra.name)
    assert not torch.equal(ra.vector[next(iter(ra.vector))], rc.vector[next(iter(rc.vector))])
    only = dd.detect(model, x, layers=["fc1"], seed=3)
    assert only and {d.layer for d in only} == {"fc1"}
    assert {d.name for d in only} == {d.name for d in a if d.layer == "fc1"}
    with pytest.raises(ValueError, match="not module names"):
        dd.detect(model, x, layers=["nope"])
    with pytest.raises(ValueError, match="list of names"):
        dd.detect(model, x, detectors="random")


def test_one_context_over_the_layers_returns_what_a_fresh_call_per_layer_returns():
    cases = [
        (NormMLP("layernorm"), gaussian(64, 3)),  # layernorm_kernel: at every anchor
        (ConvBN(batch_stats=False), gaussian(16, 1, 5, 5, seed=2)),
        (dead_mlp("relu"), gaussian(64, 4)),  # dead_unit, relu_rescale
        (make("block")[0], make("block")[1]),
    ]
    for model, x in cases:
        ctx = detectors.Context(model, x, seed=5, max_per_layer=3)
        layers = detectors.layers(model)
        assert len(layers) >= 2
        for layer in layers:
            fresh = dd.detect(model, x, layers=[layer], seed=5, max_per_layer=3)
            shared = dd.detect(model, x, layers=[layer], seed=5, max_per_layer=3, context=ctx)
            assert [d.name for d in shared] == [d.name for d in fresh], layer
            for a, b in zip(shared, fresh, strict=True):
                assert a.vector.keys() == b.vector.keys()
                assert all(torch.equal(a.vector[k], b.vector[k]) for k in a.vector), a.name
                assert a.predicted_kind == b.predicted_kind
                assert a.predicted_order == b.predicted_order
        assert "structure" in vars(ctx)  # traced once, kept
    with pytest.raises(ValueError, match="context: made for another model, output, seed"):
        dd.detect(model, x, seed=6, max_per_layer=3, context=ctx)


# -- LayerNorm kernel, norm input scale, softmax shift --------------------------------------
def test_layernorm_kernel_reads_flat_and_rmsnorm_has_none():
    x = gaussian(256, 3)
    model = NormMLP("layernorm")
    dirs = dd.detect(model, x, detectors=["layernorm_kernel"])
    assert [d.layer for d in dirs] == ["head", "head"]
    for r in _reads(model, x, dirs):
        assert r.kind == "gauge" and r.matches_prediction
        assert max(r.fisher.max(), r.fisher_base) <= 1e-12 * r.g_ref
    # anchored at the Linear instead of the norm: the same directions
    again = detectors.get("layernorm_kernel").fn(detectors.Context(model, x), "head")
    assert [d.name for d in again] == [d.name for d in dirs]
    assert dd.detect(NormMLP("rmsnorm"), x, detectors=["layernorm_kernel"]) == []


def test_norm_input_scale_layernorm_rmsnorm_and_batchnorm_by_statistics():
    x = gaussian(256, 3)
    ln = dd.detect(NormMLP("layernorm"), x, detectors=["norm_input_scale"])
    assert [d.meta["gauge"] for d in ln] == ["scale", "mean_shift_bias", "mean_shift_weight"]
    rms = dd.detect(NormMLP("rmsnorm"), x, detectors=["norm_input_scale"])
    assert [d.meta["gauge"] for d in rms] == ["scale"]
    for model, dirs in ((NormMLP("layernorm"), ln), (NormMLP("rmsnorm"), rms)):
        for r in _reads(model, x, dirs):
            assert r.kind == "gauge" and r.matches_prediction, (r.name, r.kind, r.magnitude)
    images = gaussian(32, 1, 5, 5)
    batch = ConvBN(batch_stats=True)
    bn = dd.detect(batch, images, detectors=["norm_input_scale"], max_per_layer=4)
    assert [d.meta["gauge"] for d in bn] == ["scale[0]", "shift[0]", "scale[1]", "shift[1]"]
    for r in _reads(batch, images, bn):
        assert r.kind == "gauge" and r.matches_prediction
    # running statistics in eval mode: BatchNorm is affine, input scaling is not invariant
    assert dd.detect(ConvBN(batch_stats=False), images, detectors=["norm_input_scale"]) == []


def test_softmax_shift_only_under_a_categorical_head():
    model, x = UnitMLP(activation("tanh")), gaussian(256, 4)
    assert dd.detect(model, x, detectors=["softmax_shift"]) == []  # gaussian
    dirs = dd.detect(model, x, detectors=["softmax_shift"], likelihood="categorical")
    assert [d.layer for d in dirs] == ["fc2", "fc2"]
    for r in _reads(model, x, dirs, likelihood="categorical"):
        assert r.kind == "gauge" and r.matches_prediction
        assert r.fisher.max() <= 1e-12 * r.g_ref
    # the same bias move under a Gaussian head is a live direction
    r = dd.read(model, x, dirs[0].vector)
    assert r.kind == "regular"


# -- hidden units ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, k",
    [("relu", 2), ("tanh", 2), ("gelu", 2), ("z^2", 3), ("z^3", 4), ("relu-functional", 2)],
)
def test_dead_unit_reads_activation_order_plus_one(name, k):
    model, x = dead_mlp(name), gaussian(256, 4)
    dirs = dd.detect(model, x, detectors=["dead_unit"])
    assert sorted(d.meta["unit"] for d in dirs) == [0, 3]
    assert {d.meta["unit"]: d.meta["reason"] for d in dirs} == {0: "silent", 3: "zero_outgoing"}
    for d, r in zip(dirs, _reads(model, x, dirs), strict=True):
        assert d.predicted_order == k
        assert r.kind == "singular"
        assert abs(r.order - k) <= 0.1, (d.name, r.order)
    clean = UnitMLP(activation(name), seed=5)
    assert dd.detect(clean, x, detectors=["dead_unit"]) == []


@pytest.mark.parametrize("family, size, k", [("vit-compressed", "d16", 2), ("mlp-z2", "h8", 3)])
def test_dead_unit_finds_node_deaths_at_the_end_of_training(tmp_path, family, size, k):
    """Issue 4, acceptance 3: the zoo's final checkpoint (full recipe: weight decay drives
    the excess units to the locus) — dead_unit finds the units that the zoo's independent
    counter (in-norm × out-norm < 1e-3) calls dead, and each reads order p + 1 within 0.1
    (GELU p = 1 in the compressed ViT's MLP; z², p = 2)."""
    from dead_directions import zoo
    from dead_directions.io import checkpoints

    fam = zoo.get_family(family)
    path = zoo.train(family, size, [fam.recipe.steps], tmp_path)[-1]
    model, meta = checkpoints.load(path, family=family)
    counted = sum(meta["dead_units"].values())
    assert counted >= 1, meta["dead_units"]
    x = fam.probe()
    dirs = dd.detect(model, x, detectors=["dead_unit"], max_per_layer=32)
    assert len(dirs) >= counted
    reads = _reads(model, x, dirs, likelihood=fam.likelihood)
    for d, r in zip(dirs, reads, strict=True):
        assert d.predicted_order == k
        assert r.kind == "singular" and abs(r.order - k) <= 0.1, (d.name, r.kind, r.order)


def test_dead_conv_channel_through_pooling_and_flatten():
    model, x = DeadConv(), gaussian(64, 1, 4, 4)
    dirs = dd.detect(model, x, detectors=["dead_unit"])
    assert [d.meta["unit"] for d in dirs] == [1]
    assert set(dirs[0].vector) == {"conv.weight", "conv.bias", "fc.weight"}
    cols = torch.nonzero(dirs[0].vector["fc.weight"].abs().sum(0)).flatten().tolist()
    assert cols == [4, 5, 6, 7]  # channel 1's block of the flattened 2×2 pooled map
    (r,) = _reads(model, x, dirs)
    assert r.kind == "singular" and abs(r.order - 2.0) <= 0.1


def test_duplicate_units_difference_is_a_flat_gauge():
    x = gaussian(256, 4)
    for name, pairs in (("relu", [(0, 1), (2, 4)]), ("tanh", [(0, 1)])):
        model = duplicate_mlp(name)
        dirs = dd.detect(model, x, detectors=["duplicate_units"])
        assert [d.meta["units"] for d in dirs] == pairs
        assert all(d.layer == "fc2" and d.meta["weights_collinear"] for d in dirs)
        for r in _reads(model, x, dirs):
            assert r.kind == "gauge" and r.matches_prediction
            assert r.fisher.max() <= 1e-12 * r.g_ref
        assert dd.detect(UnitMLP(activation(name)), x, detectors=["duplicate_units"]) == []


def test_relu_rescale_is_a_curved_gauge_and_not_for_tanh():
    x = gaussian(256, 4)
    for name in ("relu", "z^2"):
        model = UnitMLP(activation(name))
        dirs = dd.detect(model, x, detectors=["relu_rescale"])
        assert len(dirs) == 2 and all(d.meta["degree"] == {"relu": 1, "z^2": 2}[name] for d in dirs)
        for r in _reads(model, x, dirs, options=CONVERGED):
            assert r.kind == "gauge" and r.matches_prediction
            assert abs(r.ray_order - 2.0) <= 0.1 and r.correctability <= 1e-6  # curved orbit
    assert dd.detect(UnitMLP(activation("tanh")), x, detectors=["relu_rescale"]) == []
    assert dd.detect(UnitMLP(activation("gelu")), x, detectors=["relu_rescale"]) == []


def test_attention_qk_per_head_orbit_reads_gauge():
    model, x = make("block")
    dirs = dd.detect(model, x, detectors=["attention_qk"])
    assert [d.layer for d in dirs] == ["attn", "attn"] and dirs[0].meta["orbit"] == "heads"
    for r in _reads(model, x, dirs, options=CONVERGED):
        assert r.kind == "gauge" and r.matches_prediction and r.correctability <= 1e-6
    mlp, xm = make("mlp")
    assert dd.detect(mlp, xm, detectors=["attention_qk"]) == []


# -- generic detectors ----------------------------------------------------------------------
def test_kfac_finds_the_input_kernel_after_a_layernorm_and_reports_cost():
    # d_in = hidden: the normalised features span all of 1^⊥, so the LayerNorm kernel is
    # the whole kernel of A (a narrower input would add its own rank deficiency)
    model, x = NormMLP("layernorm", d_in=6, hidden=6, d_out=3), gaussian(256, 6)
    dirs = dd.detect(model, x, detectors=["kfac"], layers=["head"], max_per_layer=3)
    assert len(dirs) == 3
    for d in dirs:
        assert d.predicted_kind == "gauge" and d.meta["eig_a_rel"] <= 1e-12
        assert d.meta["products"] >= 2 and d.meta["seconds"] >= 0
    kernel = _kernel_basis(model)
    for d in dirs:
        assert _overlap(d, kernel) >= 0.99
    for r in _reads(model, x, dirs):
        assert r.kind == "gauge"


def _kernel_basis(model) -> np.ndarray:
    """Orthonormal basis of the LayerNorm kernel {W = v γ⁻¹ᵀ, b = −v (γ⁻¹·β)} of ``head``."""
    gamma, beta = model.norm.weight.detach(), model.norm.bias.detach()
    inv = 1.0 / gamma
    cols = []
    for i in range(model.head.out_features):
        v = torch.zeros(model.head.out_features, dtype=torch.float64)
        v[i] = 1.0
        cols.append(torch.cat([torch.outer(v, inv).reshape(-1), -v * float(inv @ beta)]).numpy())
    q, _ = np.linalg.qr(np.stack(cols, axis=1))
    return q


def _overlap(d, basis) -> float:
    u = torch.cat([d.vector["head.weight"].reshape(-1), d.vector["head.bias"]]).numpy()
    u = u / np.linalg.norm(u)
    return float(np.linalg.norm(basis.T @ u))


def test_fisher_block_bottom_eigenvector_lies_in_the_layernorm_kernel():
    model, x = NormMLP("layernorm", d_in=6, hidden=6, d_out=3), gaussian(256, 6)
    kernel = _kernel_basis(model)
    structural = dd.detect(model, x, detectors=["layernorm_kernel"], max_per_layer=3)
    assert all(_overlap(d, kernel) >= 1 - 1e-12 for d in structural)
    dirs = dd.detect(model, x, detectors=["fisher_block"], layers=["head"], max_per_layer=3)
    assert len(dirs) == 3 and dirs[0].meta["params"] == 21
    assert dirs[0].meta["products"] > 0 and dirs[0].meta["eigenvalue_rel"] <= 1e-10
    overlaps = [_overlap(d, kernel) for d in dirs]
    assert overlaps[0] >= 0.99, overlaps
    assert min(overlaps) >= 0.99  # the kernel is 3-dimensional: all three bottom ones
    too_big = dd.detect
    with pytest.raises(ValueError, match="max_params"):
        too_big(
            model, x, detectors=["fisher_block"], layers=["head"], fisher_block={"max_params": 10}
        )


def test_random_controls_read_regular():
    model, x = make("cnn")
    dirs = dd.detect(model, x, detectors=["random"])
    assert {d.layer for d in dirs} == {"conv1", "conv2"}
    for r in _reads(model, x, dirs):
        assert r.kind == "regular" and r.matches_prediction


# -- wrong layers ---------------------------------------------------------------------------
STRUCTURAL = [
    "layernorm_kernel",
    "norm_input_scale",
    "softmax_shift",
    "dead_unit",
    "duplicate_units",
    "relu_rescale",
    "attention_qk",
]


@pytest.mark.parametrize("name", STRUCTURAL + ["kfac", "fisher_block", "random"])
def test_a_detector_at_a_layer_it_does_not_apply_to_returns_nothing(name):
    model, x = make("cnn")  # conv → relu (functional) → conv: no norm, no attention, no softmax
    ctx = detectors.Context(model, x)
    entry = detectors.get(name)
    for layer in ("", "conv2"):
        if name in ("kfac", "random", "fisher_block") and layer == "conv2":
            continue
        assert list(entry.fn(ctx, layer)) == [], (name, layer)
    relu_free = torch.nn.Sequential(torch.nn.Linear(3, 4, dtype=torch.float64), torch.nn.Tanh())
    ctx = detectors.Context(relu_free, gaussian(8, 3))
    for layer in ("0", "1", ""):
        if name in ("kfac", "random", "fisher_block") and layer == "0":
            continue
        assert list(entry.fn(ctx, layer)) == [], (name, layer)


def test_structural_detectors_find_nothing_on_a_plain_tanh_mlp():
    model, x = make("mlp")
    found = dd.detect(model, x, detectors=STRUCTURAL, likelihood="categorical")
    assert {d.detector for d in found} == {"softmax_shift"}  # the head, under softmax
    assert dd.detect(model, x, detectors=STRUCTURAL) == []


def test_predictions_are_never_contradicted_on_the_test_models():
    """Every structural prediction on the shared test models matches its read."""
    cases = [
        (NormMLP("layernorm"), gaussian(128, 3), "categorical"),
        (dead_mlp("z^2"), gaussian(128, 4), "gaussian"),
        (duplicate_mlp("relu"), gaussian(128, 4), "categorical"),
        # 64 images: a channel's rescaling has 18 correction parameters, and 24 fit images
        # give 24 equations (under-determined, `undetermined`); 48 give 48.
        (DeadConv(), gaussian(64, 1, 4, 4), "categorical"),
    ]
    total = 0
    for model, x, lik in cases:
        dirs = [
            d
            for d in dd.detect(model, x, detectors=STRUCTURAL, likelihood=lik)
            if d.predicted_kind is not None
        ]
        for r in _reads(model, x, dirs, likelihood=lik):
            total += 1
            assert r.matches_prediction, (r.name, r.kind, r.order, r.predicted_kind)
    assert total >= 15


# -- recovery on the tiny zoo ---------------------------------------------------------------
def test_recovery_rate_on_the_tiny_zoo(tmp_path, capsys):
    pytest.importorskip("dead_directions.zoo")
    from dead_directions.analysis.recovery import rates, zoo_recovery
    from dead_directions.cli import main

    truth = []
    outcomes = zoo_recovery(
        tmp_path,
        families=["mlp-z2", "cnn", "transformer"],
        sizes=["h4", "c4", "d32"],
        train=True,
        tiny=True,
        probe=32,
        max_per_layer=1,
        truth=truth,
    )
    table = rates(outcomes)
    ok, n = table["all"].recovered, table["all"].predicted
    # Recovery is measured at the checkpoint, not constructed: the read may decline to
    # decide (a duplicate pair that fires identically on the fit part only, a ReLU unit too
    # rarely active on 24 sequences for its rescaling's correction to transfer to held-out
    # ones, attention Q/K with more correction parameters than equations), but never
    # contradicts.
    wrong = [o for o in outcomes if not o.matched and o.checkpoint_kind != "undetermined"]
    assert n >= 8 and ok / n >= 0.75 and not wrong, [o for o in outcomes if not o.matched]
    assert {"layernorm_kernel", "softmax_shift", "attention_qk", "relu_rescale"} <= set(table)
    # The tiny recipe plants no node death (sidecar dead_units all 0): a unit dead_unit
    # flags anyway is not planted, its base is off the locus and not counted as recovered.
    assert truth and all(t.planted == () and t.sidecar == 0 for t in truth)
    flagged = [o for o in outcomes if o.detector == "dead_unit" and o.planted is not None]
    assert flagged
    for o in flagged:
        assert o.planted is False and o.off_locus() and not o.recovered_at_base()
    code = main(["recovery", "--root", str(tmp_path), "--family", "mlp-z2", "--probe", "32"])
    printed = capsys.readouterr().out
    assert code == 0 and "relu_rescale" in printed and "recovered at the checkpoint" in printed


def test_config_chooses_detectors_per_layer_type():
    """The sweep's `detectors:` (schema) → `--detectors LayerType=names` → dd.detect."""
    import jsonschema
    import yaml

    from dead_directions.cli.sweep import parse_detectors

    assert parse_detectors(None) is None and parse_detectors([]) is None
    assert parse_detectors(["dead_unit", "kfac"]) == ["dead_unit", "kfac"]
    assert parse_detectors(["Linear=dead_unit,kfac", "LayerNorm=layernorm_kernel"]) == {
        "Linear": ["dead_unit", "kfac"],
        "LayerNorm": ["layernorm_kernel"],
    }
    with pytest.raises(ValueError, match="not both"):
        parse_detectors(["dead_unit", "Linear=kfac"])
    with pytest.raises(ValueError, match="once"):
        parse_detectors(["Linear=kfac", "Linear=random"])

    model, x = dead_mlp("tanh"), gaussian(256, 4)
    by_type = dd.detect(model, x, detectors=parse_detectors(["Linear=dead_unit"]))
    by_name = dd.detect(model, x, detectors=["dead_unit"])
    assert (
        [d.name for d in by_type]
        == [d.name for d in by_name]
        == [
            "dead_unit:fc1:0",
            "dead_unit:fc1:1",
        ]
    )
    for a, b in zip(by_type, by_name, strict=True):
        assert all(torch.equal(a.vector[k], b.vector[k]) for k in a.vector)

    schema = yaml.safe_load(open("workflow/schemas/config.schema.yaml", encoding="utf-8"))
    family = {"$defs": schema.get("$defs", {}), **schema["properties"]["families"]}
    ok = {"m": {"sizes": ["h4"], "steps": [0], "detectors": {"Linear": ["dead_unit"]}}}
    jsonschema.validate(ok, family)
    for bad in ({"Linear": "dead_unit"}, {"Linear": ["dead unit"]}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"m": {**ok["m"], "detectors": bad}}, family)


def test_dead_units_share_one_base_through_save_and_load(tmp_path):
    """All dead units of a layer are projected together; the sweep's directions file keeps
    that (safetensors refuses shared memory, so it is saved as copies and merged on load)."""
    from dead_directions.io.artefacts import load_directions, save_directions

    model, x = dead_mlp("z^2"), gaussian(256, 4)
    dirs = dd.detect(model, x, detectors=["dead_unit"])
    assert len(dirs) == 2
    for d in dirs:  # both units 0 and 3 zeroed in every direction's base
        for j in (0, 3):
            assert torch.equal(d.base["fc1.weight"][j], -model.fc1.weight[j].detach())
            assert torch.equal(d.base["fc2.weight"][:, j], -model.fc2.weight[:, j].detach())
    assert dirs[0].base is dirs[1].base  # one object: dd.read_many streams them together
    save_directions(dirs, tmp_path / "d.safetensors")
    back = load_directions(tmp_path / "d.safetensors")
    assert back[0].base is back[1].base
    for a, b in zip(_reads(model, x, dirs), _reads(model, x, back), strict=True):
        assert a.kind == b.kind == "singular" and a.order == b.order and abs(a.order - 3) < 0.1
