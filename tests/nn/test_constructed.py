"""Every constructed cell reads its closed-form kind and order (METHOD §4)."""

import math

import pytest

import dead_directions as dd

CELLS = {c.name: c for c in dd.constructed.read_cells()}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_reads_its_closed_form(name):
    cell = CELLS[name]
    r = cell.read()
    assert r.kind == cell.direction.predicted_kind, (r.kind, r.note, r.correctability)
    k = cell.direction.predicted_order
    if math.isinf(k):
        assert math.isinf(r.order) and r.lam == 0.0
    else:
        assert abs(r.order - k) <= 0.05
        assert r.lam == pytest.approx(1 / (2 * r.order))
        assert r.spread <= 0.05


def test_curved_gauges_read_order_two_on_the_ray_and_rho_zero():
    for name in ("relu-rescale", "attention-qk"):
        r = CELLS[name].read()
        assert abs(r.ray_order - 2.0) <= 0.05
        assert r.kind == "gauge" and r.correctability <= dd.ReadOptions().rho_stop
        # Run to convergence, ρ goes to zero.
        full = CELLS[name].read(options=dd.ReadOptions(rho_stop=1e-10))
        assert full.correctability < 1e-6


def test_near_locus_checkpoint_takes_the_upper_plateau():
    r = CELLS["node-death-z^2-offset"].read()
    lower, upper = r.window
    assert lower > 1e-2  # the slope-0 region below the offset is not the window
    assert upper == pytest.approx(1.0)


def test_tanh_node_death_is_genuine():
    r = CELLS["node-death-tanh"].read()
    assert r.correctability == pytest.approx(1.0, abs=1e-6)  # J = 0 at the locus
