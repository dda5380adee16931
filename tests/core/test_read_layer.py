"""The read's layer-local path (suffix after the layer only) against a plain torch.func.jvp
of the whole network, on zoo transformers, and its fall-back where it cannot apply."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

import dead_directions as dd
import dead_directions.zoo  # noqa: F401  (registers dd.zoo)
from dead_directions.core.fisher import (
    FrozenWeightMode,
    FunctionalModel,
    LayerSuffix,
    local_layer,
    squared_norms,
)
from dead_directions.core.likelihood import get_likelihood

RADII = [1e-3, 1e-2, 1e-1, 1.0]


def plain_curve(model, x, u, likelihood):
    """g(θ + t u; u) at t = 0 and RADII from one jvp of the whole model per radius."""
    lik = get_likelihood(likelihood)
    params = {k: v.detach() for k, v in model.named_parameters()}
    norm = torch.sqrt(sum((v * v).sum() for v in u.values()))
    unit = {k: v / norm for k, v in u.items()}
    tangent = {k: unit.get(k, torch.zeros_like(v)) for k, v in params.items()}
    out = []
    with torch.no_grad():
        for t in [0.0, *RADII]:
            point = {k: v + t * tangent[k] for k, v in params.items()}
            y, dy = jvp(lambda p: functional_call(model, p, (x,)), (point,), (tangent,))
            out.append(float(squared_norms(lik, y, dy).mean()))
    return np.array(out)


def random_in(model, names, seed):
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {k: torch.randn(params[k].shape, generator=gen, dtype=torch.float64) for k in names}


@pytest.mark.parametrize("family", ["vit", "transformer", "cnn"])
def test_layer_path_equals_plain_jvp(family):
    fam = dd.zoo.get_family(family)
    model = fam.build(fam.sizes[0]).eval()
    if family == "cnn":  # non-trivial running statistics, as after training
        gen = torch.Generator().manual_seed(5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    x = fam.probe(24)
    kinds = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d)
    layers = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    dirs = []
    for i, layer in enumerate(layers):
        assert local_layer(model, (f"{layer}.weight", f"{layer}.bias")) == layer
        dirs.append(random_in(model, [f"{layer}.weight", f"{layer}.bias"], i))
    reads = dd.read_many(
        model,
        x,
        dirs,
        likelihood=fam.likelihood,
        radii=RADII,
        batch_size=10,
        options=dd.ReadOptions(correctability=False),
    )
    for u, r in zip(dirs, reads, strict=True):
        ref = plain_curve(model, dd.split_probe(x)[0], u, fam.likelihood)
        got = np.array([r.fisher_base, *r.fisher])
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)


class Tied(nn.Module):
    """``fc`` used as a module and, again, through its weight: not layer-local."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5, dtype=torch.float64)
        self.out = nn.Linear(5, 3, dtype=torch.float64)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x)) + F.linear(x, self.fc.weight))


class Twice(nn.Module):
    """``fc`` called twice: not layer-local."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5, dtype=torch.float64)
        self.out = nn.Linear(5, 3, dtype=torch.float64)

    def forward(self, x):
        return self.out(self.fc(torch.tanh(self.fc(x))))


@pytest.mark.parametrize("make", [Tied, Twice])
def test_fall_back_when_the_layer_is_not_one_call(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(16, 5, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    assert local_layer(model, ("fc.weight",)) == "fc"
    fmodel = FunctionalModel(model, params, {})
    assert LayerSuffix.trace(fmodel, ((x,), {}), "fc") is None
    u = random_in(model, ["fc.weight"], 0)
    r = dd.read(model, x, u, radii=RADII, options=dd.ReadOptions(correctability=False))
    ref = plain_curve(model, dd.split_probe(x)[0], u, "gaussian")
    np.testing.assert_allclose([r.fisher_base, *r.fisher], ref, rtol=1e-12, atol=0)


def test_local_layer_needs_one_plain_linear_or_conv():
    fam = dd.zoo.get_family("vit")
    model = fam.build(fam.sizes[0])
    assert local_layer(model, ("head.weight",)) == "head"
    assert local_layer(model, ("head.weight", "patch_embed.weight")) is None
    assert local_layer(model, ("ln.weight", "ln.bias")) == "ln"  # affine in w, b for fixed x
    assert local_layer(model, ("pos",)) is None


class InPlace(nn.Module):
    """A recorded output changed in place after its call: the record cannot be replayed."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5, dtype=torch.float64)
        self.fc = nn.Linear(5, 5, dtype=torch.float64)
        self.out = nn.Linear(5, 3, dtype=torch.float64)

    def forward(self, x):
        h = self.a(x)
        h += 1.0
        return self.out(torch.tanh(self.fc(torch.tanh(h))) + h)


def test_fall_back_when_a_recorded_tensor_changes_in_place():
    torch.manual_seed(0)
    model = InPlace().eval()
    x = torch.randn(16, 5, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    assert LayerSuffix.trace(FunctionalModel(model, params, {}), ((x,), {}), "fc") is None
    u = random_in(model, ["fc.weight", "fc.bias"], 0)
    r = dd.read(model, x, u, radii=RADII, options=dd.ReadOptions(correctability=False))
    ref = plain_curve(model, dd.split_probe(x)[0], u, "gaussian")
    np.testing.assert_allclose([r.fisher_base, *r.fisher], ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("op", "weight_shape", "input_shape"),
    [
        (F.conv2d, (4, 3, 3, 3), (2, 3, 6, 6)),
        (F.conv2d, (4, 3, 3, 3), (3, 6, 6)),  # unbatched conv input
        (F.conv1d, (4, 3, 3), (2, 3, 9)),
        (F.linear, (4, 3), (2, 5, 3)),
    ],
)
def test_frozen_weight_op_under_vmap_equals_plain_jvp(op, weight_shape, input_shape):
    """The frozen-weight rule's own vmap (mapped axis folded into the batch) gives the
    same primal and tangent as PyTorch's rules, for mapped and for shared primals."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(weight_shape, generator=gen, dtype=torch.float64)
    b = torch.randn(weight_shape[0], generator=gen, dtype=torch.float64)
    x = torch.randn(7, *input_shape, generator=gen, dtype=torch.float64)
    x_t = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def f(z):
        return torch.tanh(op(z, w, b))

    def mapped(a, c):
        return jvp(f, (a,), (c,))

    def shared(c):
        return jvp(f, (x[0],), (c,))

    want, want_shared = vmap(mapped)(x, x_t), vmap(shared)(x_t)
    with FrozenWeightMode({id(w), id(b)}):
        got, got_shared = vmap(mapped)(x, x_t), vmap(shared)(x_t)
    for g, e in [*zip(got, want, strict=True), *zip(got_shared, want_shared, strict=True)]:
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
