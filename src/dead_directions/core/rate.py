"""The rate read: order k from the log–log slope of g(θ_base + t u; u) ≍ t^{2(k−1)}."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RateOptions:
    """Tolerances of the rate read.

    ``slope_tol``: largest spread (max − min) of local slopes inside a scaling window.
    ``min_width``: fewest local slopes (neighbouring radius pairs) in a window.
    ``eps_flat``: a curve with ``g ≤ eps_flat · g_ref`` at every radius is flat; ``None``
    takes 1e-8 in float64 and 1e-5 in float32.
    ``floor``: radii with ``g ≤ floor · g_ref`` sit at the dtype's rounding floor and are
    excluded from windows; ``None`` takes ``100 · eps²`` of the dtype.
    ``dead_magnitude``: a regular read whose base magnitude ``g(θ_base)/g_ref`` is below
    this is noted as numerically dead, regular at this scale.
    ``zero_slope``: local slopes within this of 0 can form a lower plateau (two regimes).
    ``near_dead``: a lower plateau whose level (geometric mean of g over it) is at most
    this times ``g_ref`` is a near-dead direction: the upper plateau gives k̂ (METHOD §2).
    The default is ``dead_magnitude``'s: below it a direction is numerically dead at this
    scale, so what the curve does above its crossover is the locus' order; above it (a
    trained tanh MLP's weakest live directions sit at 1e-4 … 1e-3 of g_ref) it is live.
    """

    slope_tol: float = 0.1
    min_width: int = 3
    eps_flat: float | None = None
    floor: float | None = None
    dead_magnitude: float = 1e-6
    zero_slope: float = 0.2
    near_dead: float = 1e-6


def default_eps_flat(float_bits: int) -> float:
    return 1e-8 if float_bits >= 64 else 1e-5


def default_floor(eps: float) -> float:
    return 100.0 * eps * eps


@dataclass(frozen=True)
class RateRead:
    """What the slope of one rate curve says.

    ``flat``: the curve never rises above ``eps_flat · g_ref``. ``order`` is ``1 + s/2``
    for the least-squares slope ``s`` of ``log g`` on ``log t`` over the window; NaN when
    no window exists (``window`` is then ``None``). ``spread`` is the largest deviation of
    a local order ``1 + s_i/2`` inside the window from ``order``.

    Two regimes (METHOD §2): where a lower plateau of slope ≈ 0 and an upper plateau of
    slope ≥ 1 (k ≥ 1.5) above it both span ``min_width``, ``lower_slope`` and
    ``upper_slope`` are their least-squares slopes, ``lower_level`` the lower plateau's
    level over ``g_ref`` and ``crossover`` the radius r* where the two fitted lines meet (in
    parameter units: an estimate of the distance to the singular set along u); NaN
    otherwise. The window is the upper plateau when the lower level is at most
    ``near_dead``, whatever the widths.
    """

    flat: bool
    order: float
    slope: float
    spread: float
    window: tuple[float, float] | None
    local_slopes: np.ndarray
    lower_slope: float = math.nan
    upper_slope: float = math.nan
    lower_level: float = math.nan
    crossover: float = math.nan


def local_slopes(radii: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``d log g / d log t`` between neighbouring radii; NaN where ``g ≤ 0``."""
    radii = np.asarray(radii, dtype=float)
    g = np.asarray(g, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logg = np.where(g > 0, np.log(np.where(g > 0, g, 1.0)), np.nan)
        return np.diff(logg) / np.diff(np.log(radii))


def scaling_window(slopes: np.ndarray, tol: float, min_width: int) -> tuple[int, int] | None:
    """The widest run ``slopes[i:j]`` whose values agree within ``tol`` (max − min).

    Ties go to the run at larger radii: a checkpoint near (not on) the locus shows
    slope 0 below its distance δ from it and the true slope above, and the upper
    plateau is the locus' order. Returns ``(i, j)`` (half open) or ``None`` when no run
    has ``min_width`` finite slopes.
    """
    best = None
    n = len(slopes)
    for i in range(n):
        if not np.isfinite(slopes[i]):
            continue
        lo = hi = slopes[i]
        j = i + 1
        while j < n and np.isfinite(slopes[j]):
            lo, hi = min(lo, slopes[j]), max(hi, slopes[j])
            if hi - lo > tol:
                break
            j += 1
        width = j - i
        if width >= min_width and (best is None or width >= best[1] - best[0]):
            best = (i, j)
    return best


def flat_rate(radii: np.ndarray) -> RateRead:
    """The read of a curve that is 0 at every radius (order ∞)."""
    radii = np.asarray(radii, dtype=float)
    return RateRead(True, math.inf, math.nan, 0.0, None, np.full(len(radii) - 1, np.nan))


def read_rate(
    radii: np.ndarray,
    g: np.ndarray,
    g_ref: float,
    *,
    eps_flat: float,
    floor: float,
    options: RateOptions,
) -> RateRead:
    """Read the order of one rate curve ``g`` (shape ``(R,)``) on increasing ``radii``.

    ``g_ref`` (units of g) is the reference directional Fisher of random directions in
    the same tensors; ``eps_flat`` and ``floor`` are relative to it.
    """
    radii = np.asarray(radii, dtype=float)
    g = np.asarray(g, dtype=float)
    slopes = local_slopes(radii, g)
    if not np.all(np.isfinite(g)):
        return RateRead(False, math.nan, math.nan, math.nan, None, slopes)
    if g_ref > 0 and np.max(np.abs(g)) <= eps_flat * g_ref:
        return RateRead(True, math.inf, math.nan, 0.0, None, slopes)
    # Slopes touching a point at the rounding floor measure the floor, not the rate.
    at_floor = g <= floor * g_ref
    usable = slopes.copy()
    usable[at_floor[:-1] | at_floor[1:]] = np.nan
    found = scaling_window(usable, options.slope_tol, options.min_width)
    if found is None:
        return RateRead(False, math.nan, math.nan, math.nan, None, slopes)
    regimes = two_regimes(radii, g, usable, g_ref, options)
    if regimes is not None and regimes[4] <= options.near_dead:
        found = regimes[1]
    i, j = found
    slope, _ = _fit(radii, g, found)
    order = 1.0 + slope / 2.0
    spread = float(np.max(np.abs(1.0 + usable[i:j] / 2.0 - order)))
    window = (float(radii[i]), float(radii[j]))
    if regimes is None:
        return RateRead(False, order, slope, spread, window, slopes)
    lower, upper, lower_slope, upper_slope, level, crossover = regimes
    return RateRead(
        False, order, slope, spread, window, slopes, lower_slope, upper_slope, level, crossover
    )


def _fit(radii: np.ndarray, g: np.ndarray, run: tuple[int, int]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``log g`` on ``log t`` over the radii of the
    slopes ``run`` (half open: radii ``i … j``)."""
    i, j = run
    slope, intercept = np.polyfit(np.log(radii[i : j + 1]), np.log(g[i : j + 1]), 1)
    return float(slope), float(intercept)


def two_regimes(radii: np.ndarray, g: np.ndarray, usable: np.ndarray, g_ref: float, options):
    """``(lower run, upper run, lower slope, upper slope, lower level / g_ref, r*)`` of a
    curve with a lower plateau (|slope| ≤ ``zero_slope``) and, at larger radii, an upper one
    (slope ≥ 1), each ``min_width`` wide; ``None`` when either is missing. r* is where the
    two fitted lines meet."""
    near_zero = np.where(np.abs(usable) <= options.zero_slope, usable, np.nan)
    lower = scaling_window(near_zero, options.slope_tol, options.min_width)
    if lower is None:
        return None
    above = np.full_like(usable, np.nan)
    above[lower[1] :] = usable[lower[1] :]
    above[above < 1.0] = np.nan
    upper = scaling_window(above, options.slope_tol, options.min_width)
    if upper is None:
        return None
    s0, a0 = _fit(radii, g, lower)
    s1, a1 = _fit(radii, g, upper)
    level = float(np.exp(np.mean(np.log(g[lower[0] : lower[1] + 1]))))
    level = level / g_ref if g_ref > 0 else math.inf
    crossover = float(np.exp((a0 - a1) / (s1 - s0)))
    return lower, upper, s0, s1, level, crossover
