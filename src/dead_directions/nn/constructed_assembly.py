"""Assembly cells: small models whose (λ, m) is assembled from read directions (METHOD §6)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from dead_directions.core.assembly import (
    CLOSED_FORMS,
    Assembly,
    Locus,
    assemble,
    crossing,
    independent,
    monomial_sum_lambda,
    normal_crossing_lambda,
    regular_lambda,
    rrr_components,
    rrr_lambda,
)
from dead_directions.core.device import DTYPE
from dead_directions.core.direction import Direction
from dead_directions.core.read import read_many
from dead_directions.nn.constructed import Linear

#: Radii of the assembly reads (17 log-spaced points, 1e-6 … 1e-2): small enough that a
#: live direction's rate stays on its t⁰ plateau although the product structure makes g
#: grow like t² at radii of order one.
ASSEMBLY_RADII = tuple(np.logspace(-6, -2, 17).tolist())


@dataclass(frozen=True, eq=False)
class AssemblyCell:
    """A model, its directions to read, how their loci combine, and the closed-form (λ, m).

    ``directions``: what ``dd.read_many`` reads (each carries its ``base``: a point on the
    locus component it is read at). ``loci``: the declaration handed to ``dd.assemble``
    (every cell declares one: its ``assemble`` is the *structured* value, exact on the
    cells by construction of the declaration). ``closed_form``: ``(λ, m)`` from the
    literature (``reference``). ``(λ, m)`` of the cell comes from the measured orders of
    the reads, assembled — never from the predicted orders. ``true_point``: the deepest
    point of the true set (where the global (λ, m) is attained; None: the model's own
    parameters), where :meth:`blind` reads a basis with no declared structure.
    """

    name: str
    description: str
    model: nn.Module
    inputs: torch.Tensor
    directions: tuple[Direction, ...]
    loci: Locus | None
    closed_form: tuple[Fraction, int]
    reference: str
    likelihood: str = "gaussian"
    radii: tuple[float, ...] = ASSEMBLY_RADII
    true_point: Mapping[str, torch.Tensor] | None = None

    @property
    def d(self) -> int:
        """Number of parameters of the cell's model."""
        return sum(p.numel() for p in self.model.parameters())

    def point(self) -> dict[str, torch.Tensor]:
        """The deepest true point as a full parameter mapping (float64 copies)."""
        params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        if self.true_point is not None:
            params.update({k: torch.as_tensor(v, dtype=DTYPE) for k, v in self.true_point.items()})
        return params

    def blind(self, basis: str = "jacobian", *, seed: int = 0, **options):
        """Blind assembly at the deepest true point: ``blind_assemble`` (see there).

        Returns ``(reads, Assembly)`` with ``Assembly.mode == "blind"``.
        """
        options.setdefault("radii", self.radii)
        return blind_assemble(
            self.model,
            self.inputs,
            self.point(),
            likelihood=self.likelihood,
            basis=basis,
            seed=seed,
            **options,
        )

    def read(self, **options):
        """``dd.read_many`` of the cell's directions (options pass through)."""

        options.setdefault("radii", self.radii)
        return read_many(
            self.model, self.inputs, list(self.directions), likelihood=self.likelihood, **options
        )

    def assemble(self, reads=None, **options) -> Assembly:
        """Read (unless ``reads`` are given) and assemble with the cell's loci."""
        return assemble(self.read(**options) if reads is None else reads, self.loci)


class _ScalarPowers(nn.Module):
    """Scalar parameters ``a1 … an``, all 0, one per entry of ``exponents``."""

    def __init__(self, exponents: tuple[int, ...]):
        super().__init__()
        self.exponents = tuple(exponents)
        for i in range(len(self.exponents)):
            setattr(self, f"a{i + 1}", nn.Parameter(torch.zeros((), dtype=DTYPE)))


class NormalCrossing(_ScalarPowers):
    """``f(x) = (a₁^{p₁} ⋯ a_n^{p_n}) x``, so ``K ∝ Π a_i^{2 p_i}`` around 0."""

    def forward(self, x):
        out = x
        for i, p in enumerate(self.exponents):
            if p:  # a⁰ = 1: the parameter does not enter (and pow's derivative at 0 is NaN)
                out = getattr(self, f"a{i + 1}") ** p * out
        return out


class PowerSum(_ScalarPowers):
    """``f(x) = (a₁^{p₁} x₁, …, a_n^{p_n} x_n)``, so ``K ∝ Σ a_i^{2 p_i}`` around 0."""

    def forward(self, x):
        cols = [getattr(self, f"a{i + 1}") ** p * x[:, i] for i, p in enumerate(self.exponents)]
        return torch.stack(cols, dim=-1)


class ReducedRank(nn.Module):
    """Reduced-rank regression ``f(x) = B A x``: ``A`` is H × M, ``B`` is N × H."""

    def __init__(self, M: int, N: int, H: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(H, M, dtype=DTYPE))
        self.B = nn.Parameter(torch.zeros(N, H, dtype=DTYPE))

    def forward(self, x):
        return x @ self.A.T @ self.B.T


def _unit(name: str) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(1.0, dtype=DTYPE)}


def _offsets(model: nn.Module, point: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base offsets that move the model's parameters to ``point``."""
    params = dict(model.named_parameters())
    return {k: (torch.as_tensor(v, dtype=DTYPE) - params[k].detach()) for k, v in point.items()}


def full_basis(
    model: nn.Module,
    inputs: torch.Tensor,
    point: Mapping[str, torch.Tensor] | None = None,
    *,
    rtol: float = 1e-10,
) -> list[dict[str, torch.Tensor]]:
    """An orthonormal basis of parameter space adapted to the output Jacobian ``J``.

    ``J`` (shape ``(n · out, d)``) is the Jacobian of the outputs on ``inputs`` with
    respect to all ``d`` parameters at ``point`` (default: the model's parameters), built
    column by column with ``vmap`` over ``jvp`` (small models only: it is materialised).
    The basis: the right singular vectors of ``J`` with singular value above
    ``rtol · σ_max`` (the live Fisher eigendirections of the Gaussian head, ``F = JᵀJ/n``,
    largest first), then an orthonormal basis of ``ker J`` ordered as: the null space of
    each tensor's own block of ``J`` (moves of one tensor alone that leave the outputs
    unchanged to first order), then the rest of ``ker J``. Taking vectors from SVDs of
    ``J`` rather than ``eigh(F)`` leaves kernel vectors with ``‖J v‖ ≈ 1e-15 ‖J‖``
    instead of 1e-8, so a dead direction's rate is not masked by a false constant; the
    per-tensor split only chooses the basis inside ``ker J`` (the reads classify every
    vector themselves). Returns ``d`` mappings ``name → tensor`` (parameter shapes).
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    if point:
        params.update({k: torch.as_tensor(v, dtype=DTYPE) for k, v in point.items()})
    names = list(params)
    sizes = [params[k].numel() for k in names]
    d = sum(sizes)

    def f(flat):
        chunks = torch.split(flat, sizes)
        p = {k: c.reshape(params[k].shape) for k, c in zip(names, chunks, strict=True)}
        return functional_call(model, p, (inputs,))

    flat0 = torch.cat([params[k].reshape(-1) for k in names])
    eye = torch.eye(d, dtype=flat0.dtype)
    cols = vmap(lambda e: jvp(f, (flat0,), (e,))[1])(eye)  # (d, n, ...)
    jac = cols.reshape(d, -1).T
    _, sv, vh = torch.linalg.svd(jac, full_matrices=True)
    cutoff = rtol * float(sv.max()) if sv.numel() else 0.0
    rank = int((sv > cutoff).sum())
    vectors = [vh[i] for i in range(rank)]
    kernel = vh[rank:]  # (d − rank, d), orthonormal rows
    # Per-tensor null spaces: vectors supported on one tensor, inside ker J.
    offset = 0
    local = []
    for size in sizes:
        block = jac[:, offset : offset + size]
        _, sb, vb = torch.linalg.svd(block, full_matrices=True)
        r_b = int((sb > cutoff).sum())
        for v in vb[r_b:]:
            full = torch.zeros(d, dtype=flat0.dtype)
            full[offset : offset + size] = v
            local.append(full)
        offset += size
    if local:
        local_m = torch.stack(local)
        vectors.extend(local_m)
        rest = kernel - (kernel @ local_m.T) @ local_m
        _, _, vr = torch.linalg.svd(rest, full_matrices=False)
        n_rest = kernel.shape[0] - len(local)
        vectors.extend(vr[:n_rest])
    else:
        vectors.extend(kernel)
    basis = []
    for v in vectors:
        chunks = torch.split(v, sizes)
        basis.append(
            {k: c.reshape(params[k].shape).clone() for k, c in zip(names, chunks, strict=True)}
        )
    return basis


BASES = ("jacobian", "random")


def random_basis(d: int, seed: int = 0) -> torch.Tensor:
    """A Haar-random orthonormal basis of ℝ^d (rows), seeded: QR of a Gaussian matrix."""
    gen = torch.Generator().manual_seed(seed)
    return _random_orthogonal(d, gen).T


def blind_assemble(
    model: nn.Module,
    inputs: torch.Tensor,
    point: Mapping[str, torch.Tensor] | None = None,
    *,
    likelihood: str = "gaussian",
    basis: str = "jacobian",
    seed: int = 0,
    **options,
):
    """Blind (λ, m): read every direction of a basis at ``point``, assume sum type.

    No structure is declared (METHOD §6): ``d`` orthonormal directions are read at
    ``point`` (default: the model's parameters) and assembled with ``loci=None``, i.e.
    ``λ = Σ_u 1/(2k̂_u)`` (regular ½, gauges 0). This is an estimate: it is exact where K
    is of sum type in the basis (independent monomials read along their axes) and wrong
    elsewhere — at a normal crossing every axis lies inside the zero set (reads flat), and
    a random direction through a crossing reads the order of the product. The error is
    measured against the closed forms by ``compare-llc``.

    ``basis``: ``"jacobian"`` — :func:`full_basis` (live Fisher eigendirections, then the
    per-tensor null spaces, then the rest of the kernel; for ``likelihood="categorical"``
    of the class-centred logits, whose kernel holds the logit shifts) — or ``"random"``
    (a Haar-random orthonormal basis, ``seed``). ``options`` pass to ``dd.read_many``
    (e.g. ``radii``). Small models only: the Jacobian is materialised. Returns
    ``(reads, Assembly)`` with ``Assembly.mode == "blind"``; raises ``ValueError`` for an
    unknown ``basis``.
    """

    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}.")
    params = {k: v.detach() for k, v in model.named_parameters()}
    at = dict(params)
    if point:
        at.update({k: torch.as_tensor(v, dtype=DTYPE) for k, v in point.items()})
    if basis == "jacobian":
        if likelihood == "categorical":
            vectors = _categorical_basis(model, inputs, at)
        else:
            vectors = full_basis(model, inputs, at)
    else:
        names = list(params)
        sizes = [params[k].numel() for k in names]
        rows = random_basis(sum(sizes), seed)
        vectors = [
            {
                k: c.reshape(params[k].shape)
                for k, c in zip(names, torch.split(v, sizes), strict=True)
            }
            for v in rows
        ]
    base = _offsets(model, at)
    dirs = [
        Direction(name=f"{basis}.e{i}", layer="", vector=v, detector=f"blind-{basis}", base=base)
        for i, v in enumerate(vectors)
    ]
    reads = read_many(model, inputs, dirs, likelihood=likelihood, **options)
    return reads, assemble(reads)


_KIND_OF_POWER = {0: "gauge", 1: "regular"}


def _component_cell(
    name: str,
    description: str,
    exponents: tuple[int, ...],
    closed: tuple[Fraction, int],
    inputs: torch.Tensor,
) -> AssemblyCell:
    """A monomial ``K = Π a_i^{2p_i}``: each a_i read at a generic point of {a_i = 0}.

    The point sets every other variable to 1; there ``K ∝ a_i^{2p_i}``, so the read
    measures k_i = p_i. The components {a_i = 0} meet at 0 in a normal crossing.
    """
    model = NormalCrossing(exponents)
    directions, members = [], []
    for i in range(len(exponents)):
        point = {f"a{j + 1}": torch.tensor(0.0 if j == i else 1.0) for j in range(len(exponents))}
        var = f"a{i + 1}"
        vector = _unit(var)
        if exponents[i] == 0:
            # a⁰: the variable does not enter f, so its own tensor gives no reference
            # scale (every g is 0); the zero entry for the next variable puts that
            # variable's tensor into g_ref, against which the read calls it flat.
            vector[f"a{(i + 1) % len(exponents) + 1}"] = torch.tensor(0.0, dtype=DTYPE)
        directions.append(
            Direction(
                name=var,
                layer="",
                vector=vector,
                detector="cell",
                predicted_kind=_KIND_OF_POWER.get(exponents[i], "singular"),
                predicted_order=float(exponents[i]) if exponents[i] else math.inf,
                base=_offsets(model, point),
            )
        )
        members.append(var)
    return AssemblyCell(
        name=name,
        description=description,
        model=model,
        inputs=inputs,
        directions=tuple(directions),
        loci=crossing(*members, name="components"),
        closed_form=closed,
        reference="Watanabe (2009), normal crossings; METHOD §6",
    )


def _random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    return q * torch.sign(torch.diagonal(r))


def _generic_invertible(n: int, gen: torch.Generator) -> torch.Tensor:
    scales = torch.exp(0.3 * torch.randn(n, generator=gen, dtype=DTYPE))
    return _random_orthogonal(n, gen) @ torch.diag(scales) @ _random_orthogonal(n, gen)


def rrr_cell(M: int, N: int, H: int, r: int, *, n_inputs: int = 64, seed: int = 0) -> AssemblyCell:
    """Reduced-rank regression ``y = B A x`` read at every component of its true set.

    True function ``C = Q diag(I_r, 0) P`` (rank r; P, Q random orthogonal). The set
    ``{B A = C}`` has irreducible components indexed by ``(s, t)`` — rank A = r + s,
    rank B = r + t (``dd.assembly.rrr_components``). At a generic point of each (built as
    ``A = G A₀ P``, ``B = Q B₀ G⁻¹`` with canonical ``A₀``, ``B₀`` of those ranks and a
    random invertible G) a full-basis read — the right singular vectors of the output
    Jacobian (``full_basis``) — reads every direction: the transverse ones live (k = 1),
    the tangent ones gauges (flat, or curved with ρ ≈ 0). Declared loci: each component
    is of sum type over its directions (λ_c = #live/2 = codim/2, m_c = 1), and the
    components cross at the true parameter (λ = min_c λ_c, m = #components attaining it).

    How this maps onto Aoyagi & Watanabe (2005): their blow-ups first split off the
    r(M+N−r) live coordinates of the rank-r true matrix (λ(M,N,H,r) = r(M+N−r)/2 +
    λ(M−r, N−r, H−r, 0)), then resolve ``‖B′A′‖²`` in the reduced dimensions, whose zero
    set is the union of the (s, t) components. The assembled value — min over components
    of codim/2, counted with multiplicity — equals their closed form (λ and m) for every
    M, N, H ≤ 8 (``rrr_components`` vs ``rrr_lambda``, tested); this identity is verified,
    not taken from their paper. The cell's (λ, m) comes from the reads: the live count
    of each component is measured, not computed.
    """
    gen = torch.Generator().manual_seed(10_000 * seed + 1000 * M + 100 * N + 10 * H + r)
    model = ReducedRank(M, N, H)
    inputs = torch.randn(n_inputs, M, generator=gen, dtype=DTYPE)
    P, Q = _random_orthogonal(M, gen), _random_orthogonal(N, gen)
    directions: list[Direction] = []
    components = []
    true_point = None
    for s, t, codim in rrr_components(M, N, H, r):
        a0 = torch.zeros(H, M, dtype=DTYPE)
        b0 = torch.zeros(N, H, dtype=DTYPE)
        for i in range(r):
            a0[i, i] = b0[i, i] = 1.0
        for j in range(s):
            a0[r + j, r + j] = 1.0
        for j in range(t):
            b0[r + j, r + s + j] = 1.0
        G = _generic_invertible(H, gen)
        point = {"A": G @ a0 @ P, "B": Q @ b0 @ torch.linalg.inv(G)}
        if true_point is None:
            true_point = point
            with torch.no_grad():
                model.A.copy_(point["A"])
                model.B.copy_(point["B"])
        base = _offsets(model, point)
        names = []
        for j, vec in enumerate(full_basis(model, inputs, point)):
            label = f"s{s}t{t}.e{j}"
            names.append(label)
            directions.append(
                Direction(
                    name=label,
                    layer="",
                    vector=vec,
                    detector="full_basis",
                    base=base,
                    meta={"component": (s, t), "codim": codim},
                )
            )
        components.append(independent(*names, name=f"s={s},t={t}"))
    lam, m = rrr_lambda(M, N, H, r)
    # The deepest true point: A* = [S^½ V_rᵀ; 0], B* = [U_r S^½, 0] from the SVD of
    # C = B A (rank r), on every (s, t) component at once.
    u, sv, vh = torch.linalg.svd(true_point["B"] @ true_point["A"])
    root = torch.sqrt(sv[:r])
    a_star, b_star = torch.zeros(H, M, dtype=DTYPE), torch.zeros(N, H, dtype=DTYPE)
    a_star[:r] = root[:, None] * vh[:r]
    b_star[:, :r] = u[:, :r] * root[None, :]
    return AssemblyCell(
        name=f"rrr-M{M}-N{N}-H{H}-r{r}",
        description=(
            f"reduced-rank regression M={M}, N={N}, H={H}, true rank {r}: full-basis reads "
            f"at a generic point of each of its {len(components)} true-set component(s)"
        ),
        model=model,
        inputs=inputs,
        directions=tuple(directions),
        loci=crossing(*components, name="components"),
        closed_form=(lam, m),
        reference="Aoyagi & Watanabe, Neural Networks 18 (2005) 924–933",
        true_point={"A": a_star, "B": b_star},
    )


def rrr_cells(max_dim: int = 3, *, n_inputs: int = 64, seed: int = 0) -> list[AssemblyCell]:
    """``rrr_cell`` for every M, N, H ≤ ``max_dim`` and true rank r ≤ min(M, N, H)."""
    out = []
    for M, N, H in itertools.product(range(1, max_dim + 1), repeat=3):
        for r in range(min(M, N, H) + 1):
            out.append(rrr_cell(M, N, H, r, n_inputs=n_inputs, seed=seed))
    return out


def assembly_cells(n_inputs: int = 64, seed: int = 0, *, rrr_max: int = 3) -> list[AssemblyCell]:
    """Every assembly cell: normal-form polynomials, regular models, and RRR (M, N, H ≤ 3).

    * ``(ab)^2``, ``(abc)^2``, ``a^2b^4``: monomials ``f = a₁^{p₁}⋯ x``, each variable read
      at a generic point of its own component {a_i = 0}, components crossing
      (= deep linear networks of widths (1,1,1) and (1,1,1,1) at r = 0 for the first two).
    * ``a^2+b^4``: ``f = (a x₁, b² x₂)`` read at 0 along a and b, declared independent.
    * ``regular-linear``: ``f = W x + b`` (3 → 2, d = 8), a full-basis read declared
      independent (a regular model): λ = d/2 = 4.
    * ``softmax-regression``: ``softmax(W x + b)`` (3 → 4, d = 16) under the categorical
      head; its 4 flat gauges (logit shifts) add 0: λ = 12/2 = 6.
    * ``nc-…``, ``sum-p…``: devinterp's closed-form cases (``devinterp_cells``).
    * ``rrr-…``: ``rrr_cell`` for every M, N, H ≤ ``rrr_max`` and r ≤ min(M, N, H).
    """
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n_inputs, 1, generator=gen, dtype=DTYPE)
    x2 = torch.randn(n_inputs, 2, generator=gen, dtype=DTYPE)
    x3 = torch.randn(n_inputs, 3, generator=gen, dtype=DTYPE)
    cells = [
        _component_cell("(ab)^2", "a b x: a and b crossing", (1, 1), CLOSED_FORMS["(ab)^2"], x1),
        _component_cell(
            "(abc)^2", "a b c x: three crossing components", (1, 1, 1), CLOSED_FORMS["(abc)^2"], x1
        ),
        _component_cell(
            "a^2b^4", "a b² x: a (k = 1) crossing b (k = 2)", (1, 2), CLOSED_FORMS["a^2b^4"], x1
        ),
    ]
    power = PowerSum((1, 2))
    cells.append(
        AssemblyCell(
            name="a^2+b^4",
            description="(a x₁, b² x₂) at 0: a (k = 1) and b (k = 2) independent",
            model=power,
            inputs=x2,
            directions=(
                Direction("a", "", _unit("a1"), "cell", "regular", 1.0),
                Direction("b", "", _unit("a2"), "cell", "singular", 2.0),
            ),
            loci=independent("a", "b", name="sum"),
            closed_form=CLOSED_FORMS["a^2+b^4"],
            reference="Watanabe (2009), sums of independent terms; METHOD §6",
        )
    )
    linear = Linear(3, 2, gen)
    cells.append(
        AssemblyCell(
            name="regular-linear",
            description="W x + b, 3 → 2 (d = 8) at random weights, full-basis read",
            model=linear,
            inputs=x3,
            directions=tuple(
                Direction(f"e{j}", "fc", v, "full_basis")
                for j, v in enumerate(full_basis(linear, x3))
            ),
            loci=independent(*(f"e{j}" for j in range(8)), name="regular"),
            closed_form=regular_lambda(8),
            reference="regular model: λ = d/2 (Schwarz 1978; Watanabe 2009)",
        )
    )
    softmax = Linear(3, 4, gen)
    logits_basis = _categorical_basis(softmax, x3)
    cells.append(
        AssemblyCell(
            name="softmax-regression",
            description="softmax(W x + b), 3 → 4 (d = 16), categorical; 4 flat logit shifts",
            model=softmax,
            inputs=x3,
            directions=tuple(
                Direction(f"e{j}", "fc", v, "full_basis") for j, v in enumerate(logits_basis)
            ),
            loci=independent(*(f"e{j}" for j in range(16)), name="regular"),
            closed_form=regular_lambda(12),
            likelihood="categorical",
            reference="regular in the (C−1)(d_in+1) = 12 identifiable coordinates: λ = 6",
        )
    )
    cells.extend(devinterp_cells(n_inputs=n_inputs, seed=seed))
    cells.extend(rrr_cells(rrr_max, n_inputs=n_inputs, seed=seed))
    return cells


#: devinterp's normal-crossing accuracy cases (its ``TRUE_LCS_PER_POWER``):
#: ``f = x · w₁^{p₁} w₂^{p₂}``, ``K ∝ w₁^{2p₁} w₂^{2p₂}``, λ = 1/(2 max p).
DEVINTERP_CROSSINGS = ((0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (0, 3), (1, 3), (2, 3), (3, 3))
#: NormalCrossing sums ``K = ½ Σ w_i^{p_i}`` (even p_i), λ = Σ 1/p_i (the form of devinterp's
#: monomial examples; these exponent sets are chosen here).
MONOMIAL_SUMS = ((2, 2), (2, 4), (4, 4), (2, 6), (4, 6), (2, 4, 6))


def devinterp_cells(n_inputs: int = 64, seed: int = 0) -> list[AssemblyCell]:
    """devinterp's closed-form cases as assembly cells.

    * ``nc-p1-p2``: ``f = x · w₁^{p₁} w₂^{p₂}`` for every pair of
      :data:`DEVINTERP_CROSSINGS`; each w_i read at a generic point of its component
      {w_i = 0} (the other variable 1), declared crossing; a p = 0 variable does not
      enter f (flat, adds nothing). Closed form: ``normal_crossing_lambda``.
    * ``sum-p…``: ``f = (w₁^{p₁/2} x₁, …)`` for :data:`MONOMIAL_SUMS`, so
      ``K = ½ Σ w_i^{p_i} E[x_i²]``; each w_i read at 0, declared independent. Closed
      form: ``monomial_sum_lambda``. Both true points are the origin.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    x1 = torch.randn(n_inputs, 1, generator=gen, dtype=DTYPE)
    cells = []
    for powers in DEVINTERP_CROSSINGS:
        name = "nc-" + "-".join(map(str, powers))
        cells.append(
            _component_cell(
                name,
                f"x·w₁^{powers[0]}·w₂^{powers[1]}: devinterp's normal-crossing case",
                powers,
                normal_crossing_lambda(powers),
                x1,
            )
        )
    for powers in MONOMIAL_SUMS:
        halves = tuple(p // 2 for p in powers)
        x = torch.randn(n_inputs, len(powers), generator=gen, dtype=DTYPE)
        names = [f"w{i + 1}" for i in range(len(powers))]
        cells.append(
            AssemblyCell(
                name="sum-p" + "-".join(map(str, powers)),
                description=f"K = ½ Σ w_i^p_i, p = {powers}: independent monomials at 0",
                model=PowerSum(halves),
                inputs=x,
                directions=tuple(
                    Direction(
                        n,
                        "",
                        _unit(f"a{i + 1}"),
                        "cell",
                        "regular" if q == 1 else "singular",
                        float(q),
                    )
                    for i, (n, q) in enumerate(zip(names, halves, strict=True))
                ),
                loci=independent(*names, name="sum"),
                closed_form=monomial_sum_lambda(powers),
                reference="sums of independent monomials: λ = Σ 1/p_i (Watanabe 2009, §7.1)",
            )
        )
    return cells


def _categorical_basis(
    model: nn.Module, inputs: torch.Tensor, point: Mapping[str, torch.Tensor] | None = None
) -> list[dict[str, torch.Tensor]]:
    """Full basis for a softmax head: right singular vectors of the centred logit Jacobian.

    The categorical Fisher is ``Jᵀ(diag π − ππᵀ)J``; its kernel holds the logit shifts
    (moves that add the same amount to every logit). Centring the logits over classes
    (``f − mean f``) has the same kernel, so ``full_basis`` of the centred model is a
    basis that separates live directions from the flat shifts.
    """

    class Centred(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y - y.mean(dim=-1, keepdim=True)

    centred = {f"inner.{k}": v for k, v in (point or {}).items()}
    basis = full_basis(Centred(model), inputs, centred or None)
    return [{k.removeprefix("inner."): v for k, v in b.items()} for b in basis]


__all__ = [
    "ASSEMBLY_RADII",
    "AssemblyCell",
    "NormalCrossing",
    "PowerSum",
    "ReducedRank",
    "assembly_cells",
    "blind_assemble",
    "devinterp_cells",
    "full_basis",
    "random_basis",
    "rrr_cell",
    "rrr_cells",
]
