"""The read's directional Fisher against explicit Jacobians, batching, streaming, errors."""

import math

import numpy as np
import pytest
import torch
from detector_models import ConvBN
from models import make, random_direction
from torch.func import functional_call, jacrev

import dead_directions as dd
from dead_directions.core.correctability import correctability, rho_fits
from dead_directions.core.fisher import FunctionalModel
from dead_directions.core.likelihood import get_likelihood


def explicit_fisher_quadratic(model, x, u, likelihood, shift=None):
    """uᵀ F u with F = mean_x Jᵀ Λ J from a materialised jacrev Jacobian (test-only)."""
    names = [k for k, _ in model.named_parameters()]
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    if shift is not None:
        params = {k: params[k] + shift.get(k, 0) for k in names}
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    flat = torch.cat([params[k].reshape(-1) for k in names])
    buffers = dict(model.named_buffers())

    def f(vec):
        parts = torch.split(vec, sizes)
        p = {k: v.reshape(s) for k, v, s in zip(names, parts, shapes, strict=True)}
        return functional_call(model, {**buffers, **p}, (x,))

    model.eval()
    y = f(flat)
    jac = jacrev(f)(flat)  # (B, ..., C, P)
    uvec = torch.cat(
        [u.get(k, torch.zeros(s)).reshape(-1) for k, s in zip(names, shapes, strict=True)]
    )
    uvec = uvec / uvec.norm()
    ju = jac @ uvec  # (B, ..., C)
    if likelihood == "gaussian":
        per = (ju**2).reshape(ju.shape[0], -1).sum(1)
    else:
        pi = torch.softmax(y, -1)
        lam = torch.diag_embed(pi) - pi.unsqueeze(-1) * pi.unsqueeze(-2)  # (B, ..., C, C)
        quad = (ju.unsqueeze(-2) @ lam @ ju.unsqueeze(-1)).squeeze(-1).squeeze(-1)
        per = quad.reshape(quad.shape[0], -1).sum(1)
    return float(per.mean())


FIRST_LAYER = {"mlp": {"fc1.weight"}, "cnn": {"conv1.weight"}, "block": {"attn.q.weight"}}


@pytest.mark.parametrize("support", ["all", "first-layer"])
@pytest.mark.parametrize("likelihood", ["gaussian", "categorical"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "block"])
def test_jvp_fisher_equals_explicit_jacobian(name, likelihood, support):
    # "first-layer": every later linear/conv runs through the frozen-weight fast path.
    model, x = make(name)
    u = random_direction(model, names=FIRST_LAYER[name] if support == "first-layer" else None)
    radii = [1e-3, 1e-2, 1e-1, 0.5]
    r = dd.read(model, x, u, likelihood=likelihood, radii=radii)
    fit, _ = dd.split_probe(x)  # the rate curve is read on the fit part of the probe
    norm = math.sqrt(sum(float((v**2).sum()) for v in u.values()))
    unit = {k: v / norm for k, v in u.items()}
    expected_base = explicit_fisher_quadratic(model, fit, u, likelihood)
    assert r.fisher_base == pytest.approx(expected_base, rel=1e-10)
    for t, g in zip(radii, r.fisher, strict=True):
        shifted = {k: t * v for k, v in unit.items()}
        expected = explicit_fisher_quadratic(model, fit, u, likelihood, shift=shifted)
        assert g == pytest.approx(expected, rel=1e-10)


def test_read_many_equals_single_reads_and_batches_the_model_calls():
    model, x = make("mlp")
    directions = [random_direction(model, seed=s) for s in range(32)]
    calls = {"n": 0}
    hook = model.fc1.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    many = dd.read_many(model, x, directions)
    n_many = calls["n"]
    calls["n"] = 0
    singles = [dd.read(model, x, d) for d in directions]
    n_single = calls["n"]
    hook.remove()
    for a, b in zip(many, singles, strict=True):
        np.testing.assert_allclose(a.fisher, b.fisher, rtol=1e-12, atol=0)
        assert a.fisher_base == pytest.approx(b.fisher_base, rel=1e-12)
        assert a.order == pytest.approx(b.order, rel=1e-12)
        assert a.kind == b.kind
    # One vmapped pass per probe batch instead of one per direction.
    assert n_many * 8 <= n_single


def test_streaming_batches_equals_one_concatenated_batch():
    model, x = make("block")
    u = random_direction(model, names={"fc1.weight", "attn.q.weight"})
    whole = dd.read(model, x, u, likelihood="categorical")
    batches = list(torch.chunk(x.repeat(10, 1, 1), 10))  # 10 batches of the same data
    streamed = dd.read(model, iter(batches), u, likelihood="categorical")
    np.testing.assert_allclose(streamed.fisher, whole.fisher, rtol=1e-12)
    split = dd.read(model, x, u, likelihood="categorical", batch_size=3)
    np.testing.assert_allclose(split.fisher, whole.fisher, rtol=1e-12)


def test_dict_inputs_and_output_callable():
    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *, features):
            return {"logits": self.inner(features)}

    model, x = make("mlp")
    wrapped = Wrapped(model)
    u = random_direction(model)
    a = dd.read(model, x, u)
    b = dd.read(
        wrapped,
        {"features": x},
        {f"inner.{k}": v for k, v in u.items()},
        output=lambda o: o["logits"],
    )
    np.testing.assert_allclose(a.fisher, b.fisher, rtol=1e-13)


def test_base_offsets_move_the_read_point():
    model, x = make("mlp")
    u = random_direction(model, names={"fc2.weight"})
    shift = {"fc1.bias": torch.full((6,), 0.3, dtype=torch.float64)}
    r = dd.read(model, x, u, base=shift)
    fit, _ = dd.split_probe(x)
    expected = explicit_fisher_quadratic(model, fit, u, "gaussian", shift=shift)
    assert r.fisher_base == pytest.approx(expected, rel=1e-10)


def test_read_does_not_touch_the_model():
    model, x = make("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    dd.read(model, x.float(), random_direction(model))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m, x, u: (m, x, {"nope.weight": torch.ones(1)}), "unknown parameter name"),
        (lambda m, x, u: (m, x, {"fc1.weight": torch.ones(2, 2)}), "shape"),
        (lambda m, x, u: (m, x, {k: torch.zeros_like(v) for k, v in u.items()}), "zero"),
        (lambda m, x, u: (m, x, {"fc1.bias": torch.full((6,), math.nan)}), "NaN"),
        (lambda m, x, u: (m, x.clone().fill_(math.inf), u), "inputs"),
        (lambda m, x, u: (m, x, {}), "zero"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(mutate, message):
    model, x = make("mlp")
    u = random_direction(model)
    m, xx, uu = mutate(model, x, u)
    with pytest.raises(ValueError, match=message):
        dd.read(m, xx, uu)


def test_non_finite_parameters_are_rejected():
    model, x = make("mlp")
    with torch.no_grad():
        model.fc2.weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="fc2.weight.*NaN"):
        dd.read(model, x, random_direction(model))


def test_non_floating_output_is_rejected():
    class Argmax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4, dtype=torch.float64)

        def forward(self, x):
            return self.fc(x).argmax(-1)

    with pytest.raises(ValueError, match="not a floating tensor"):
        dd.read(Argmax(), torch.randn(5, 3), {"fc.weight": torch.ones(4, 3)})


def test_unknown_likelihood_is_rejected():
    model, x = make("mlp")
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        dd.read(model, x, random_direction(model), likelihood="poisson")


def test_direction_objects_carry_predictions_into_the_read():
    model, x = make("mlp")
    d = dd.Direction(
        "d0",
        "fc1",
        random_direction(model),
        detector="random",
        predicted_kind="regular",
        predicted_order=1.0,
    )
    r = dd.read(model, x, d)
    assert (r.name, r.layer, r.detector, r.kind) == ("d0", "fc1", "random", "regular")
    assert r.matches_prediction is True
    assert r.order == pytest.approx(1.0, abs=0.05)


def test_float32_reads_of_the_cells_agree_with_float64():
    # The GPU path reads in float32; on CPU the same arithmetic checks the agreement.
    for cell in dd.constructed.read_cells(n_inputs=256):
        r32 = cell.read(dtype=torch.float32)
        r64 = cell.read()
        assert r32.kind == r64.kind, cell.name
        if math.isfinite(r64.order):
            assert abs(r32.order - r64.order) <= 0.05, cell.name


def test_read_on_device_spot_checks_low_precision_against_float64():
    model, x = make("mlp")
    dirs = [random_direction(model, seed=s) for s in range(6)]
    reads, check, device, dtype = dd.read_on_device(
        model, x, dirs, device="cpu", dtype=torch.float32, spot_check=3
    )
    assert (device, dtype) == ("cpu", "float32")
    assert check.indices == (0, 2, 5)
    assert check.kind_agreement == 1.0 and check.max_order_diff < 1e-3
    reads64, none, _, dtype64 = dd.read_on_device(model, x, dirs, device="cpu")
    assert none is None and dtype64 == "float64"
    for a, b in zip(reads, reads64, strict=True):
        assert a.fisher_base == pytest.approx(b.fisher_base, rel=1e-4)


def test_rho_fits_of_many_directions_equal_one_direction_at_a_time():
    """The vmapped CGLS gives each direction what its own run gives, including when
    directions stop at different iterations (rescalings reach ρ ≈ 0, random ones stall)."""
    model = ConvBN(batch_stats=False).eval()
    x = torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    fmodel = FunctionalModel(model, params, dict(model.named_buffers()))
    lik = get_likelihood("gaussian", 1.0)
    keys = ("conv1.weight", "conv1.bias", "bn.weight", "bn.bias")
    gen = torch.Generator().manual_seed(2)
    vectors = []
    for c in range(3):  # unit c's rescaling through the ReLU: conv1/bn scale up, conv2 down
        v = {k: torch.zeros_like(params[k]) for k in (*keys, "conv2.weight")}
        v["bn.weight"][c], v["bn.bias"][c] = params["bn.weight"][c], params["bn.bias"][c]
        v["conv2.weight"][:, c] = -params["conv2.weight"][:, c]
        vectors.append(v)
    for _ in range(2):
        vectors.append(
            {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in vectors[0].items()}
        )
    vectors = [
        {k: t / math.sqrt(sum(float((s * s).sum()) for s in v.values())) for k, t in v.items()}
        for v in vectors
    ]
    with torch.no_grad():
        # Same arithmetic; over many iterations CGLS amplifies rounding differences.
        for maxiter, rtol in ((3, 1e-12), (40, 1e-6)):
            kw = dict(g_ref=1.0, eps_flat=1e-20, maxiter=maxiter, explicit_max=0)
            many = [f.rho for f in rho_fits(fmodel, lik, ((x,), {}), vectors, **kw)]
            one = [correctability(fmodel, lik, ((x,), {}), v, **kw) for v in vectors]
            np.testing.assert_allclose(many, one, rtol=rtol, atol=1e-12)
    # Rescalings of live channels are gauges, generic directions are not; channel 2's
    # rescaling has D²f = 0 on these inputs (NaN: nothing to correct).
    assert max(many[:2]) < 1e-6 and math.isnan(many[2]) and min(many[3:]) > 0.05
    # The explicit Jacobian on the moved entries (SVD least squares) gives the minimum CGLS
    # converges to: ρ ≈ 0 to rounding for the rescalings, the same ρ for the others.
    with torch.no_grad():
        kw = dict(g_ref=1.0, eps_flat=1e-20)
        exact = [f.rho for f in rho_fits(fmodel, lik, ((x,), {}), vectors, **kw)]
        converged = [
            f.rho
            for f in rho_fits(
                fmodel, lik, ((x,), {}), vectors, **kw, explicit_max=0, maxiter=2000, rtol=1e-15
            )
        ]
    assert max(exact[:2]) < 1e-12 and math.isnan(exact[2])
    np.testing.assert_allclose(exact[3:], converged[3:], rtol=1e-8)


class _Square(torch.nn.Module):
    def forward(self, z):
        return z * z


def test_rho_confirms_a_stalled_cgls_exactly():
    """Two z² units of equal outgoing weight can be rotated into each other: a curved gauge
    (ρ = 0). CGLS stopped early leaves ρ above rho_gauge; the exact solve on the moved
    entries (``confirm_above``) replaces it and finds the orbit."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4, bias=False, dtype=torch.float64),
        _Square(),
        torch.nn.Linear(4, 1, bias=False, dtype=torch.float64),
    ).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 3, generator=gen, dtype=torch.float64))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.5, -0.7]], dtype=torch.float64))
    w = model[0].weight.detach()
    u = torch.zeros_like(w)
    u[0], u[1] = w[1], -w[0]  # the rotation's tangent in the plane of units 0 and 1
    u = {"0.weight": u / u.norm()}
    x = torch.randn(128, 3, generator=gen, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    fmodel = FunctionalModel(model, params, {})
    lik = get_likelihood("gaussian", 1.0)
    kw = dict(g_ref=1.0, eps_flat=1e-20, explicit_max=0, maxiter=1)
    with torch.no_grad():
        stopped = correctability(fmodel, lik, ((x,), {}), u, **kw)
        confirmed = correctability(fmodel, lik, ((x,), {}), u, **kw, confirm_above=0.05)
        exact = correctability(fmodel, lik, ((x,), {}), u, g_ref=1.0, eps_flat=1e-20)
    assert stopped > 0.05
    assert confirmed == exact and exact < 1e-12
    r = dd.read(model, x, u, radii=np.logspace(-4, 0, 17))
    assert abs(r.ray_order - 2.0) <= 0.05 and r.kind == "gauge"


def test_read_many_shows_progress_on_a_terminal_only(monkeypatch, capsys):
    """A progress bar over probe batches on a terminal; nothing extra off one (logs)."""
    import sys

    from dead_directions.nn.models import MLP

    read_module = sys.modules["dead_directions.core.read"]  # dd.read is the function

    torch.manual_seed(0)
    model = MLP(3, 4, 2)
    x = torch.randn(64, 3, dtype=torch.float64)
    u = dd.Direction("u", "fc1", {"fc1.weight": torch.ones(4, 3, dtype=torch.float64) / 12**0.5})
    dd.read_many(model, x, [u], batch_size=16)
    assert "probe batches" not in capsys.readouterr().err
    monkeypatch.setattr(read_module, "on_terminal", lambda: True)
    dd.read_many(model, x, [u], batch_size=16)
    err = capsys.readouterr().err
    assert "read: probe batches" in err
