"""Second-order correctability ρ: does a straight ray follow a curved gauge orbit?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.func import jvp, vjp, vmap

from .fisher import Batch, FunctionalModel
from .likelihood import Likelihood


@dataclass(frozen=True)
class RhoSolver:
    """How ρ is solved; the options of :func:`correctability_many`, which documents them."""

    maxiter: int = 200
    rtol: float = 1e-12
    rho_tiny: float = 1e-10
    stall: float = 1e-3
    stall_window: int = 10
    stall_floor: float = 0.5
    explicit_max: int = 128
    confirm_above: float = math.inf
    confirm_max: int = 1024


def correctability(
    fmodel: FunctionalModel,
    lik: Likelihood,
    batch: Batch,
    u: Mapping[str, torch.Tensor],
    *,
    g_ref: float,
    eps_flat: float,
    **options,
) -> float:
    """``ρ = min_w ‖M(J w + D²f[u,u])‖ / ‖M D²f[u,u]‖`` on one probe batch.

    ``w`` ranges over the entries ``u`` moves (its nonzero entries): a symmetry's orbit
    through the base moves the entries its tangent moves (a unit's rescaling, the
    attention ``W_Q A, W_K A^{-T}`` orbit), so its second-order departure is corrected
    there; letting ``w`` range over a whole large network would make ``J`` onto the probe
    outputs and every ρ zero, and over whole tensors, near-null directions of ``J`` (other
    units) slow CGLS without changing the decision. ``M`` is the likelihood's square root
    metric at the base, so ρ is measured in the Fisher norm. Solved by CGLS on JVP/VJP
    products (:func:`correctability_many`, whose stopping options ``options`` are).
    ρ ≈ 0: the ray's second-order departure is a first-order move, so the direction
    is tangent to a curved orbit of constant function (gauge). ρ of order 1: genuine.
    Returns NaN where ``D²f[u,u]`` vanishes (per sample, ``‖M D²f‖² ≤ eps_flat · g_ref``):
    the ray then leaves the locus at third order or later, which a curved orbit
    cannot do, so there is nothing to correct.
    """
    (rho,) = correctability_many(fmodel, lik, batch, [u], g_ref=g_ref, eps_flat=eps_flat, **options)
    return rho


def correctability_many(
    fmodel: FunctionalModel,
    lik: Likelihood,
    batch: Batch,
    vectors: Sequence[Mapping[str, torch.Tensor]],
    *,
    g_ref: float,
    eps_flat: float,
    chunk: int = 8,
    **options,
) -> list[float]:
    """ρ of :func:`correctability` for each of ``vectors`` (all over the same tensors),
    ``chunk`` directions at a time. ``options`` are the fields of :class:`RhoSolver`
    (``maxiter`` 200, ``rtol`` 1e-12, ``rho_tiny`` 1e-10, ``stall`` 1e-3,
    ``stall_window`` 10, ``stall_floor`` 0.5, ``explicit_max`` 128, ``confirm_above`` ∞,
    ``confirm_max`` 1024).

    A direction that moves at most ``explicit_max`` entries gets the exact minimum: the
    Jacobian's columns on those entries by one vmapped JVP each, then least squares by SVD
    (singular values below ``max(m, n)·eps·s_max`` count as zero; ρ is then exact to
    rounding, no iteration). Larger ones run CGLS on JVP/VJP products, vmapped side by side;
    where CGLS ends above ``confirm_above`` (it stalled or ran out of iterations: on an
    ill-conditioned orbit, e.g. the pseudo-orthogonal symmetry of a z² network, a gauge's
    ρ can sit above 0.5 for hundreds of iterations) and the direction moves at most
    ``confirm_max`` entries, the exact minimum replaces it. CGLS's ρ is an achieved
    residual, an upper bound, so only a "not a gauge" answer needs confirming.

    Each direction's CGLS stops on its own: at ``maxiter``, at gradient ratio ``rtol``,
    once its ρ ≤ ``rho_tiny``, or when its ρ ≥ ``stall_floor`` fell by less than the
    fraction ``stall`` over the last ``stall_window`` iterations (a gauge's ρ can plateau
    far below that, then drop); a stopped direction's iterate is frozen while the others
    go on, so each ρ is what a run of its own gives.
    """
    solver = RhoSolver(**options)
    if not vectors:
        return []
    keys = list(vectors[0])
    if any(list(v) != keys for v in vectors):
        raise ValueError("correctability_many: every vector must name the same tensors.")
    out: list[float] = []
    for start in range(0, len(vectors), chunk):
        part = vectors[start : start + chunk]
        stacked = {k: torch.stack([v[k] for v in part]) for k in keys}
        out += _cgls_rho(fmodel, lik, batch, stacked, g_ref, eps_flat, solver)
    return out


def _cgls_rho(fmodel, lik, batch, u, g_ref, eps_flat, solver: RhoSolver) -> list[float]:
    """``min ‖A w + b‖ / ‖b‖`` per direction, explicitly or by CGLS; ``u[k]`` has shape
    ``(D, *param.shape)``."""
    point = {k: fmodel.params[k] for k in u}

    def f(q):
        return fmodel(q, batch)

    def d2_of(v):
        return jvp(lambda p: jvp(f, (p,), (v,))[1], (point,), (v,))[1]

    y = f(point)
    b = vmap(lambda d2: lik.whiten(y, d2))(vmap(d2_of)(u))
    n, count = y.shape[0], b.shape[0]

    def total(t):
        return t.reshape(count, -1).sum(dim=1)

    b_sq = total(b * b)
    valid = torch.isfinite(b_sq) & (b_sq / n > eps_flat * g_ref)
    if not bool(valid.any()):
        return [math.nan] * count
    moved = sum(total((v != 0).to(torch.int64)) for v in u.values())
    explicit = valid & (moved <= solver.explicit_max)
    exact = {
        i: _explicit_rho(f, point, lik, y, b[i], {k: v[i] for k, v in u.items()})
        for i in explicit.nonzero().flatten().tolist()
    }
    iterate = valid & ~explicit
    if not bool(iterate.any()):
        return [exact.get(i, math.nan) for i in range(count)]
    mask = {k: (v != 0).to(v.dtype) for k, v in u.items()}

    def apply(w):
        w = {k: w[k] * mask[k] for k in w}
        return vmap(lambda t: lik.whiten(y, jvp(f, (point,), (t,))[1]))(w)

    _, pull_f = vjp(f, point)
    _, pull_m = vjp(lambda v: lik.whiten(y, v), torch.zeros_like(y))

    def apply_t(r):
        grads = vmap(lambda c: pull_f(pull_m(c)[0])[0])(r)
        return {k: grads[k] * mask[k] for k in grads}

    def dot(a, c):
        return sum(total(a[k] * c[k]) for k in a)

    def per_direction(scalars, like):
        return scalars.reshape(-1, *([1] * (like.ndim - 1)))

    w = {k: torch.zeros_like(v) for k, v in u.items()}
    r = -b
    s = apply_t(r)
    p = {k: v.clone() for k, v in s.items()}
    gamma = dot(s, s)
    gamma0 = gamma
    # ‖r_i‖ / ‖b‖ per direction after each iteration; invalid directions never run.
    history = [torch.ones_like(b_sq)]
    active = iterate.clone()
    safe_b_sq = torch.where(iterate, b_sq, torch.ones_like(b_sq))
    for _ in range(solver.maxiter):
        done = (gamma <= solver.rtol**2 * gamma0) | (gamma == 0) | (history[-1] <= solver.rho_tiny)
        if len(history) > solver.stall_window:
            # Stalled at ρ of order 1: a genuine departure plateaus within a few
            # iterations, and CGLS's residual never rises, so the rest cannot change
            # the decision.
            stalled = history[-1] > (1 - solver.stall) * history[-solver.stall_window]
            done |= stalled & (history[-1] >= solver.stall_floor)
        active &= ~done
        if not bool(active.any()):
            break
        q = apply(p)
        qq = total(q * q)
        alpha = torch.where(active, gamma / torch.where(active, qq, torch.ones_like(qq)), 0.0)
        w = {k: w[k] + per_direction(alpha, p[k]) * p[k] for k in w}
        r = r - per_direction(alpha, q) * q
        history.append(torch.where(active, torch.sqrt(total(r * r) / safe_b_sq), history[-1]))
        s = apply_t(r)
        gamma_new = dot(s, s)
        beta = torch.where(
            active, gamma_new / torch.where(active, gamma, torch.ones_like(gamma)), 0.0
        )
        p = {
            k: torch.where(
                per_direction(active, s[k]), s[k] + per_direction(beta, p[k]) * p[k], p[k]
            )
            for k in p
        }
        gamma = torch.where(active, gamma_new, gamma)
    residual = apply(w) + b
    rho = torch.sqrt(total(residual * residual) / safe_b_sq)
    values = rho.tolist()
    confirm = iterate & (rho > solver.confirm_above) & (moved <= solver.confirm_max)
    for i in confirm.nonzero().flatten().tolist():
        exact[i] = _explicit_rho(f, point, lik, y, b[i], {k: v[i] for k, v in u.items()})
    return [
        exact[i] if i in exact else values[i] if ok else math.nan
        for i, ok in enumerate(iterate.tolist())
    ]


def _explicit_rho(f, point, lik, y, b, u, budget: int = 1 << 26) -> float:
    """``min_w ‖A w + b‖ / ‖b‖`` with ``A`` the whitened Jacobian on ``u``'s nonzero entries,
    formed column by column (vmapped one-hot JVPs, ``budget`` bytes of tangents per call)
    and solved by SVD."""
    keys = list(u)
    where = [torch.nonzero(u[k].reshape(-1)).flatten().cpu() for k in keys]  # bookkeeping
    key_of = torch.cat([torch.full((len(ix),), j) for j, ix in enumerate(where)])
    flat_of = torch.cat(where)
    numel = sum(point[k].numel() for k in keys) * point[keys[0]].element_size()
    per_call = max(1, budget // numel)

    def column(tangent):
        return lik.whiten(y, jvp(f, (point,), (tangent,))[1]).reshape(-1)

    columns = []
    for start in range(0, len(flat_of), per_call):
        rows = torch.arange(start, min(start + per_call, len(flat_of)))
        tangents = {}
        for j, k in enumerate(keys):
            t = torch.zeros(
                len(rows), point[k].numel(), dtype=point[k].dtype, device=point[k].device
            )
            mine = rows[key_of[rows] == j]
            t[(mine - start).to(t.device), flat_of[mine].to(t.device)] = 1.0
            tangents[k] = t.reshape(len(rows), *point[k].shape)
        columns.append(vmap(column)(tangents))
    a = torch.cat(columns).T  # (outputs, moved entries)
    rhs = b.reshape(-1)
    left, sing, _ = torch.linalg.svd(a, full_matrices=False)
    tol = sing.max() * max(a.shape) * torch.finfo(a.dtype).eps
    basis = left[:, sing > tol]
    residual = rhs - basis @ (basis.T @ rhs)
    return float(residual.norm() / rhs.norm())
