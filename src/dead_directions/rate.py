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
    """

    slope_tol: float = 0.1
    min_width: int = 3
    eps_flat: float | None = None
    floor: float | None = None
    dead_magnitude: float = 1e-6


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
    """

    flat: bool
    order: float
    slope: float
    spread: float
    window: tuple[float, float] | None
    local_slopes: np.ndarray


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
    i, j = found
    logt = np.log(radii[i : j + 1])
    logg = np.log(g[i : j + 1])
    slope = float(np.polyfit(logt, logg, 1)[0])
    order = 1.0 + slope / 2.0
    spread = float(np.max(np.abs(1.0 + usable[i:j] / 2.0 - order)))
    return RateRead(False, order, slope, spread, (float(radii[i]), float(radii[j])), slopes)
