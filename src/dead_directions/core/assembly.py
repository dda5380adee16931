"""From per-direction orders to the global learning coefficient (λ, m) and ν (METHOD §6)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np

from dead_directions.core.direction import ORDER_TOLERANCE

# On the measured (float) path, two crossing factors tie when their λ agree to this
# relative tolerance.
TIE_RTOL = 0.05

Number = int | float | Fraction


# --------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Locus:
    """How directions (by read name) and nested loci combine into one factor of K.

    ``members``: read names (``Read.name``) or nested ``Locus`` objects.
    ``crossing=False`` (sum type, independent loci, ``K = Σ_j K_j`` in disjoint
    coordinates): ``λ = Σ_j λ_j`` and ``m = 1 + Σ_j (m_j − 1)``; a direction adds
    ``(h+1)/(2k)`` (regular k = 1: ``(h+1)/2``; a gauge, order ∞: 0).
    ``crossing=True`` (product type, normal crossing, ``K = Π_j K_j``): ``λ = min_j λ_j``
    and ``m = Σ_{j attaining the min} m_j`` — for single directions, the number of them
    attaining ``min_j 1/(2k_j)``. Members with ``λ_j = 0`` (gauges: K does not depend on
    them) are not factors of a product and are left out of a crossing.
    ``h``: prior exponents of ``|u|^h`` for direct members: one number for all of them,
    or a mapping ``name → h`` (names not in it take 0). A direction's term becomes
    ``(h+1)/(2k)``. Source: METHOD §6; Watanabe, *Algebraic Geometry and Statistical
    Learning Theory* (2009), the normal-crossing form and its zeta function.
    """

    members: tuple[str | Locus, ...]
    crossing: bool = False
    h: Number | Mapping[str, Number] = 0
    name: str = ""

    def __post_init__(self):
        members = tuple(self.members)
        object.__setattr__(self, "members", members)
        for member in members:
            if not isinstance(member, str | Locus):
                raise ValueError(
                    f"Locus {self.name!r}: members are read names (str) or Locus objects, "
                    f"got {type(member).__name__}."
                )
        if not members:
            raise ValueError(f"Locus {self.name!r}: give at least one member.")
        hs = self.h.values() if isinstance(self.h, Mapping) else [self.h]
        for value in hs:
            if not (isinstance(value, int | float | Fraction) and math.isfinite(value)):
                raise ValueError(f"Locus {self.name!r}: prior exponent h must be a finite number.")
            if value <= -1:
                raise ValueError(
                    f"Locus {self.name!r}: prior exponent h = {value} must exceed −1 "
                    "(|u|^h is not integrable at 0 otherwise)."
                )

    def prior(self, name: str) -> Number:
        if isinstance(self.h, Mapping):
            return self.h.get(name, 0)
        return self.h

    def names(self) -> list[str]:
        """Every read name under this locus, depth first."""
        out: list[str] = []
        for member in self.members:
            out.extend(member.names() if isinstance(member, Locus) else [member])
        return out


def crossing(*members: str | Locus, h: Number | Mapping[str, Number] = 0, name: str = "") -> Locus:
    """``Locus(members, crossing=True)``: a normal crossing of its members."""
    return Locus(tuple(members), crossing=True, h=h, name=name)


def independent(
    *members: str | Locus, h: Number | Mapping[str, Number] = 0, name: str = ""
) -> Locus:
    """``Locus(members, crossing=False)``: independent (sum type) members."""
    return Locus(tuple(members), crossing=False, h=h, name=name)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One direction's contribution.

    ``order``: the measured k̂ (``math.inf`` for a gauge, NaN when unresolved).
    ``k``: k̂ rounded to the nearest integer when within ``ORDER_TOLERANCE`` (None
    otherwise, and for gauges). ``lam``: ``(h+1)/(2k̂)`` from the measured order (0 for
    a gauge); ``lam_exact``: ``(h+1)/(2k)`` as a fraction (None without an exact k).
    ``nu``: the leading-order universal singular fluctuation ν(k) (``nu``), with its
    numerical error ``nu_error``; ``nu_frozen``: its Z = 0 part (``nu_frozen``); NaN
    where k is not an integer or h ≠ 0; 0 for a gauge. ``locus``: the path of names of
    the loci containing it ("" at top level).
    """

    name: str
    kind: str
    order: float
    k: int | None
    h: Fraction
    lam: float
    lam_exact: Fraction | None
    nu: float
    nu_error: float
    nu_frozen: float
    locus: str = ""


@dataclass(frozen=True)
class Assembly:
    """The global learning coefficient assembled from per-direction reads.

    ``lam``, ``m``: the exact path's values (``lam_exact`` as a float) when every order
    is within ``ORDER_TOLERANCE`` of an integer, else the measured path's.
    ``lam_exact`` (Fraction) and ``m_exact``: from integer orders (None when some order
    is not within tolerance). ``lam_measured``, ``m_measured``: from the measured k̂
    directly (ties within ``TIE_RTOL``). ``nu``: Σ of the terms' ν(k) when the structure
    is purely of sum type (ν of independent directions adds); NaN when a crossing is
    present or some term has no ν. ``nu_error``: the summed numerical error of ``nu``.
    ``terms``: one ``Term`` per read, in input order. ``loci``: the declaration used.
    ``mode``: ``"structured"`` when ``loci`` declared how the directions combine (exact
    on the cells by construction of the declaration), ``"blind"`` when nothing was
    declared and every direction was taken as independent (sum type assumed: an estimate
    whose error against a closed form must be measured, METHOD §6).
    """

    lam: float
    m: int
    nu: float
    terms: tuple[Term, ...]
    lam_exact: Fraction | None
    m_exact: int | None
    lam_measured: float
    m_measured: int
    nu_error: float = math.nan
    exact: bool = False
    loci: Locus | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    mode: str = "structured"


# --------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------


def _as_fraction(value: Number) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    # Floats: the nearest fraction with denominator ≤ 10⁶ (0.5 → 1/2, 0.1 → 1/10).
    return Fraction(value).limit_denominator(10**6)


def _kind_of(order: float) -> str:
    if math.isnan(order):
        return "unresolved"
    if math.isinf(order):
        return "gauge"
    return "regular" if order < 1.5 else "singular"


def _read_fields(item, index: int) -> tuple[str, str, float]:
    """``(name, kind, order)`` of a ``dd.Read``-like object or a ``(name, order)`` pair."""
    if isinstance(item, tuple) and len(item) == 2:
        name, order = item
        order = float(order)
        return str(name), _kind_of(order), order
    try:
        return str(item.name), str(item.kind), float(item.order)
    except AttributeError as err:
        raise ValueError(
            f"reads[{index}]: expected a dd.Read (name, kind, order) or a (name, order) pair, "
            f"got {type(item).__name__}."
        ) from err


def _term(name: str, kind: str, order: float, h: Fraction, tol: float, path: str) -> Term:
    if kind == "gauge" or math.isinf(order):
        return Term(name, "gauge", math.inf, None, h, 0.0, Fraction(0), 0.0, 0.0, 0.0, path)
    if kind == "unresolved" or not math.isfinite(order) or order <= 0:
        nan = math.nan
        return Term(name, "unresolved", nan, None, h, nan, None, nan, nan, nan, path)
    lam = float(h + 1) / (2.0 * order)
    k_int = round(order)
    k = k_int if k_int >= 1 and abs(order - k_int) <= tol else None
    lam_exact = (h + 1) / (2 * k) if k is not None else None
    if k is not None and h == 0:
        value, error = nu(k)
        frozen = nu_frozen(k)
    else:
        value = error = frozen = math.nan
    return Term(name, kind, order, k, h, lam, lam_exact, value, error, frozen, path)


@dataclass(frozen=True)
class _Value:
    lam_exact: Fraction | None
    m_exact: int | None
    lam: float
    m: int
    crossing: bool


def _combine(locus: Locus, values: list[_Value], notes: list[str]) -> _Value:
    has_crossing = locus.crossing or any(v.crossing for v in values)
    exact = all(v.lam_exact is not None for v in values)
    if not locus.crossing:
        lam_e = sum((v.lam_exact for v in values), Fraction(0)) if exact else None
        m_e = 1 + sum(v.m_exact - 1 for v in values) if exact else None
        lam = float(sum(v.lam for v in values))
        m = 1 + sum(v.m - 1 for v in values)
        return _Value(lam_e, m_e, lam, m, has_crossing)
    # Normal crossing: factors are the members with λ > 0.
    if exact:
        factors = [v for v in values if v.lam_exact != 0]
    else:
        factors = [v for v in values if not (v.lam == 0.0)]
    if len(factors) < len(values):
        notes.append(
            f"crossing {locus.name or '(unnamed)'}: {len(values) - len(factors)} member(s) "
            "with λ = 0 (gauges) are not factors of the product and were left out"
        )
    if not factors:
        raise ValueError(
            f"Locus {locus.name!r}: a crossing needs at least one member with λ > 0 "
            "(all members read as gauges)."
        )
    lam_e = m_e = None
    if exact:
        lam_e = min(v.lam_exact for v in factors)
        m_e = sum(v.m_exact for v in factors if v.lam_exact == lam_e)
    lam = min(v.lam for v in factors)
    if math.isnan(lam) or any(math.isnan(v.lam) for v in factors):
        lam, m = math.nan, 0
    else:
        m = sum(v.m for v in factors if abs(v.lam - lam) <= TIE_RTOL * lam)
    return _Value(lam_e, m_e, lam, m, True)


def assemble(
    reads: Sequence,
    loci: Locus | Sequence[Locus] | None = None,
    *,
    tolerance: float = ORDER_TOLERANCE,
) -> Assembly:
    """Assemble the global learning coefficient λ and multiplicity m from reads.

    ``reads``: ``dd.Read`` objects (their ``name``, ``kind`` and ``order`` are used), or
    ``(name, order)`` pairs (order ``math.inf`` for a gauge). ``loci``: a ``Locus`` (or a
    sequence of them, combined as independent) declaring which directions share a locus
    and whether they add or cross (METHOD §6). Reads not named in ``loci`` add
    independently at the top level; with ``loci=None`` every direction is independent
    — the right declaration for a full-basis read (an orthonormal basis of parameter
    space, e.g. the Fisher eigenbasis) of a model whose singular structure is of sum
    type at the base: ``λ = Σ_u (h+1)/(2k_u)``, regular directions 1/2, gauges 0.

    ``Assembly.mode`` labels the value: ``"structured"`` with ``loci`` given, ``"blind"``
    with ``loci=None`` (sum type assumed, not declared; never compare a structured value
    with a blind estimator such as SGLD as if both were blind — METHOD §6).

    Two paths are kept: exact — each measured k̂ within ``tolerance`` (default 0.05) of
    an integer k is replaced by k and λ is a ``Fraction`` — and measured — λ from k̂
    directly. ``Assembly.lam``/``m`` are the exact path's when it exists.
    Units: λ and ν are dimensionless (coefficients of log n in the free energy and of
    1/n in the generalisation gap).
    """
    if not isinstance(tolerance, int | float) or not (0 < tolerance < 0.5):
        raise ValueError("tolerance must be a number in (0, 0.5).")
    fields = [_read_fields(item, i) for i, item in enumerate(reads)]
    if not fields:
        raise ValueError("reads is empty: give at least one read to assemble.")
    notes: list[str] = []
    if loci is None:
        # Index keys, so reads with repeated names still assemble.
        by_name = {f"#{i}": i for i in range(len(fields))}
        top = Locus(tuple(by_name))
        declared = None
    else:
        if not isinstance(loci, Locus):
            loci = tuple(loci)
            if not loci or not all(isinstance(x, Locus) for x in loci):
                raise ValueError("loci: give a Locus, a non-empty sequence of Locus, or None.")
        names = [f[0] for f in fields]
        by_name = {}
        for i, name in enumerate(names):
            if name in by_name:
                raise ValueError(
                    f"reads: the name {name!r} occurs more than once; loci refer to reads by "
                    "name, so give every direction a distinct name."
                )
            by_name[name] = i
        roots = [loci] if isinstance(loci, Locus) else list(loci)
        used = [n for root in roots for n in root.names()]
        unknown = sorted({n for n in used if n not in by_name})
        if unknown:
            raise ValueError(
                f"loci name reads that are not given: {unknown[:5]}; known names start {names[:5]}."
            )
        repeated = sorted({n for n in used if used.count(n) > 1})
        if repeated:
            raise ValueError(f"loci: each read may appear in one place only; repeated: {repeated}.")
        rest = [n for n in names if n not in set(used)]
        if rest:
            notes.append(f"{len(rest)} read(s) not named in loci add independently")
        top = roots[0] if len(roots) == 1 and not rest else Locus((*roots, *rest), name="")
        declared = top

    terms: list[Term | None] = [None] * len(fields)

    def visit(locus: Locus, path: str) -> _Value:
        here = f"{path}/{locus.name}" if locus.name else path
        values = []
        for member in locus.members:
            if isinstance(member, Locus):
                values.append(visit(member, here))
                continue
            i = by_name[member]
            name, kind, order = fields[i]
            t = _term(name, kind, order, _as_fraction(locus.prior(member)), tolerance, here)
            terms[i] = t
            values.append(
                _Value(t.lam_exact, 1 if t.lam_exact is not None else None, t.lam, 1, False)
            )
        return _combine(locus, values, notes)

    value = visit(top, "")
    out_terms = tuple(t for t in terms if t is not None)
    if any(t.kind == "unresolved" for t in out_terms):
        notes.append("unresolved reads: λ is undefined (NaN)")
    exact = value.lam_exact is not None
    if value.crossing or any(math.isnan(t.nu) for t in out_terms):
        nu_total = nu_err = math.nan
    else:
        nu_total = float(sum(t.nu for t in out_terms))
        nu_err = float(sum(t.nu_error for t in out_terms))
    return Assembly(
        lam=float(value.lam_exact) if exact else value.lam,
        m=value.m_exact if exact else value.m,
        nu=nu_total,
        terms=out_terms,
        lam_exact=value.lam_exact,
        m_exact=value.m_exact,
        lam_measured=value.lam,
        m_measured=value.m,
        nu_error=nu_err,
        exact=exact,
        loci=declared,
        notes=tuple(notes),
        mode="blind" if declared is None else "structured",
    )


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------

#: Closed-form (λ, m) of normal-form polynomials K (Watanabe 2009, Algebraic Geometry and
#: Statistical Learning Theory, §2.4 and the normal-crossing examples; METHOD §6):
#: ``(ab)²`` crosses two k = 1 factors (λ = 1/2, m = 2); ``(abc)²`` three (λ = 1/2,
#: m = 3); ``a² + b⁴`` adds 1/2 and 1/4 (λ = 3/4, m = 1); ``a²b⁴`` crosses 1/2 and 1/4
#: (λ = 1/4, m = 1).
CLOSED_FORMS: dict[str, tuple[Fraction, int]] = {
    "(ab)^2": (Fraction(1, 2), 2),
    "(abc)^2": (Fraction(1, 2), 3),
    "a^2+b^4": (Fraction(3, 4), 1),
    "a^2b^4": (Fraction(1, 4), 1),
}


def monomial_sum_lambda(powers: Sequence[int]) -> tuple[Fraction, int]:
    """``K = ½ Σ_i w_i^{p_i}`` (even p_i ≥ 2, independent coordinates): λ = Σ_i 1/p_i, m = 1.

    Each coordinate's zeta function ``∫|w|^{p z} dw`` has its largest pole at z = −1/p,
    and the poles of a sum in disjoint coordinates add (Watanabe 2009, §7.1; METHOD §6,
    sum type with k_i = p_i/2). These are devinterp's monomial-sum accuracy cases.
    """
    powers = [int(p) for p in powers]
    if not powers or any(p < 2 or p % 2 for p in powers):
        raise ValueError(f"powers must be even integers ≥ 2, got {powers}.")
    return sum((Fraction(1, p) for p in powers), Fraction(0)), 1


def normal_crossing_lambda(powers: Sequence[int]) -> tuple[Fraction, int]:
    """``K = Π_i w_i^{2p_i}`` (p_i ≥ 0, not all 0): λ = 1/(2 max p), m = #{i : p_i = max p}.

    The normal-crossing rule of METHOD §6 (Watanabe 2009); a coordinate with p_i = 0 does
    not enter K and adds nothing. devinterp's normal-crossing accuracy test
    (``TRUE_LCS_PER_POWER``: powers (0,1) … (3,3), λ = 1/(2 max p)) uses these values.
    """
    powers = [int(p) for p in powers]
    if not powers or any(p < 0 for p in powers) or max(powers) == 0:
        raise ValueError(f"powers must be integers ≥ 0, not all 0, got {powers}.")
    top = max(powers)
    return Fraction(1, 2 * top), powers.count(top)


def regular_lambda(d: int) -> tuple[Fraction, int]:
    """A regular (identifiable, non-degenerate Fisher) model of dimension d: (d/2, 1)."""
    if not isinstance(d, int) or d < 0:
        raise ValueError(f"d must be a non-negative integer, got {d!r}.")
    return Fraction(d, 2), 1


def _check_dims(**dims: int) -> None:
    for key, value in dims.items():
        if not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {value!r}.")


def rrr_lambda(M: int, N: int, H: int, r: int) -> tuple[Fraction, int]:
    """Learning coefficient and multiplicity of reduced-rank regression.

    Model ``y = B A x + noise``, input dimension ``M``, output dimension ``N``, inner
    rank ``H`` (``A``: H × M, ``B``: N × H), true matrix of rank ``r ≤ min(M, N, H)``.
    Aoyagi & Watanabe, "Stochastic complexities of reduced rank regression in Bayesian
    estimation", Neural Networks 18 (2005) 924–933, Main Theorem (as in METHOD §6):
    if N+r ≤ M+H, M+r ≤ N+H and H+r ≤ M+N, with B = 2(H+r)(M+N) − (M−N)² − (H+r)²:
    λ = B/8, m = 1 when M+H+N+r is even; λ = (B+1)/8, m = 2 when odd.
    Else if M+H < N+r: λ = (HM − Hr + Nr)/2; if N+H < M+r: λ = (HN − Hr + Mr)/2;
    if M+N < H+r: λ = MN/2 (m = 1 in these three). Returns ``(Fraction λ, m)``.
    """
    _check_dims(M=M, N=N, H=H, r=r)
    if min(M, N, H) < 1:
        raise ValueError("M, N and H must be at least 1.")
    if r > min(M, N, H):
        raise ValueError(f"true rank r = {r} exceeds min(M, N, H) = {min(M, N, H)}.")
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        b = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
        if (M + H + N + r) % 2 == 0:
            return Fraction(b, 8), 1
        return Fraction(b + 1, 8), 2
    if M + H < N + r:
        return Fraction(H * M - H * r + N * r, 2), 1
    if N + H < M + r:
        return Fraction(H * N - H * r + M * r, 2), 1
    return Fraction(M * N, 2), 1


def dln_lambda(widths: Sequence[int], r: int) -> tuple[Fraction, int]:
    """Learning coefficient and multiplicity of a deep linear network.

    ``f(x) = W_L ⋯ W_1 x`` with layer widths ``widths = (H₁, …, H_{L+1})`` (H₁ the input
    dimension, H_{L+1} the output dimension; ``W_s`` is H_{s+1} × H_s), true product of
    rank ``r ≤ min(widths)``. Aoyagi, "Consideration on the learning efficiency of
    multiple-layered neural networks with linear units", Neural Networks 172 (2024)
    106132, Theorem 1, in the form restated by Lau, Furman, Wang, Murfet & Wei, "The
    local learning coefficient" (arXiv:2308.12108, appendix on deep linear networks):
    with Δ_s = H_s − r, take the set Σ of ℓ + 1 indices (the smallest Δ's) such that
    max_{Σ} Δ < min_{∉Σ} Δ, Σ_{Σ} Δ ≥ ℓ · max_{Σ} Δ and Σ_{Σ} Δ < ℓ · min_{∉Σ} Δ;
    with S = Σ_{σ∈Σ} Δ_σ and a = S − (⌈S/ℓ⌉ − 1) ℓ ∈ {1, …, ℓ}:

        λ = (−r² + r(H₁ + H_{L+1}))/2 + a(ℓ − a)/(4ℓ) − ℓ(ℓ − 1)/4 · (S/ℓ)²
            + ½ Σ_{i<j ∈ Σ} Δ_i Δ_j,

    and λ = (−r² + r(H₁ + H_{L+1}))/2 when ℓ = 0. Multiplicity m = a(ℓ − a) + 1
    (m = 1 when ℓ = 0).

    What is verified here (tests/core/test_assembly.py): for two layers (three widths
    (M, H, N)) λ and m equal the Aoyagi–Watanabe reduced-rank formula
    (``rrr_lambda(M, N, H, r)``) for every M, N, H ≤ 8 and r ≤ min; for scalar
    products (all widths 1, ``K = (a₁⋯a_L)²`` at r = 0) λ = 1/2 and m = L, the
    normal-crossing values, and at r = 1 λ = 1/2, m = 1 (regular). The published
    statement itself could not be consulted here (only secondary restatements);
    the multiplicity for ℓ ≥ 3 beyond scalar products is therefore unverified.
    Returns ``(Fraction λ, m)``.
    """
    widths = [int(w) for w in widths]
    _check_dims(r=r)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError("widths: give at least two positive layer widths (input … output).")
    if r > min(widths):
        raise ValueError(f"true rank r = {r} exceeds the smallest width {min(widths)}.")
    delta = [w - r for w in widths]
    base = Fraction(-(r**2) + r * (widths[0] + widths[-1]), 2)
    order = sorted(range(len(delta)), key=lambda i: delta[i])
    chosen = None
    for size in range(1, len(delta) + 1):
        inside = [delta[i] for i in order[:size]]
        outside = [delta[i] for i in order[size:]]
        ell = size - 1
        s, mx = sum(inside), max(inside)
        mn_out = min(outside) if outside else None
        separated = mn_out is None or mx < mn_out
        balanced = ell == 0 or s >= ell * mx
        below = mn_out is None or s < ell * mn_out  # literal, also for ℓ = 0
        if separated and balanced and below:
            chosen = inside
            break
    if chosen is None:  # pragma: no cover - the theorem asserts Σ exists
        raise ValueError(f"no index set Σ satisfies Aoyagi's conditions for {widths}, r={r}.")
    ell = len(chosen) - 1
    if ell == 0:
        return base, 1
    s = sum(chosen)
    a = s - (-(-s // ell) - 1) * ell
    pairs = sum(
        chosen[i] * chosen[j] for i in range(len(chosen)) for j in range(i + 1, len(chosen))
    )
    lam = (
        base
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(s, ell) ** 2
        + Fraction(pairs, 2)
    )
    return lam, a * (ell - a) + 1


def rrr_components(M: int, N: int, H: int, r: int) -> list[tuple[int, int, int]]:
    """The irreducible components of the RRR true-parameter set ``{B A = C}``, rank C = r.

    Returned as ``(s, t, codim)``: on the component, ``rank A = r + s`` and
    ``rank B = r + t`` (``s ≤ min(M, H) − r``, ``t ≤ min(N − r, H − r − s)``, maximal
    pairs); ``codim = N(r+s) + M(r+t) − (r+s)(r+t)`` is the rank of the Jacobian of
    ``(A, B) ↦ B A`` at a generic point of it (the number of live directions there), which
    equals the component's codimension in the H(M+N)-dimensional parameter space.
    Identity (verified against ``rrr_lambda`` for every M, N, H ≤ 8 in the tests, not a
    quoted theorem): λ = min over components of codim/2, and m = the number of components
    attaining it.
    """
    _check_dims(M=M, N=N, H=H, r=r)
    if r > min(M, N, H):
        raise ValueError(f"true rank r = {r} exceeds min(M, N, H) = {min(M, N, H)}.")
    m_, n_, h_ = M - r, N - r, H - r
    s_max = min(m_, h_)

    def t_max(s: int) -> int:
        return min(n_, h_ - s)

    out = []
    for s in range(s_max + 1):
        t = t_max(s)
        if s < s_max and t_max(s + 1) >= t:
            continue  # (s, t) lies in the closure of (s + 1, t_max(s + 1))
        a, b = r + s, r + t
        out.append((s, t, N * a + M * b - a * b))
    return out


# --------------------------------------------------------------------------------------
# Universal singular fluctuation ν(k)
# --------------------------------------------------------------------------------------


def nu_frozen(k: int) -> float:
    """Frozen (Z = 0) part of the singular fluctuation of an order-k direction.

    Under the density ∝ exp(−η^{2k}) on ℝ, E[η^{2k}] = Γ(λ+1)/Γ(λ) = λ with λ = 1/(2k),
    and E[η^k] = Γ(λ + ½)/Γ(λ) for even k (0 for odd k by symmetry), so
    Var[η^k] = λ − (Γ(λ+½)/Γ(λ))² for even k and λ for odd k (METHOD §6).
    """
    k = _check_order(k)
    lam = 1.0 / (2 * k)
    if k % 2:
        return lam
    from scipy import special  # here, not at import: a sweep job's start pays ~0.3 s for it

    return lam - math.exp(2 * (special.gammaln(lam + 0.5) - special.gammaln(lam)))


def _check_order(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"the order k must be an integer ≥ 1, got {k!r}.")
    return int(k)


def _variance_at(k: int, z: float) -> tuple[float, float]:
    """``Var[η^k]`` under ∝ exp(z η^k − η^{2k}) on ℝ by adaptive quadrature, and its error.

    The integrand is shifted by its maximum (at η^k = z/2, or 0) and integrated over
    [−R, R] with R^k = |z| + 8: beyond R the log density lies at least 64 below its
    maximum and falls super-exponentially (tail < 1e-27 relative, added to the error).
    The mean is integrated first and the variance as ∫(η^k − μ)², so the error bound is
    ``δc₂/m₀ + Var·δm₀/m₀ + δμ²`` from QUADPACK's error estimates δ.
    """
    from scipy import integrate  # lazily, as in nu_frozen

    s_star = z / 2 if (k % 2 == 1 or z > 0) else 0.0
    phi_max = z * s_star - s_star * s_star
    radius = (abs(z) + 8.0) ** (1.0 / k)
    points = {0.0}
    if s_star != 0.0:
        peak = abs(s_star) ** (1.0 / k)
        points.update({math.copysign(peak, s_star)} if k % 2 else {peak, -peak})

    def weight(eta: float) -> float:
        s = eta**k
        return math.exp(z * s - s * s - phi_max)

    opts = dict(points=sorted(points), epsabs=1e-13, epsrel=1e-12, limit=500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", integrate.IntegrationWarning)
        m0, e0 = integrate.quad(weight, -radius, radius, **opts)
        m1, e1 = integrate.quad(lambda t: t**k * weight(t), -radius, radius, **opts)
        mu = m1 / m0
        c2, e2 = integrate.quad(lambda t: (t**k - mu) ** 2 * weight(t), -radius, radius, **opts)
    var = c2 / m0
    dmu = (e1 + abs(mu) * e0) / m0
    error = e2 / m0 + var * e0 / m0 + dmu * dmu + 1e-27
    if caught:  # QUADPACK flagged roundoff: its estimate may be low; take a 1e-9 floor.
        error = max(error, 1e-9)
    return var, error


@lru_cache(maxsize=64)
def nu(k: int, nodes: int = 120) -> tuple[float, float]:
    """Leading-order universal singular fluctuation of an order-k direction, and its error.

    ν(k) = E_{Z ~ N(0, 2)} Var[η^k], the variance under the density ∝ exp(Z η^k − η^{2k})
    on ℝ (METHOD §6; no closed form for k ≥ 2). The inner variance is computed by
    adaptive quadrature (``_variance_at``); the outer expectation by Gauss–Hermite with
    ``nodes`` nodes (Z = 2x for nodes x of weight e^{−x²}). Returned error:
    ``|Q_nodes − Q_{nodes+40}|`` (the outer rule's a-posteriori error estimate; the
    integrand Var(Z) = A''(Z), A the log partition function, is analytic on ℝ) plus the
    Gauss–Hermite average of the inner quadrature bounds. Check: k = 1 gives the
    Gaussian N(Z/2, ½), Var = ½ for every Z, so ν(1) = ½ (= λ, the regular value).
    Dimensionless.
    """
    from scipy import special  # lazily, as in nu_frozen

    k = _check_order(k)

    def rule(n: int) -> tuple[float, float]:
        x, w = special.roots_hermite(n)
        vals = np.array([_variance_at(k, 2.0 * xi) for xi in x])
        scale = 1.0 / math.sqrt(math.pi)
        return float(scale * (w * vals[:, 0]).sum()), float(scale * (w * vals[:, 1]).sum())

    value, inner = rule(nodes)
    finer, inner_fine = rule(nodes + 40)
    return finer, abs(finer - value) + max(inner, inner_fine)


#: ν(k) and its error bound for k = 1…6, as ``nu(k)`` computes them (tests check the
#: table against the quadrature); the store and reads use it so that a sweep job does not
#: pay the quadrature (≈ 0.7 s per order).
NU_TABLE: dict[int, tuple[float, float]] = {
    1: (0.4999999999999997, 4.9e-13),
    2: (0.17297326743416006, 3.1e-14),
    3: (0.27836647439991824, 1.6e-13),
    4: (0.13785571485693726, 6.8e-14),
    5: (0.20613524996261368, 1.8e-13),
    6: (0.11666103237151, 5.9e-14),
}


def nu_of_read(kind: str, order: float, tol: float = 0.1) -> tuple[float, float]:
    """ν of one read direction and its error bound (dimensionless).

    ``regular``: ν(1) = ½; ``gauge``: 0 (no fluctuation along a symmetry); ``singular``:
    ν(k) for the integer k within ``tol`` of k̂ (k = 2…6); otherwise NaN (unresolved, or
    an order that is not an integer k ≤ 6, where ν has no value here).
    """
    if kind == "gauge":
        return 0.0, 0.0
    if kind == "regular":
        return NU_TABLE[1]
    if kind != "singular" or not math.isfinite(order):
        return math.nan, math.nan
    k = round(order)
    if abs(order - k) > tol or k not in NU_TABLE:
        return math.nan, math.nan
    return NU_TABLE[k]
