"""The rate read on synthetic curves with known slopes, floors and crossovers."""

import math

import numpy as np
import pytest

from dead_directions.core.rate import RateOptions, local_slopes, read_rate, scaling_window

T = np.logspace(-4, 0, 25)
OPTS = RateOptions()


FLOOR = 100 * np.finfo(float).eps ** 2


def read(g, g_ref=1.0, eps_flat=1e-8, floor=FLOOR):
    return read_rate(T, g, g_ref, eps_flat=eps_flat, floor=floor, options=OPTS)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_pure_power_law_reads_its_order(k):
    g = 0.7 * T ** (2 * (k - 1))
    r = read(g)
    assert r.order == pytest.approx(k, abs=1e-12)
    # The window spans every radius above the rounding floor.
    assert r.window == (T[g > FLOOR][0], T[-1])


def test_local_slopes_of_a_power_law():
    np.testing.assert_allclose(local_slopes(T, T**3), 3.0, rtol=1e-12)


def test_offset_from_the_locus_reads_the_upper_plateau():
    delta = 1e-3 * math.sqrt(2)
    r = read((T + delta) ** 4)
    assert r.order == pytest.approx(3.0, abs=0.05)
    assert r.window[0] > 1e-2


def test_numerical_noise_floor_is_not_read_as_regular():
    eps = np.finfo(float).eps
    floor = eps**2  # rounding floor of a float64 directional Fisher relative to g_ref
    g = floor + 1e-2 * T**6  # a k = 4 direction sinking into the floor at small t
    r = read(g)
    assert r.order == pytest.approx(4.0, abs=0.05)


def test_near_locus_k2_reads_the_upper_plateau_and_a_constant_reads_regular():
    # g = c0 + t²: slope 0 for t ≪ √c0 (the checkpoint's distance from the locus), 2 above.
    r = read(1e-7 + T**2)
    assert r.order == pytest.approx(2.0, abs=0.05)
    assert r.window[0] > 1e-3
    assert read(np.full_like(T, 0.3)).order == pytest.approx(1.0, abs=1e-12)


def test_flat_curve():
    r = read(np.full_like(T, 1e-11))
    assert r.flat and math.isinf(r.order)


def test_no_window_is_unresolved():
    rng = np.random.default_rng(0)
    g = np.exp(rng.normal(scale=3.0, size=T.shape))
    r = read(g)
    assert math.isnan(r.order) and r.window is None


def test_window_prefers_larger_radii_on_ties():
    slopes = np.array([0.0, 0.0, 0.0, 1.0, 4.0, 4.0, 4.0])
    assert scaling_window(slopes, 0.1, 3) == (4, 7)


@pytest.mark.parametrize("delta", [1e-2])
def test_two_regimes_near_dead_takes_the_upper_plateau_and_finds_the_crossover(delta):
    """z² node death offset by δ (METHOD §2): g ∝ (t + δ)⁴, slope 0 for t ≪ δ, 4 above.
    At δ = 1e-2 the lower plateau is the wider, but its level δ⁴ is small against g_ref = 1:
    k̂ from the upper plateau, and the fitted lines meet at r* = δ (closed form). (On this
    grid, 1e-4 … 1, δ ≥ 3e-2 leaves no upper plateau of 3 slopes, and δ ≤ 5e-3 no lower one:
    the curve then has one regime.)"""
    g = (T + delta) ** 4
    r = read(g)
    assert r.order == pytest.approx(3.0, abs=0.1)
    assert r.lower_slope == pytest.approx(0.0, abs=0.2)
    assert r.upper_slope > 3.0
    assert r.lower_level == pytest.approx(delta**4, rel=0.2)
    assert r.crossover == pytest.approx(delta, rel=0.5)


def test_two_regimes_of_a_live_direction_stay_regular():
    """A regular direction whose g grows at large radii: the lower level (1 = g_ref) is
    not small, so the wider lower plateau gives k̂ = 1; both slopes are still reported."""
    g = 1.0 + (T / 0.03) ** 4
    r = read(g)
    assert r.order == pytest.approx(1.0, abs=0.05)
    assert r.lower_level == pytest.approx(1.0, rel=0.01)
    assert r.upper_slope > 3.0 and r.crossover == pytest.approx(0.03, rel=0.5)
