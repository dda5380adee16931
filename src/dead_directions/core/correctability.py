"""Second-order correctability ρ: does a straight ray follow a curved gauge orbit?"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.func import jvp, vjp, vmap

from dead_directions.core.fisher import Batch, FunctionalModel
from dead_directions.core.likelihood import Likelihood

# The correction space of ρ: the entries u moves by more than this fraction of its largest
# entry (METHOD §3 rule 2). A symmetry's curvature acts on the parameters its orbit moves,
# so the space is where u is not negligible, not where it is exactly nonzero: dense noise of
# relative size ≤ 1e-10 (far below the fraction) then changes nothing, while an orbit entry
# smaller than the fraction contributes at most about the fraction to ρ, far below
# rho_gauge (1e-6). Letting w range over every parameter instead makes ρ ≈ 0 for genuine
# singularities of wide networks (other units absorb the defect approximately).
CORRECTION_FRACTION = 1e-8


def correction_mask(
    u: Mapping[str, torch.Tensor], fraction: float = CORRECTION_FRACTION
) -> dict[str, torch.Tensor]:
    """The correction space of one direction ``u`` (tensors of the parameters' shapes):
    boolean masks of the entries with ``|u_i| > fraction · max_j |u_j|`` (max over every
    tensor of ``u``)."""
    largest = max(float(v.abs().max()) for v in u.values())
    return {k: v.abs() > fraction * largest for k, v in u.items()}


def _stacked_masks(u: Mapping[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """:func:`correction_mask` per direction of stacked vectors ``u[k]`` ``(D, *shape)``."""
    count = next(iter(u.values())).shape[0]
    largest = torch.stack([v.reshape(count, -1).abs().amax(dim=1) for v in u.values()]).amax(0)
    return {
        k: v.abs() > fraction * largest.reshape(-1, *([1] * (v.ndim - 1))) for k, v in u.items()
    }


def output_constraints(lik: Likelihood, y: torch.Tensor) -> int:
    """Independent equations the whitened outputs ``y`` give the correction's least
    squares: every output entry for the Gaussian head, ``classes − 1`` per position for
    the categorical (its metric has the all-ones vector as kernel)."""
    if lik.name == "categorical":
        return y.numel() // y.shape[-1] * max(y.shape[-1] - 1, 0)
    return y.numel()


@dataclass(frozen=True)
class RhoFit:
    """ρ of one direction and how it was obtained.

    ``rho``: ``min_w ‖M(J w + D²f[u,u])‖ / ‖M D²f[u,u]‖`` (dimensionless; NaN when not
    solved). ``status``: ``"solved"`` (exact least squares, or CGLS converged, or CGLS
    reached ρ ≤ ``rho_tiny``: an achieved residual is an upper bound, so a gauge verdict
    is then decided), ``"not-converged"`` (CGLS stopped above ``rho_gauge`` without
    converging and the exact solve was out of budget), ``"under-determined"`` (fewer than
    ``min_constraints_ratio`` equations per correction parameter), ``"ill-conditioned"``
    (ρ ≤ ``rho_gauge`` only through singular values below ``√eps · s_max``) or
    ``"no-departure"`` (``D²f[u,u]`` vanishes: nothing to correct).
    ``method``: ``"exact"`` or ``"cgls"`` (``""`` when not solved). ``n_parameters``: size
    of the correction space; ``n_constraints``: equations of the fit data.
    ``correction``: the fitted ``w`` (tensors of the parameters' shapes, zero outside the
    correction space), for the held-out check; ``None`` when not solved. ``detail``: the
    reason in words where the status is not ``"solved"``.

    ``support_magnitude``: ``‖M J u‖² / (s_max² ‖u‖²)``, the direction's own first-order
    change against the largest a unit vector of the correction space can make (``s_max``
    the top singular value of ``M J`` there: exact by SVD, a lower bound by power
    iteration beside CGLS); NaN when not solved. ρ presumes the ray starts tangent to an
    orbit of constant function (``J u = 0``): a tangent measures 0 up to rounding and
    noise. A direction whose parameters are all nearly dead (a unit δ from its node
    death, along its own weights) has a small ``J u`` only because every column of ``J``
    on them is small: against its own correction space it is as live as any (≥ 2e-3
    measured), while near the locus the activation is linear and a correction of size
    ≈ 1/δ takes ρ to ≈ 0 — it is no tangent, and the read does not call it a gauge.
    """

    rho: float
    status: str
    method: str
    n_parameters: int
    n_constraints: int
    correction: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    detail: str = ""
    support_magnitude: float = math.nan


@dataclass(frozen=True)
class RhoSolver:
    """How ρ is solved; the options of :func:`rho_fits`, which documents them."""

    maxiter: int = 200
    rtol: float = 1e-12
    rho_tiny: float = 1e-10
    stall: float = 1e-3
    stall_window: int = 10
    stall_floor: float = 0.5
    explicit_max: int = 128
    confirm_above: float = math.inf
    confirm_max: int = 1024
    support_fraction: float = CORRECTION_FRACTION
    min_constraints_ratio: float = 2.0
    rho_gauge: float = math.nan
    power_iterations: int = 20


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
    """``ρ = min_w ‖M(J w + D²f[u,u])‖ / ‖M D²f[u,u]‖`` on one probe batch (NaN where not
    solved; :func:`rho_fits` gives the status and the correction).

    ``w`` ranges over the correction space (:func:`correction_mask`: the entries ``u``
    moves by more than ``support_fraction`` of its largest entry): a symmetry's orbit
    through the base moves the entries its tangent moves (a unit's rescaling, the
    attention ``W_Q A, W_K A^{-T}`` orbit), so its second-order departure is corrected
    there; letting ``w`` range over a whole large network would make ``J`` onto the probe
    outputs and every ρ zero. ``M`` is the likelihood's square root metric at the base, so
    ρ is measured in the Fisher norm. ρ ≈ 0: the ray's second-order departure is a
    first-order move, so the direction is tangent to a curved orbit of constant function
    (gauge). ρ of order 1: genuine. NaN where ``D²f[u,u]`` vanishes (per sample,
    ``‖M D²f‖² ≤ eps_flat · g_ref``): the ray then leaves the locus at third order or
    later, which a curved orbit cannot do, so there is nothing to correct.
    """
    (fit,) = rho_fits(fmodel, lik, batch, [u], g_ref=g_ref, eps_flat=eps_flat, **options)
    return fit.rho


def rho_fits(
    fmodel: FunctionalModel,
    lik: Likelihood,
    batch: Batch,
    vectors: Sequence[Mapping[str, torch.Tensor]],
    *,
    g_ref: float,
    eps_flat: float,
    chunk: int = 8,
    **options,
) -> list[RhoFit]:
    """ρ with its status for each of ``vectors`` (all over the same tensors), fitted on
    ``batch``, ``chunk`` directions at a time. ``options`` are the fields of
    :class:`RhoSolver` (``maxiter`` 200, ``rtol`` 1e-12, ``rho_tiny`` 1e-10, ``stall``
    1e-3, ``stall_window`` 10, ``stall_floor`` 0.5, ``explicit_max`` 128,
    ``confirm_above`` ∞, ``confirm_max`` 1024, ``support_fraction`` 1e-8,
    ``min_constraints_ratio`` 2, ``rho_gauge`` NaN, ``power_iterations`` 20: for the top
    singular value beside CGLS, see ``RhoFit.support_magnitude``).

    Determinacy first: a least squares with fewer equations than unknowns fits anything
    (ρ ≈ 1e-15 for a genuine singular direction with 130 unknowns and 8 equations), so a
    direction whose correction space has more than ``n_constraints /
    min_constraints_ratio`` entries is not solved (status ``"under-determined"``).

    A direction whose correction space has at most ``explicit_max`` entries gets the exact
    minimum: the Jacobian's columns on those entries by one vmapped JVP each, then least
    squares by SVD (singular values below ``max(m, n)·eps·s_max`` count as zero; ρ is then
    exact to rounding). Where that ρ is at most ``rho_gauge`` but the same solve keeping
    only singular values above ``√eps · s_max`` leaves ρ above it, the verdict rests on
    directions the data barely determine: status ``"ill-conditioned"``. Larger ones run
    CGLS on JVP/VJP products, vmapped side by side; where CGLS ends above ``confirm_above``
    (the read passes ``rho_gauge``) without converging (it stalled or ran out of
    iterations: on an ill-conditioned orbit, e.g. the pseudo-orthogonal symmetry of a z²
    network, a gauge's ρ can sit above 0.5 for hundreds of iterations) and the correction
    space has at most ``confirm_max`` entries, the exact minimum replaces it; beyond that
    budget the status is ``"not-converged"``. CGLS's ρ is an achieved residual, an upper
    bound, so only a "not a gauge" answer needs confirming.

    Each direction's CGLS stops on its own: at ``maxiter``, at gradient ratio ``rtol``
    (converged), once its ρ ≤ ``rho_tiny`` (decided), or when its ρ ≥ ``stall_floor`` fell
    by less than the fraction ``stall`` over the last ``stall_window`` iterations (a
    gauge's ρ can plateau far below that, then drop); a stopped direction's iterate is
    frozen while the others go on, so each ρ is what a run of its own gives.
    """
    solver = RhoSolver(**options)
    if not vectors:
        return []
    keys = list(vectors[0])
    if any(list(v) != keys for v in vectors):
        raise ValueError("rho_fits: every vector must name the same tensors.")
    out: list[RhoFit] = []
    for start in range(0, len(vectors), chunk):
        part = vectors[start : start + chunk]
        stacked = {k: torch.stack([v[k] for v in part]) for k in keys}
        out += _solve(fmodel, lik, batch, stacked, g_ref, eps_flat, solver)
    return out


def _solve(fmodel, lik, batch, u, g_ref, eps_flat, solver: RhoSolver) -> list[RhoFit]:
    """:func:`rho_fits` for stacked directions ``u[k]`` of shape ``(D, *param.shape)``."""
    point = {k: fmodel.params[k] for k in u}

    def f(q):
        return fmodel(q, batch)

    def d2_of(v):
        return jvp(lambda p: jvp(f, (p,), (v,))[1], (point,), (v,))[1]

    y = f(point)
    b = vmap(lambda d2: lik.whiten(y, d2))(vmap(d2_of)(u))
    n, count = y.shape[0], b.shape[0]
    n_constraints = output_constraints(lik, y)

    def total(t):
        return t.reshape(count, -1).sum(dim=1)

    b_sq = total(b * b)
    # The ray's own first-order change, for support_magnitude (per unit ‖u‖²).
    ju = vmap(lambda v: lik.whiten(y, jvp(f, (point,), (v,))[1]))(u)
    first_sq = (total(ju * ju) / sum(total(v * v) for v in u.values())).tolist()
    valid = torch.isfinite(b_sq) & (b_sq / n > eps_flat * g_ref)
    masks = _stacked_masks(u, solver.support_fraction)
    moved = sum(total(m.to(torch.int64)) for m in masks.values())
    sizes = moved.tolist()
    fits: dict[int, RhoFit] = {}
    for i in range(count):
        if not bool(valid[i]):
            fits[i] = RhoFit(
                math.nan,
                "no-departure",
                "",
                sizes[i],
                n_constraints,
                detail="D²f[u,u] vanishes on the fit data: nothing to correct",
            )
        elif n_constraints < solver.min_constraints_ratio * sizes[i]:
            fits[i] = RhoFit(
                math.nan,
                "under-determined",
                "",
                sizes[i],
                n_constraints,
                detail=(
                    f"under-determined: {n_constraints} output constraints for {sizes[i]} "
                    f"correction parameters (need ≥ {solver.min_constraints_ratio:g} per "
                    "parameter); give more probe inputs"
                ),
            )
    solvable = torch.tensor([i not in fits for i in range(count)], device=moved.device)
    explicit = solvable & (moved <= solver.explicit_max)

    def exact(i):
        mask = {k: m[i] for k, m in masks.items()}
        fit, top = _explicit_fit(f, point, lik, y, b[i], mask, solver, n_constraints)
        return replace(fit, support_magnitude=first_sq[i] / top**2 if top > 0 else math.nan)

    for i in explicit.nonzero().flatten().tolist():
        fits[i] = exact(i)
    iterate = solvable & ~explicit
    if not bool(iterate.any()):
        return [fits[i] for i in range(count)]
    mask = {k: m.to(v.dtype) for (k, m), v in zip(masks.items(), u.values(), strict=True)}

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
    converged = torch.zeros_like(iterate)
    safe_b_sq = torch.where(iterate, b_sq, torch.ones_like(b_sq))
    for _ in range(solver.maxiter):
        solved = (gamma <= solver.rtol**2 * gamma0) | (gamma == 0)
        solved |= history[-1] <= solver.rho_tiny
        converged |= active & solved
        done = solved
        if len(history) > solver.stall_window:
            # Stalled at ρ of order 1: usually a genuine departure, but not always (an
            # ill-conditioned orbit can plateau, then drop), so a stall is not convergence.
            stalled = history[-1] > (1 - solver.stall) * history[-solver.stall_window]
            done = done | (stalled & (history[-1] >= solver.stall_floor))
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
    # s_max² of M J on each correction space by power iteration from Jᵀb (overlaps the top
    # singular vectors wherever b is in J's range): a lower bound, so support_magnitude is
    # if anything too large — the side that keeps a near-dead direction from reading gauge;
    # exact tangents measure ≤ 2e-19 (benchmarks/bench_rho.py), far below it either way.
    v = apply_t(-b)
    top_sq = torch.zeros_like(b_sq)
    for _ in range(solver.power_iterations):
        norm = torch.sqrt(dot(v, v))
        v = {k: t / per_direction(torch.where(norm > 0, norm, 1.0), t) for k, t in v.items()}
        jv = apply(v)
        top_sq = total(jv * jv)
        v = apply_t(jv)
    support = [first_sq[i] / top if top > 0 else math.nan for i, top in enumerate(top_sq.tolist())]
    for i in iterate.nonzero().flatten().tolist():
        decided = bool(converged[i]) or values[i] <= solver.confirm_above
        if not decided and sizes[i] <= solver.confirm_max:
            fits[i] = exact(i)
        else:
            fits[i] = RhoFit(
                values[i],
                "solved" if decided else "not-converged",
                "cgls",
                sizes[i],
                n_constraints,
                correction={k: v[i] for k, v in w.items()},
                support_magnitude=support[i],
                detail=""
                if decided
                else (
                    f"ρ's CGLS stopped at ρ = {values[i]:.3g} without converging and its "
                    f"{sizes[i]} correction parameters exceed confirm_max = "
                    f"{solver.confirm_max} for the exact solve"
                ),
            )
    return [fits[i] for i in range(count)]


def _explicit_fit(
    f, point, lik, y, b, mask, solver: RhoSolver, n_constraints: int, budget: int = 1 << 26
) -> tuple[RhoFit, float]:
    """``min_w ‖A w + b‖ / ‖b‖`` with ``A`` the whitened Jacobian on the correction space
    ``mask`` (booleans of the parameters' shapes), formed column by column (vmapped
    one-hot JVPs, ``budget`` bytes of tangents per call) and solved by SVD. Returns the
    fit and ``A``'s largest singular value."""
    keys = list(mask)
    where = [torch.nonzero(mask[k].reshape(-1)).flatten().cpu() for k in keys]  # bookkeeping
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
    a = torch.cat(columns).T  # (outputs, correction parameters)
    rhs = b.reshape(-1)
    left, sing, right = torch.linalg.svd(a, full_matrices=False)
    top = sing.max() if sing.numel() else torch.zeros((), dtype=a.dtype)
    eps = torch.finfo(a.dtype).eps

    def solve(tol):
        keep = sing > tol
        coeffs = left[:, keep].T @ rhs
        residual = rhs - left[:, keep] @ coeffs
        rho = float(residual.norm() / rhs.norm())
        return rho, right[keep].T @ (-coeffs / sing[keep])

    rho, solution = solve(top * max(a.shape) * eps)
    w = {k: torch.zeros_like(point[k]) for k in keys}
    for j, k in enumerate(keys):
        w[k].reshape(-1)[flat_of[key_of == j].to(w[k].device)] = solution[key_of == j].to(
            w[k].dtype
        )
    status, detail = "solved", ""
    if math.isfinite(solver.rho_gauge) and rho <= solver.rho_gauge:
        loose, _ = solve(top * math.sqrt(eps))
        if loose > solver.rho_gauge:
            status = "ill-conditioned"
            detail = (
                f"ill-conditioned: ρ = {rho:.2g} only with singular values below √eps·s_max "
                f"(ρ = {loose:.2g} without them)"
            )
    return RhoFit(rho, status, "exact", len(flat_of), n_constraints, w, detail), float(top)


def heldout_rho(
    fmodel: FunctionalModel,
    lik: Likelihood,
    batches: Iterable[Batch],
    u: Mapping[str, torch.Tensor],
    correction: Mapping[str, torch.Tensor],
) -> float:
    """``‖M(J w + D²f[u,u])‖ / ‖M D²f[u,u]‖`` over ``batches`` for a correction ``w`` fitted
    elsewhere (the fit part of the probe): whether a curved orbit found on the probe holds
    on inputs the fit never saw. A genuine orbit's correction is a property of the
    architecture and transfers (≈ 0); a fit that only absorbed the probe does not.
    NaN when ``D²f[u,u]`` vanishes on every held-out batch."""
    point = {k: fmodel.params[k] for k in u}
    num = den = 0.0
    for batch in batches:

        def f(q, batch=batch):
            return fmodel(q, batch)

        y, jw = jvp(f, (point,), (dict(correction),))
        d2 = jvp(lambda p, f=f: jvp(f, (p,), (dict(u),))[1], (point,), (dict(u),))[1]
        b = lik.whiten(y, d2)
        r = lik.whiten(y, jw) + b
        num += float((r * r).sum())
        den += float((b * b).sum())
    return math.sqrt(num / den) if den > 0 else math.nan
