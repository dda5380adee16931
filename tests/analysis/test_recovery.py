"""Recovery measured at the checkpoint (issue 16, METHOD §5): a direction with a base
projection is read at the checkpoint and at the base; the base's relative distance decides
whether the base read counts."""

import math

import numpy as np
import pytest
import torch
from detector_models import UnitMLP, activation

import dead_directions as dd
from dead_directions.analysis.recovery import rates, recovery
from dead_directions.core.direction import BASE_TOL, normalise


def _inputs(n=256, d=4, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _scaled_unit(act: str, delta: float, unit: int = 0) -> UnitMLP:
    """UnitMLP with ``unit``'s incoming row, bias and outgoing column scaled by ``delta``
    (0: the unit planted exactly dead, on the crossing of its node-death locus)."""
    model = UnitMLP(activation(act))
    with torch.no_grad():
        model.fc1.weight[unit] *= delta
        model.fc1.bias[unit] *= delta
        model.fc2.weight[:, unit] *= delta
    return model


def _relative_distance(model: UnitMLP, unit: int) -> float:
    """Closed form of the distance to the base that zeroes ``unit``: its own entries over
    the norm of fc1.weight, fc1.bias and fc2.weight (the tensors the base moves)."""
    w, b, q = (t.detach() for t in (model.fc1.weight, model.fc1.bias, model.fc2.weight))
    own = w[unit].square().sum() + b[unit].square() + q[:, unit].square().sum()
    every = w.square().sum() + b.square().sum() + q.square().sum()
    return math.sqrt(float(own) / float(every))


def _explicit_g(model, x, vector) -> float:
    """g(θ; u) = mean over inputs of ‖J u‖² (Gaussian head, σ = 1) from the full Jacobian
    (``torch.func.jacrev``), independent of the read's jvp path."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p):
        return torch.func.functional_call(model, p, (x,))

    jac = torch.func.jacrev(f)(params)
    ju = sum(
        (jac[k].reshape(*jac[k].shape[:2], -1) * vector[k].reshape(-1)).sum(-1) for k in vector
    )
    return float(ju.square().sum(-1).mean())


def test_a_live_unit_flagged_by_loose_thresholds_is_regular_at_the_checkpoint():
    """The issue's case: `dead_unit` with score_atol = 1e6 on a live tanh MLP flags every
    unit; the base (all units zeroed) makes node death true there (singular k̂ = 2), but
    it lies a whole checkpoint away (relative distance 1) and the checkpoint reads regular."""
    model, x = UnitMLP(activation("tanh")), _inputs()
    dirs = dd.detect(model, x, detectors=["dead_unit"], dead_unit={"score_atol": 1e6})
    assert len(dirs) == 6
    fit, _ = dd.split_probe(x)
    reads = dd.read_many(model, x, dirs)
    for d, r in zip(dirs, reads, strict=True):
        # the base zeroes every entry of the tensors it moves: distance 1 exactly
        assert r.base_distance == pytest.approx(1.0, rel=1e-12)
        assert r.kind == "singular" and abs(r.order - 2) <= 0.05 and r.matches_prediction
        assert r.checkpoint_kind == "regular" and abs(r.checkpoint_order - 1) <= 0.05
        assert r.matches_at_checkpoint is False and r.recovered_at_base() is False
        assert r.on_locus() is False
        # regular at the checkpoint because g(θ; u) ≠ 0 there (k = 1), by an explicit
        # Jacobian on the fit part
        vec = normalise(d.vector)
        assert _explicit_g(model, fit, vec) > 1e-3


@pytest.mark.parametrize(
    "act, delta, order",
    [("tanh", 0.0, 2.0), ("z^2", 0.0, 3.0), ("z^2", 1e-3, 3.0), ("z^2", 1e-2, 3.0)],
)
def test_a_planted_dead_unit_is_recovered_at_the_checkpoint(act, delta, order):
    """A unit planted dead (δ = 0) or near-dead (its entries scaled by δ): k = p + 1 at
    the checkpoint (the upper plateau of two regimes for δ > 0) and at the base; the base
    read counts only while the base lies within base_tol = 1e-3 (δ = 1e-2 puts it 4.6e-3
    away: off-locus)."""
    model, x = _scaled_unit(act, delta), _inputs()
    dirs = [d for d in dd.detect(model, x, detectors=["dead_unit"]) if d.meta["unit"] == 0]
    assert len(dirs) == 1
    (r,) = dd.read_many(model, x, dirs)
    distance = _relative_distance(model, 0)
    assert r.base_distance == pytest.approx(distance, rel=1e-12, abs=1e-300)
    assert r.kind == "singular" and abs(r.order - order) <= 0.05
    assert r.checkpoint_kind == "singular" and abs(r.checkpoint_order - order) <= 0.05
    assert r.matches_at_checkpoint is True
    assert r.recovered_at_base() is (distance <= BASE_TOL)
    if delta == 1e-2:
        assert r.on_locus() is False and r.recovered_at_base(base_tol=1e-2) is True
    if delta == 0.0:
        # on the locus the checkpoint is the base: the two reads agree to the last bit
        assert r.base_distance == 0.0 and r.checkpoint_order == r.order


def test_directions_without_a_base_repeat_their_read_and_the_twin_read_can_be_off():
    model, x = _scaled_unit("z^2", 0.0), _inputs()
    dirs = dd.detect(model, x, detectors=["dead_unit", "random"], max_per_layer=2)
    reads = dd.read_many(model, x, dirs)
    plain = [r for d, r in zip(dirs, reads, strict=True) if not d.base]
    assert plain
    for r in plain:
        assert math.isnan(r.base_distance) and r.on_locus() is None
        assert r.checkpoint_kind == r.kind
        np.testing.assert_equal(r.checkpoint_order, r.order)  # NaN equal to NaN
        assert r.matches_at_checkpoint == r.matches_prediction
    off = dd.read_many(model, x, dirs, options=dd.ReadOptions(read_at_checkpoint=False))
    for d, r in zip(dirs, off, strict=True):
        if d.base:
            assert r.checkpoint_kind == "" and r.matches_at_checkpoint is None
            assert r.base_distance == 0.0


def test_rates_count_the_checkpoint_and_on_locus_bases_separately():
    """recovery() and rates() on the live MLP with loose thresholds (six off-locus bases)
    and on a planted z² death (one base on the locus)."""
    x = _inputs()
    live = recovery(
        UnitMLP(activation("tanh")), x, detectors=["dead_unit"], source="live", order_tol=0.05
    )
    # recovery() runs the detector with its default thresholds: the live MLP has no dead unit
    assert live == []
    planted = recovery(_scaled_unit("z^2", 0.0), x, detectors=["dead_unit"], source="planted")
    table = rates(planted)
    assert table["dead_unit"].predicted == table["dead_unit"].based == len(planted) >= 1
    assert table["dead_unit"].recovered_base == table["dead_unit"].recovered == len(planted)
    assert table["dead_unit"].off_locus == 0
    far = recovery(_scaled_unit("z^2", 1e-2), x, detectors=["dead_unit"], source="far")
    table = rates(far)
    assert table["all"].off_locus == table["all"].based >= 1
    assert table["all"].recovered_base == 0 and table["all"].recovered == table["all"].predicted
    assert rates(far, base_tol=1e-2)["all"].recovered_base == table["all"].based


def test_zoo_dead_unit_indices_are_the_sidecar_counts():
    """The zoo's record of planted deaths (the sidecar's `dead_units`) by unit, independent
    of the detector: the units whose in-norm × out-norm is below 1e-3."""
    from dead_directions import zoo

    model = zoo.get_family("vit-compressed").build("d16")
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight[:, 2] = 0.0
        model.blocks[1].mlp.fc1.weight[0] *= 1e-6
        model.blocks[1].mlp.fc1.bias[0] = 0.0
    assert zoo.dead_unit_indices(model) == {"blocks.0.mlp": [], "blocks.1.mlp": [0, 2]}
    assert zoo.dead_units(model) == {"blocks.0.mlp": 0, "blocks.1.mlp": 2}
    assert np.isclose(BASE_TOL, 1e-3)


def test_zoo_recovery_scores_the_planted_node_deaths(tmp_path):
    """mlp-z2 (z², weight decay) at the end of its default recipe: the units training planted
    dead (sidecar `dead_units`: 1 at h4, 11 at h16) are the units `dead_unit` flags; each
    reads singular k̂ = 3 = p + 1 at the checkpoint itself; its base read counts only where
    the base — all planted units zeroed — lies within base_tol of the checkpoint, by the
    closed-form distance from the planted units' own entries."""
    from dead_directions import checkpoints, zoo
    from dead_directions.analysis.recovery import final_checkpoint, zoo_recovery

    truth = []
    outcomes = zoo_recovery(
        tmp_path, ["mlp-z2"], ["h4", "h16"], train=True, max_per_layer=16, truth=truth
    )
    assert [(t.block, len(t.planted), t.sidecar, t.found) for t in truth] == [
        (".", 1, 1, 1),
        (".", 11, 11, 11),
    ]
    for t in truth:
        assert t.flagged == t.planted
    dead = [o for o in outcomes if o.detector == "dead_unit"]
    assert len(dead) == 12 and all(o.planted for o in dead)
    for size in ("h4", "h16"):
        model, _ = checkpoints.load(final_checkpoint(tmp_path, "mlp-z2", size), family="mlp-z2")
        units = zoo.dead_unit_indices(model)["."]
        w, b, q = (t.detach() for t in (model.fc1.weight, model.fc1.bias, model.fc2.weight))
        own = sum(float(w[j].square().sum() + b[j] ** 2 + q[:, j].square().sum()) for j in units)
        every = float(w.square().sum() + b.square().sum() + q.square().sum())
        for o in (o for o in dead if o.source.startswith(f"mlp-z2/{size}/")):
            assert o.base_distance == pytest.approx(math.sqrt(own / every), rel=1e-9)
            assert o.matched and o.checkpoint_kind == "singular"
            assert abs(o.checkpoint_order - 3) <= 0.1
            assert o.recovered_at_base() is (o.base_distance <= BASE_TOL)
