"""Second-order correctability ρ: does a straight ray follow a curved gauge orbit?"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.func import jvp, vjp

from .fisher import Batch, FunctionalModel
from .likelihood import Likelihood


def second_derivative(fmodel: FunctionalModel, batch: Batch, u: Mapping[str, torch.Tensor]):
    """``(f(θ), D²f(θ)[u, u])`` at the base by forward-over-forward JVP."""
    point = {k: fmodel.params[k] for k in u}

    def first(p):
        return jvp(lambda q: fmodel(q, batch), (p,), (dict(u),))[1]

    y = fmodel(point, batch)
    d2 = jvp(first, (point,), (dict(u),))[1]
    return y, d2


def correctability(
    fmodel: FunctionalModel,
    lik: Likelihood,
    batch: Batch,
    u: Mapping[str, torch.Tensor],
    *,
    g_ref: float,
    eps_flat: float,
    maxiter: int = 200,
    rtol: float = 1e-12,
    rho_tiny: float = 1e-10,
    stall: float = 1e-3,
    stall_window: int = 10,
    stall_floor: float = 0.5,
) -> float:
    """``ρ = min_w ‖M(J w + D²f[u,u])‖ / ‖M D²f[u,u]‖`` on one probe batch.

    ``w`` ranges over the entries ``u`` moves (its nonzero entries): a symmetry's orbit
    through the base moves the entries its tangent moves (a unit's rescaling, the
    attention ``W_Q A, W_K A^{-T}`` orbit), so its second-order departure is corrected
    there; letting ``w`` range over a whole large network would make ``J`` onto the probe
    outputs and every ρ zero, and over whole tensors, near-null directions of ``J`` (other
    units) slow CGLS without changing the decision. ``M`` is the likelihood's square root
    metric at the base, so ρ is measured in the Fisher norm. Solved by CGLS on JVP/VJP products.
    CGLS stops at ``maxiter``, at gradient ratio ``rtol``, once ρ ≤ ``rho_tiny``, or when
    ρ ≥ ``stall_floor`` fell by less than the fraction ``stall`` over the last
    ``stall_window`` iterations (a gauge's ρ can plateau far below that, then drop).
    ρ ≈ 0: the ray's second-order departure is a first-order move, so the direction
    is tangent to a curved orbit of constant function (gauge). ρ of order 1: genuine.
    Returns NaN where ``D²f[u,u]`` vanishes (per sample, ``‖M D²f‖² ≤ eps_flat · g_ref``):
    the ray then leaves the locus at third order or later, which a curved orbit
    cannot do, so there is nothing to correct.
    """
    point = {k: fmodel.params[k] for k in u}
    y, d2 = second_derivative(fmodel, batch, u)
    b = lik.whiten(y, d2)
    n = b.shape[0]
    b_sq = float((b * b).sum())
    if not math.isfinite(b_sq) or b_sq / n <= eps_flat * g_ref:
        return math.nan

    mask = {k: (v != 0).to(v.dtype) for k, v in u.items()}

    def apply(w):
        w = {k: w[k] * mask[k] for k in w}
        return lik.whiten(y, jvp(lambda q: fmodel(q, batch), (point,), (w,))[1])

    _, pull_f = vjp(lambda q: fmodel(q, batch), point)
    _, pull_m = vjp(lambda v: lik.whiten(y, v), torch.zeros_like(y))

    def apply_t(r):
        grads = pull_f(pull_m(r)[0])[0]
        return {k: grads[k] * mask[k] for k in grads}

    def dot(a, c):
        return sum((a[k] * c[k]).sum() for k in a)

    # CGLS for min ‖A w − c‖ with c = −b.
    w = {k: torch.zeros_like(v) for k, v in point.items()}
    r = -b
    s = apply_t(r)
    p = {k: v.clone() for k, v in s.items()}
    gamma = dot(s, s)
    gamma0 = gamma
    history = [1.0]  # ‖r_i‖ / ‖b‖: the relative residual after each iteration
    for _ in range(maxiter):
        if gamma <= rtol**2 * gamma0 or gamma == 0 or history[-1] <= rho_tiny:
            break
        # Stalled at ρ of order 1: a genuine departure plateaus within a few iterations,
        # and CGLS's residual never increases, so what is left cannot change the decision.
        stalled = len(history) > stall_window and (
            history[-1] > (1 - stall) * history[-stall_window]
        )
        if stalled and history[-1] >= stall_floor:
            break
        q = apply(p)
        alpha = gamma / (q * q).sum()
        w = {k: w[k] + alpha * p[k] for k in w}
        r = r - alpha * q
        history.append(float(torch.sqrt((r * r).sum() / b_sq)))
        s = apply_t(r)
        gamma_new = dot(s, s)
        beta = gamma_new / gamma
        p = {k: s[k] + beta * p[k] for k in p}
        gamma = gamma_new
    residual = apply(w) + b
    return float(torch.sqrt((residual * residual).sum() / b_sq))
