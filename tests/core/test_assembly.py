"""Assembly of (λ, m) from reads equals the closed forms; ν(k) by quadrature (METHOD §6)."""

import itertools
import math
from fractions import Fraction

import pytest
import torch

import dead_directions as dd
from dead_directions.core.assembly import (
    CLOSED_FORMS,
    _variance_at,
    crossing,
    independent,
    rrr_components,
)

RRR_MAX = 3
CROSSINGS = ((0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (0, 3), (1, 3), (2, 3), (3, 3))
SUMS = ((2, 2), (2, 4), (4, 4), (2, 6), (4, 6), (2, 4, 6))
CELL_NAMES = (
    ["(ab)^2", "(abc)^2", "a^2b^4", "a^2+b^4", "regular-linear", "softmax-regression"]
    + ["nc-" + "-".join(map(str, p)) for p in CROSSINGS]
    + ["sum-p" + "-".join(map(str, p)) for p in SUMS]
    + [
        f"rrr-M{M}-N{N}-H{H}-r{r}"
        for M, N, H in itertools.product(range(1, RRR_MAX + 1), repeat=3)
        for r in range(min(M, N, H) + 1)
    ]
)
#: The cells whose K is of sum type in the coordinates the blind basis reads (independent
#: monomials along their axes, regular models, a single normal-crossing factor).
SUM_TYPE = ["a^2+b^4", "regular-linear", "softmax-regression", "nc-0-1", "nc-0-2", "nc-0-3"] + [
    "sum-p" + "-".join(map(str, p)) for p in SUMS
]


@pytest.fixture(scope="module")
def assembled():
    """Every assembly cell read once."""
    out = {}
    for cell in dd.constructed_assembly.assembly_cells():
        reads = cell.read()
        out[cell.name] = (cell, reads, cell.assemble(reads))
    return out


@pytest.fixture(scope="module")
def blind(assembled):
    """Blind (λ, m) of every cell: a Jacobian-adapted and a random basis read at its
    deepest true point, sum type assumed."""
    return {
        name: (cell.blind("jacobian")[1], cell.blind("random")[1])
        for name, (cell, _, _) in assembled.items()
    }


def test_the_cell_list_is_complete(assembled):
    assert sorted(assembled) == sorted(CELL_NAMES)
    assert len(CELL_NAMES) == 6 + 9 + 6 + 63  # 63 = Σ_{M,N,H ≤ 3} (min(M,N,H) + 1)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_assembled_lambda_and_m_equal_the_closed_form(assembled, name):
    cell, reads, a = assembled[name]
    lam, m = cell.closed_form
    assert a.exact, a.notes
    assert a.lam_exact == lam and a.m == m
    assert abs(a.lam - float(lam)) <= 1e-6
    # The measured path (λ from k̂ directly) agrees to 1 % and ties the same factors.
    assert abs(a.lam_measured - float(lam)) <= 0.01 * float(lam)
    assert a.m_measured == m
    # Every order that entered is a measured one, close to an integer.
    for t in a.terms:
        assert t.kind in ("regular", "singular", "gauge")
        if t.kind != "gauge":
            assert abs(t.order - t.k) <= 0.01


@pytest.mark.parametrize("name", [n for n in CELL_NAMES if n.startswith("rrr")])
def test_rrr_live_count_per_component_is_read_not_computed(assembled, name):
    """The number of live (k̂ ≈ 1) reads at each component equals its codimension."""
    cell, reads, a = assembled[name]
    by_component: dict = {}
    for d, r in zip(cell.directions, reads, strict=True):
        live = by_component.setdefault(d.meta["component"], [0, d.meta["codim"]])
        live[0] += r.kind == "regular"
        assert r.kind in ("regular", "gauge"), (r.name, r.kind, r.order)
    M, N, H, r = (int(p[1:]) for p in name.split("-")[1:])
    expected = {(s, t): c for s, t, c in rrr_components(M, N, H, r)}
    assert {k: v[0] for k, v in by_component.items()} == expected


def test_monomial_cells_read_their_orders(assembled):
    orders = {
        name: {t.name: t.k for t in assembled[name][2].terms}
        for name in ("(ab)^2", "(abc)^2", "a^2b^4", "a^2+b^4")
    }
    assert orders == {
        "(ab)^2": {"a1": 1, "a2": 1},
        "(abc)^2": {"a1": 1, "a2": 1, "a3": 1},
        "a^2b^4": {"a1": 1, "a2": 2},
        "a^2+b^4": {"a": 1, "b": 2},
    }


def test_values_are_labelled_structured_or_blind(assembled, blind):
    for name, (cell, _, a) in assembled.items():
        assert cell.loci is not None and a.mode == "structured", name
        assert blind[name][0].mode == blind[name][1].mode == "blind", name
        assert blind[name][0].loci is None
    assert dd.assemble([("a", 1.0)]).mode == "blind"
    assert dd.assemble([("a", 1.0)], independent("a")).mode == "structured"


@pytest.mark.parametrize("name", SUM_TYPE)
def test_blind_equals_the_closed_form_on_sum_type_cells(blind, assembled, name):
    """Where K is of sum type in the basis the blind read takes (independent monomials
    read along their axes, regular models), blind = structured = closed form."""
    lam, m = assembled[name][0].closed_form
    blind_j = blind[name][0]
    assert abs(blind_j.lam - float(lam)) <= 1e-6 and blind_j.m == m
    assert abs(assembled[name][2].lam - float(lam)) <= 1e-6


def _blind_closed_forms(name: str, d: int) -> tuple[Fraction, Fraction]:
    """What a blind read must give, derived independently of the reads: (J basis, random).

    Monomials at 0 (f = x·Π w_i^{p_i}): a coordinate axis through a crossing lies in the
    zero set (flat, 0) unless it is the only variable that enters; a random direction
    moves f by t^{Σp} (order Σp, λ_u = 1/(2Σp)). Sums (f = (w_i^{q_i} x_i), q = p/2): axes
    read q_i; a random direction's leading term has order min q. Reduced rank at the
    deepest point: the live directions are the tangent space of rank-r matrices,
    r(M+N−r) of them (½ each), the rest gauges; a random direction is live when r ≥ 1,
    else f = t² B A x (order 2, ¼ each). Regular models: d/2 either way, except that a
    random basis of the softmax cell has no flat direction (8 instead of 6).
    """
    if name.startswith("nc-") or name in ("(ab)^2", "(abc)^2", "a^2b^4"):
        powers = {"(ab)^2": (1, 1), "(abc)^2": (1, 1, 1), "a^2b^4": (1, 2)}.get(name)
        powers = powers or tuple(int(p) for p in name.split("-")[1:])
        entering = [p for p in powers if p > 0]
        lam_j = Fraction(1, 2 * entering[0]) if len(entering) == 1 else Fraction(0)
        return lam_j, Fraction(len(powers), 2 * sum(powers))
    if name.startswith("sum-p") or name == "a^2+b^4":
        qs = (1, 2) if name == "a^2+b^4" else tuple(int(p) // 2 for p in name[5:].split("-"))
        return sum((Fraction(1, 2 * q) for q in qs), Fraction(0)), Fraction(len(qs), 2 * min(qs))
    if name.startswith("rrr"):
        M, N, H, r = (int(p[1:]) for p in name.split("-")[1:])
        return Fraction(r * (M + N - r), 2), Fraction(d, 2) if r else Fraction(d, 4)
    return {"regular-linear": (Fraction(4), Fraction(4)), "softmax-regression": (6, 8)}[name]


@pytest.mark.parametrize("name", CELL_NAMES)
def test_blind_reads_follow_their_own_closed_forms(blind, assembled, name):
    """The blind values (and so their errors against the true λ) are what the geometry of
    the basis predicts, on every cell: e.g. RRR M = N = H = 2, r = 0 reads 0 in the
    Jacobian basis and 2 in a random one against the closed form 3/2."""
    cell = assembled[name][0]
    want_j, want_r = _blind_closed_forms(name, cell.d)
    blind_j, blind_r = blind[name]
    assert abs(blind_j.lam - float(want_j)) <= 1e-6, (blind_j.lam, want_j)
    assert abs(blind_r.lam - float(want_r)) <= 1e-6, (blind_r.lam, want_r)
    assert blind_j.m == blind_r.m == 1  # sum type: no multiplicity


def test_full_basis_declared_independent(assembled):
    cell, reads, a = assembled["regular-linear"]
    assert a.loci is not None and a.mode == "structured"
    assert [t.kind for t in a.terms] == ["regular"] * 8
    assert a.lam_exact == 4 and a.m == 1
    # ν of independent directions adds: 8 regular directions, ν = 8 · ½.
    assert abs(a.nu - 4.0) <= 1e-9


def test_softmax_flat_gauges_add_zero(assembled):
    cell, reads, a = assembled["softmax-regression"]
    kinds = [t.kind for t in a.terms]
    assert kinds.count("gauge") == 4 and kinds.count("regular") == 12
    assert all("flat" in r.note for r in reads if r.kind == "gauge")
    assert a.lam_exact == 6


def test_sum_cell_nu_is_the_sum_of_nu_k(assembled):
    a = assembled["a^2+b^4"][2]
    assert abs(a.nu - (dd.nu(1)[0] + dd.nu(2)[0])) <= 1e-12
    assert math.isnan(assembled["(ab)^2"][2].nu)  # no ν assembled across a crossing


# ---------------------------------------------------------------------------- assembly rules


def test_rules_on_declared_orders():
    pairs = [("a", 1.0), ("b", 1.0), ("c", 2.0)]
    assert dd.assemble(pairs).lam_exact == Fraction(5, 4)
    a = dd.assemble(pairs, crossing("a", "b", "c"))
    assert (a.lam_exact, a.m) == (Fraction(1, 4), 1)
    a = dd.assemble(pairs, crossing("a", "b"))  # c adds independently
    assert (a.lam_exact, a.m) == (Fraction(3, 4), 2)
    assert any("not named" in n for n in a.notes)
    # Sum of crossings: (ab)² + c⁴ → 1/2 + 1/4, m = 2 + 1 − 1.
    a = dd.assemble(pairs, independent(crossing("a", "b"), "c"))
    assert (a.lam_exact, a.m) == (Fraction(3, 4), 2)
    # Crossing of sums: (a² + b²)·c⁴ → min(1, 1/4).
    a = dd.assemble(pairs, crossing(independent("a", "b"), "c"))
    assert (a.lam_exact, a.m) == (Fraction(1, 4), 1)
    # Crossing of tied sums: (a² + b²)(c² + d²) → λ = 1, m = 2.
    a = dd.assemble(
        [("a", 1), ("b", 1), ("c", 1), ("d", 1)],
        crossing(independent("a", "b"), independent("c", "d")),
    )
    assert (a.lam_exact, a.m) == (Fraction(1), 2)
    # Sum of tied crossings: (ab)² + (cd)² → λ = 1, m = 2 + 2 − 1 = 3.
    a = dd.assemble(
        [("a", 1), ("b", 1), ("c", 1), ("d", 1)],
        independent(crossing("a", "b"), crossing("c", "d")),
    )
    assert (a.lam_exact, a.m) == (Fraction(1), 3)


def test_prior_exponents():
    # K = b⁴ with prior |b|¹: (h+1)/(2k) = 2/4.
    a = dd.assemble([("b", 2.0)], dd.Locus(("b",), h=1))
    assert a.lam_exact == Fraction(1, 2)
    # K = a²b², prior |a|¹: min(2/2, 1/2) = 1/2 with m = 1 (the tie is broken).
    a = dd.assemble([("a", 1.0), ("b", 1.0)], crossing("a", "b", h={"a": 1}))
    assert (a.lam_exact, a.m) == (Fraction(1, 2), 1)
    assert math.isnan(a.terms[0].nu)  # ν(k) is defined for h = 0 only
    assert dd.assemble([("b", 2.0)], dd.Locus(("b",), h=0.5)).lam_exact == Fraction(3, 8)
    with pytest.raises(ValueError, match="exceed"):
        dd.Locus(("b",), h=-1)


def test_gauges_unresolved_and_tolerance():
    a = dd.assemble([("a", 1.0), ("g", math.inf)])
    assert a.lam_exact == Fraction(1, 2) and a.terms[1].kind == "gauge"
    a = dd.assemble([("a", 1.0), ("b", 2.0), ("g", math.inf)], crossing("a", "b", "g"))
    assert (a.lam_exact, a.m) == (Fraction(1, 4), 1)
    assert any("not factors" in n for n in a.notes)
    with pytest.raises(ValueError, match="at least one member"):
        dd.assemble([("g", math.inf)], crossing("g"))
    a = dd.assemble([("a", 1.0), ("u", math.nan)])
    assert not a.exact and math.isnan(a.lam) and a.lam_exact is None
    a = dd.assemble([("b", 2.04)])
    assert a.exact and a.lam_exact == Fraction(1, 4)
    assert a.lam_measured == pytest.approx(1 / 4.08)
    a = dd.assemble([("b", 2.2)])
    assert not a.exact and a.lam == pytest.approx(1 / 4.4) and a.terms[0].k is None
    # Measured-path ties: k̂ = 1.01 and 0.99 tie within 5 %.
    a = dd.assemble([("a", 1.01), ("b", 0.99)], crossing("a", "b"))
    assert a.m_measured == 2 and a.m == 2


def test_declaration_errors():
    with pytest.raises(ValueError, match="not given"):
        dd.assemble([("a", 1.0)], crossing("a", "z"))
    with pytest.raises(ValueError, match="more than once"):
        dd.assemble([("a", 1.0), ("a", 2.0)], crossing("a"))
    with pytest.raises(ValueError, match="one place only"):
        dd.assemble([("a", 1.0), ("b", 1.0)], independent(crossing("a", "b"), "a"))
    with pytest.raises(ValueError, match="empty"):
        dd.assemble([])
    with pytest.raises(ValueError, match="members"):
        dd.Locus((1, 2))
    assert dd.assemble([("a", 1.0), ("a", 2.0)]).lam_exact == Fraction(3, 4)  # no loci: ok


# ------------------------------------------------------------------------------ closed forms


def test_polynomial_closed_forms_are_the_rule_values():
    rule = {
        "(ab)^2": ([("a", 1), ("b", 1)], crossing("a", "b")),
        "(abc)^2": ([("a", 1), ("b", 1), ("c", 1)], crossing("a", "b", "c")),
        "a^2+b^4": ([("a", 1), ("b", 2)], None),
        "a^2b^4": ([("a", 1), ("b", 2)], crossing("a", "b")),
    }
    for name, (pairs, loci) in rule.items():
        a = dd.assemble(pairs, loci)
        assert (a.lam_exact, a.m) == CLOSED_FORMS[name]
    assert dd.regular_lambda(7) == (Fraction(7, 2), 1)


def _rrr_range(n):
    for M, N, H in itertools.product(range(1, n + 1), repeat=3):
        for r in range(min(M, N, H) + 1):
            yield M, N, H, r


def test_rrr_special_cases():
    assert dd.rrr_lambda(1, 1, 1, 0) == (Fraction(1, 2), 2)  # the (ab)² cell
    assert dd.rrr_lambda(3, 3, 3, 0) == (Fraction(7, 2), 2)
    assert dd.rrr_lambda(2, 2, 2, 0) == (Fraction(3, 2), 1)
    assert dd.rrr_lambda(1, 1, 2, 0) == (Fraction(1, 2), 1)
    for M, N in itertools.product(range(1, 9), repeat=2):
        # H = 1, r = 0: K = ‖a‖²‖b‖², crossing of a sum of M and a sum of N → min/2.
        assert dd.rrr_lambda(M, N, 1, 0) == (Fraction(min(M, N), 2), 2 if M == N else 1)
        for H in range(1, min(M, N) + 1):
            # r = H: the rank-H matrices, a regular manifold of dimension H(M+N−H).
            assert dd.rrr_lambda(M, N, H, H) == (Fraction(H * (M + N - H), 2), 1)
        # H ≥ M + N: every N × M matrix is reachable: λ = MN/2.
        assert dd.rrr_lambda(M, N, M + N, 0) == (Fraction(M * N, 2), 1)


def test_rrr_symmetry_and_reduction():
    for M, N, H, r in _rrr_range(8):
        lam, m = dd.rrr_lambda(M, N, H, r)
        assert (lam, m) == dd.rrr_lambda(N, M, H, r)  # transpose: M ↔ N
        assert lam <= Fraction(H * (M + N), 2)  # never above the regular count
        if r and min(M, N, H) > r:
            reduced, m0 = dd.rrr_lambda(M - r, N - r, H - r, 0)
            assert (lam, m) == (reduced + Fraction(r * (M + N - r), 2), m0)


def test_rrr_components_reproduce_aoyagi_watanabe():
    """min over components of codim/2 (with multiplicity) = the closed form, M,N,H ≤ 8."""
    for M, N, H, r in _rrr_range(8):
        codims = [c for _, _, c in rrr_components(M, N, H, r)]
        lam = Fraction(min(codims), 2)
        assert (lam, codims.count(min(codims))) == dd.rrr_lambda(M, N, H, r), (M, N, H, r)


def test_rrr_rejects_bad_dimensions():
    with pytest.raises(ValueError, match="exceeds"):
        dd.rrr_lambda(2, 2, 1, 2)
    with pytest.raises(ValueError, match="at least 1"):
        dd.rrr_lambda(0, 2, 1, 0)


def test_deep_linear_two_layers_reduce_to_reduced_rank():
    for M, N, H, r in _rrr_range(8):
        assert dd.dln_lambda((M, H, N), r) == dd.rrr_lambda(M, N, H, r), (M, N, H, r)


def test_deep_linear_scalar_products_are_normal_crossings():
    for layers in range(1, 8):
        widths = (1,) * (layers + 1)
        # K = (a₁⋯a_L)²: L crossing factors of order 1 (L = 1: one regular parameter).
        assert dd.dln_lambda(widths, 0) == (Fraction(1, 2), layers)
        assert dd.dln_lambda(widths, 1) == (Fraction(1, 2), 1)  # regular at a nonzero product
    assert dd.dln_lambda((1, 1, 1), 0) == CLOSED_FORMS["(ab)^2"]
    assert dd.dln_lambda((1, 1, 1, 1), 0) == CLOSED_FORMS["(abc)^2"]
    with pytest.raises(ValueError, match="exceeds"):
        dd.dln_lambda((2, 1, 2), 2)


def test_deep_linear_values():
    # Widths (2, 2, 2, 2), r = 0: Δ = (2, 2, 2, 2), ℓ = 3, S = 8, a = 2;
    # λ = 2/12 − (3/2)(64/9) + ½·6·4 = 1/6 − 32/3 + 12 = 3/2; m = a(ℓ − a) + 1 = 3.
    assert dd.dln_lambda((2, 2, 2, 2), 0) == (Fraction(3, 2), 3)
    # A layer of full width passes through: (3, 5, 2) at r = 0 is regular-dimensional λ = 3.
    assert dd.dln_lambda((3, 5, 2), 0) == dd.rrr_lambda(3, 2, 5, 0) == (Fraction(3), 1)


# -------------------------------------------------------------------------------------- ν(k)

NU_VALUES = {  # ν(k), leading order, from dd.nu (error < 1e-10)
    1: 0.5,
    2: 0.172973267434,
    3: 0.278366474400,
    4: 0.137855714857,
    5: 0.206135249963,
    6: 0.116661032372,
}


@pytest.mark.parametrize("k", range(1, 7))
def test_nu_by_quadrature(k):
    value, error = dd.nu(k)
    assert 0 <= error < 1e-10
    assert abs(value - NU_VALUES[k]) <= 1e-9
    # The frozen part (Z = 0) is a lower bound here, and ν(k) ≤ λ_k-free ½.
    assert dd.nu_frozen(k) < value + 1e-12 <= 0.5 + 1e-12


def test_nu_k1_is_the_gaussian_closed_form():
    # k = 1: ∝ exp(Zη − η²) is N(Z/2, 1/2), Var = 1/2 for every Z, so ν(1) = 1/2.
    value, error = dd.nu(1)
    assert abs(value - 0.5) <= max(error, 1e-14)
    for z in (-6.0, -1.0, 0.0, 0.3, 4.0):
        var, err = _variance_at(1, z)
        assert abs(var - 0.5) <= max(err, 1e-12)


def test_nu_frozen_closed_form_against_quadrature():
    for k in range(1, 7):
        lam = 1 / (2 * k)
        var, err = _variance_at(k, 0.0)
        assert abs(dd.nu_frozen(k) - var) <= max(err, 1e-12)
        if k % 2:
            assert dd.nu_frozen(k) == lam
        else:
            assert dd.nu_frozen(k) == pytest.approx(
                lam - (math.gamma(lam + 0.5) / math.gamma(lam)) ** 2, abs=1e-14
            )
    assert dd.nu_frozen(2) == pytest.approx(0.135763354738884, abs=1e-12)


def test_inner_variance_against_high_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    for k, z in [(2, -3.0), (2, 2.5), (3, 1.7), (4, -0.4), (5, 3.2), (6, 6.0)]:
        zz = mpmath.mpf(z)

        def weight(t, k=k, zz=zz):
            return mpmath.exp(zz * t**k - t ** (2 * k))

        peak = abs(z / 2) ** (1 / k)  # break the range at the density's peaks
        cuts = [-mpmath.inf, -2 * peak, -peak, 0, peak, 2 * peak, mpmath.inf]

        def moment(j, k=k, weight=weight, cuts=cuts):
            return mpmath.quad(lambda t: t ** (j * k) * weight(t), cuts, maxdegree=10)

        m0, m1, m2 = moment(0), moment(1), moment(2)
        reference = float(m2 / m0 - (m1 / m0) ** 2)
        var, err = _variance_at(k, z)
        assert abs(var - reference) <= max(err, 1e-11), (k, z, var, reference)


def test_nu_outer_rule_against_adaptive_quadrature():
    from scipy import integrate

    for k in (2, 3):

        def integrand(z, k=k):
            return _variance_at(k, z)[0] * math.exp(-z * z / 4) / math.sqrt(4 * math.pi)

        value, err = integrate.quad(integrand, -40, 40, epsabs=1e-12, epsrel=1e-11, limit=200)
        assert abs(value - dd.nu(k)[0]) <= 1e-9 + err


def test_nu_rejects_non_integer_orders():
    for bad in (0, 1.5, -2, True):
        with pytest.raises(ValueError, match="integer"):
            dd.nu(bad)
        with pytest.raises(ValueError, match="integer"):
            dd.nu_frozen(bad)


# ------------------------------------------------------- full-basis assembly (compare-llc)


def _generic_mlp(d_in: int, hidden: int, d_out: int, seed: int):
    from dead_directions.nn.models import MLP

    gen = torch.Generator().manual_seed(seed)
    model = MLP(d_in, hidden, d_out, "tanh")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(64, d_in, generator=gen, dtype=torch.float64)
    return model, x


def test_full_basis_of_a_regular_model_assembles_d_over_2():
    """A generic tanh MLP (full-rank Jacobian on 64 inputs) is regular: λ = d/2, m = 1."""
    from dead_directions.analysis.llc_compare import full_basis_reads

    model, x = _generic_mlp(3, 2, 2, seed=1)
    d = sum(p.numel() for p in model.parameters())
    assert d == 14
    # Independently: the output Jacobian (64·2 × 14) has full column rank.
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(v):
        parts = torch.split(v, [math.prod(s) for s in shapes])
        state = {k: c.reshape(s) for k, c, s in zip(names, parts, shapes, strict=True)}
        return torch.func.functional_call(model, state, (x,)).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, flat)
    assert torch.linalg.matrix_rank(jac).item() == d
    reads, a = full_basis_reads(model, x)
    assert [r.kind for r in reads] == ["regular"] * d
    assert a.exact and a.lam_exact == Fraction(d, 2) and a.m == 1
    assert a.lam_exact == dd.regular_lambda(d)[0]


@pytest.mark.parametrize("fully_dead", [False, True])
def test_full_basis_with_a_planted_dead_unit(fully_dead):
    """Unit 0 of a 3 → 3 → 2 tanh MLP planted dead: outgoing weights 0 (its 3 incoming
    weights and bias move nothing: 4 gauges), and with ``fully_dead`` incoming weights and
    bias 0 too (then its 2 outgoing weights move nothing either: 6 gauges). Every other
    direction is live: λ = (d − #gauges)/2 = 8 resp. 7."""
    from dead_directions.analysis.llc_compare import full_basis_reads
    from dead_directions.nn.constructed_assembly import full_basis

    model, x = _generic_mlp(3, 3, 2, seed=2)
    with torch.no_grad():
        model.fc2.weight[:, 0] = 0.0
        if fully_dead:
            model.fc1.weight[0] = 0.0
            model.fc1.bias[0] = 0.0
    d = sum(p.numel() for p in model.parameters())
    assert d == 20
    reads, a = full_basis_reads(model, x)
    dead = 6 if fully_dead else 4
    kinds = [r.kind for r in reads]
    assert kinds.count("gauge") == dead and kinds.count("regular") == d - dead, kinds
    assert a.lam_exact == Fraction(d - dead, 2) and a.m == 1
    # The gauges are the dead unit's own coordinates (a basis of the span of them).
    basis = full_basis(model, x)
    own = torch.zeros(d, dtype=torch.bool)
    own[[0, 1, 2, 9]] = True  # fc1.weight row 0 (flattened), fc1.bias[0]
    if fully_dead:
        own[[12, 15]] = True  # fc2.weight column 0 (rows of 3)
    for v, r in zip(basis, reads, strict=True):
        flat = torch.cat([t.reshape(-1) for t in v.values()])
        on_dead = float(flat[own].norm())
        assert (r.kind == "gauge") == (abs(on_dead - 1.0) < 1e-9), (r.kind, on_dead)


def test_mlp_zoo_row_without_devinterp(tmp_path):
    """The compare-llc zoo row of mlp h4 at step 3000: λ = Σ 1/(2k̂) of the full basis.

    Independently: the Fisher spectrum (squared singular values of the output Jacobian
    over n) of this checkpoint has a gap of four decades (1.0e-4 … 1.8e-8); the directions
    above it read regular, those below it not, so the regular part of λ is
    #{eigenvalues > 1e-6}/2 = 13 (the four below it read gauge, or singular k = 2 where
    ρ ≥ 1e-4 is far above rho_gauge: a tanh MLP has no continuous symmetry there).
    The Jacobian is taken on the fit part of the probe, which is what the read's curves see.
    """
    from dead_directions.analysis.llc_compare import compare_zoo, zoo_checkpoints

    (ck,) = zoo_checkpoints(("h4",), root=tmp_path)
    assert (tmp_path / "mlp" / "h4" / "step0003000.safetensors").exists()
    assert ck.meta["step"] == 3000 and ck.meta["train_loss"] < 1e-4
    (row,) = compare_zoo([ck], devinterp=False)
    name, d, dim_z, error, tight, bound, counts, assembled, versus, _ = row
    assert (name, d, dim_z, tight, bound) == ("mlp-h4 step 3000", "30", "10", "yes", "10")
    assert float(error) <= 1e-13  # the family lies in the true set
    assert versus.startswith("exceeds bound")
    regular, singular, gauge, unresolved = map(int, counts.split("/"))
    assert regular + singular + gauge + unresolved == 30 and unresolved == 0
    assert assembled == f"{regular / 2 + singular / 4:g} (1)"
    # Independently: rank of the output Jacobian on the probe inputs.
    model, x = ck.model, dd.split_probe(ck.probe)[0]
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x,)).reshape(-1))(
        dict(model.named_parameters())
    )
    jac = torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], dim=1)
    eig = torch.linalg.svdvals(jac) ** 2 / len(x)
    live = int((eig > 1e-6).sum())
    assert eig[live - 1] > 5e-5 and eig[live] < 5e-8  # the gap
    assert regular == live == 26 and singular + gauge == 4


def test_zero_set_bound_on_a_constructed_teacher_student_pair():
    """A tanh student 2 → 3 → 1 of a width-1 teacher: d = 3·3 + 3 + 1 = 13. The teacher in
    unit 0, units 1 and 2 with outgoing weight 0 and free incoming weights and biases: a
    family of dimension 2·3 = 6 inside the true set, so λ ≤ (13 − 6)/2 = 7/2. At a point
    of it the output Jacobian has rank 7 — the teacher's 4 unit parameters, the output
    bias and the two zero outgoing weights, each moving f along its own function — so
    the family is all of the true set near it (tight). A student as wide as its teacher
    is identifiable there: nothing is free, λ ≤ d/2."""
    from dead_directions.analysis.llc_compare import zero_set_bound
    from dead_directions.nn.models import MLP

    gen = torch.Generator().manual_seed(5)
    teacher, student = MLP(2, 1, 1, "tanh"), MLP(2, 3, 1, "tanh")
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    b = zero_set_bound(student, teacher, x)
    assert (b.d, b.dim_zero_set, b.bound, b.jacobian_rank, b.tight) == (13, 6, 3.5, 7, True)
    assert b.max_output_error <= 1e-14
    same = zero_set_bound(MLP(2, 1, 1, "tanh"), teacher, x)
    assert (same.d, same.dim_zero_set, same.bound, same.tight) == (5, 0, 2.5, True)
    with pytest.raises(ValueError, match="narrower"):
        zero_set_bound(teacher, student, x)
    with pytest.raises(ValueError, match="activations"):
        zero_set_bound(MLP(2, 3, 1, "relu"), teacher, x)


def test_devinterp_adapter_loss_matches_the_read_fisher_normalisation():
    """The compare-llc dataset adapter: rows unpack to the original (x, y) (image-shaped
    inputs, integer tokens), and the Gaussian loss ½‖f − y‖² of a linear model has
    directional curvature uᵀ∇²L u equal to the read's directional Fisher g(u) = uᵀE[JᵀJ]u,
    so nβ·L_n is the tempered NLL of the read's likelihood head. Needs `datasets` only."""
    pytest.importorskip("datasets", reason="the devinterp adapter builds a datasets.Dataset")
    from dead_directions.analysis.llc_compare import _dataset, _loss_fn

    gen = torch.Generator().manual_seed(3)
    # Round trip of image-shaped float inputs and of integer tokens with class labels.
    x_img = torch.randn(6, 1, 2, 3, generator=gen, dtype=torch.float64)
    y_cls = torch.tensor([0, 2, 1, 1, 0, 2])
    ds, layout = _dataset(x_img, y_cls, "categorical")
    assert (layout.x_shape, layout.y_width) == ((1, 2, 3), 1)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(len(x), 3, dtype=torch.float64)

    ids = ds[:]["input_ids"]
    nll = _loss_fn(layout)(Spy(), ids)
    assert torch.equal(seen[-1], x_img) and nll.shape == (6, 6)
    assert torch.allclose(nll[:, 0], torch.full((6,), math.log(3.0), dtype=torch.float64))
    tokens = torch.tensor([[1, 7, 23], [4, 0, 23]])
    ds_t, layout_t = _dataset(tokens, torch.tensor([2, 1]), "categorical")
    _loss_fn(layout_t)(Spy(), ds_t[:]["input_ids"])
    assert seen[-1].dtype == torch.int64 and torch.equal(seen[-1], tokens)
    with pytest.raises(ValueError, match="differ in length"):
        _dataset(x_img, y_cls[:3], "categorical")

    # Gaussian head: curvature of the mean loss along u = the read's g(u) at t = 0.
    model = torch.nn.Linear(3, 2, dtype=torch.float64)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = model(x).detach() + torch.randn(40, 2, generator=gen, dtype=torch.float64)
    ds_g, layout_g = _dataset(x, y, "gaussian")
    loss = _loss_fn(layout_g)
    rows = ds_g[:]["input_ids"]
    u = {"weight": torch.randn(2, 3, generator=gen, dtype=torch.float64)}
    norm = math.sqrt(sum(float((v * v).sum()) for v in u.values()))
    u = {k: v / norm for k, v in u.items()}
    base = {k: v.detach() for k, v in model.named_parameters()}

    def along(t):
        p = {**base, "weight": base["weight"] + t * u["weight"]}
        moved = lambda xx: torch.func.functional_call(model, p, (xx,))  # noqa: E731
        return loss(moved, rows)[:, 0].mean()

    curvature = torch.func.hessian(along)(torch.tensor(0.0, dtype=torch.float64))
    # All 40 rows in the curve: nothing held out (a random direction: no gauge to confirm).
    options = dd.ReadOptions(heldout_fraction=0)
    r = dd.read(model, x, dd.Direction(name="u", layer="", vector=u), options=options)
    assert float(curvature) == pytest.approx(r.fisher_base, rel=1e-10)


def test_nu_table_is_the_quadrature_and_reads_get_it():
    """NU_TABLE (what the store writes per direction) equals nu(k), k = 1…6."""
    from dead_directions.core.assembly import NU_TABLE, nu, nu_of_read

    for k in range(1, 7):
        value, error = nu(k)
        assert abs(NU_TABLE[k][0] - value) <= 1e-12 and NU_TABLE[k][1] >= error * 0.5
    assert nu_of_read("regular", 1.02) == NU_TABLE[1]
    assert nu_of_read("gauge", math.inf) == (0.0, 0.0)
    assert nu_of_read("singular", 2.97) == NU_TABLE[3]
    assert all(math.isnan(v) for v in nu_of_read("singular", 2.5))
    assert all(math.isnan(v) for v in nu_of_read("singular", 7.0))
    assert all(math.isnan(v) for v in nu_of_read("unresolved", math.nan))


def test_read_nu_per_direction_on_cells():
    """Read.nu: ν of the measured order — regular ½, node death z² (k = 3) ν(3), gauge 0."""
    from dead_directions.core.assembly import NU_TABLE
    from dead_directions.nn.constructed import read_cells

    cells = {c.name: c for c in read_cells()}
    assert cells["regular"].read().nu == NU_TABLE[1][0]
    assert cells["node-death-z^2"].read().nu == NU_TABLE[3][0]
    assert cells["product-4"].read().nu == NU_TABLE[4][0]
    assert cells["layernorm-kernel"].read().nu == 0.0
