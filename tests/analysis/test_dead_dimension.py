"""Dead dimension per layer (METHOD §7) on constructed models with known counts."""

import pytest
import torch
from torch import nn

from dead_directions.analysis.dead_dimension import DeadDimension, dead_dimension
from dead_directions.nn.models import MLP

DTYPE = torch.float64


def _random_(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE))


def _planted_mlp(d_in=3, hidden=6, d_out=2, seed=0):
    """tanh MLP with unit 0 dead (incoming, bias and outgoing weights 0) and unit 2 a
    duplicate of unit 1 (same incoming weights and bias, its own outgoing weights)."""
    gen = torch.Generator().manual_seed(seed)
    model = MLP(d_in, hidden, d_out, "tanh")
    _random_(model, gen)
    with torch.no_grad():
        model.fc1.weight[0] = 0.0
        model.fc1.bias[0] = 0.0
        model.fc2.weight[:, 0] = 0.0
        model.fc1.weight[2] = model.fc1.weight[1]
        model.fc1.bias[2] = model.fc1.bias[1]
    x = torch.randn(200, d_in, generator=gen, dtype=DTYPE)
    return model, x


def test_planted_dead_and_duplicate_units():
    """fc1: the dead unit's d_in + 1 incoming parameters move nothing (its outgoing weights
    are 0, so its back-propagated gradient is 0: a zero of G); the duplicate pair is not
    degenerate in fc1 (its two outgoing columns differ). fc2: its inputs hold a zero (the
    dead unit's activation) and two equal columns (the duplicates): rank A drops by 2, so
    2 · d_out dimensions are dead. K-FAC equals the exact Fisher-block count on both."""
    d_in, hidden, d_out = 3, 6, 2
    model, x = _planted_mlp(d_in, hidden, d_out)
    fc1 = dead_dimension(model, x, "fc1")
    fc2 = dead_dimension(model, x, "fc2")
    assert fc1.n_params == hidden * (d_in + 1) and fc2.n_params == d_out * (hidden + 1)
    assert (fc1.method, fc1.exact, fc1.kfac, fc1.dead) == ("exact", d_in + 1, d_in + 1, d_in + 1)
    assert (fc2.exact, fc2.kfac) == (2 * d_out, 2 * d_out)
    assert not fc1.data_limited and fc1.probe_rows == 200 * d_out
    assert fc2.fraction == pytest.approx(2 * d_out / fc2.n_params)


def test_generic_mlp_has_no_dead_dimension():
    gen = torch.Generator().manual_seed(3)
    model = MLP(3, 4, 2, "tanh")
    _random_(model, gen)
    x = torch.randn(100, 3, generator=gen, dtype=DTYPE)
    for layer in ("fc1", "fc2"):
        dd_ = dead_dimension(model, x, layer)
        assert (dd_.exact, dd_.kfac) == (0, 0)


class LNBlock(nn.Module):
    """Linear(3 → 4) → LayerNorm(4) → Linear(4 → 2)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4, dtype=DTYPE)
        self.ln = nn.LayerNorm(4, dtype=DTYPE)
        self.fc2 = nn.Linear(4, 2, dtype=DTYPE)

    def forward(self, x):
        return self.fc2(self.ln(self.fc1(x)))


def test_layernorm_then_linear():
    """The consumer of a LayerNorm sees inputs γ ⊙ n(x) + β with n(x) ⊥ 1: the bias-augmented
    inputs have a one-dimensional kernel ([γ⁻¹; −γ⁻¹·β]), so d_out = 2 dimensions of fc2
    are dead (K-FAC = exact). The producer fc1 has (d_in + 1) mean shifts (adding one row
    to all rows of [W b]) and the scale of [W b] itself: 4 + 1 = 5 exactly. K-FAC sees the
    shifts (1 ∈ ker G: LayerNorm's Jacobian kills the mean) but not the scale, which is
    not of product form: 4, a lower bound by exactly that direction."""
    gen = torch.Generator().manual_seed(1)
    model = LNBlock()
    _random_(model, gen)
    x = torch.randn(200, 3, generator=gen, dtype=DTYPE)
    fc2 = dead_dimension(model, x, "fc2")
    assert (fc2.exact, fc2.kfac) == (2, 2)
    fc1 = dead_dimension(model, x, "fc1")
    assert (fc1.exact, fc1.kfac) == (5, 4)
    ln = dead_dimension(model, x, "ln")
    assert ln.method == "exact" and ln.kfac is None and ln.n_params == 8


def test_softmax_head():
    """Under the categorical head Λ = diag π − ππᵀ kills the all-ones logit shift: the head's
    G has rank d_out − 1, so the head's d_in + 1 shift directions (W + 1 aᵀ, b + 1 c) are
    dead; the hidden layer has none. K-FAC equals the exact count."""
    gen = torch.Generator().manual_seed(2)
    model = MLP(3, 5, 4, "tanh")
    _random_(model, gen)
    x = torch.randn(150, 3, generator=gen, dtype=DTYPE)
    head = dead_dimension(model, x, "fc2", likelihood="categorical")
    assert (head.exact, head.kfac) == (5 + 1, 5 + 1)
    hidden = dead_dimension(model, x, "fc1", likelihood="categorical")
    assert (hidden.exact, hidden.kfac) == (0, 0)
    # Under the Gaussian head nothing is dead.
    assert dead_dimension(model, x, "fc2").exact == 0


def test_probe_size_bounds_the_rank():
    """A layer with more parameters than probe rows has a data-induced kernel: with 3
    samples × 2 outputs the Fisher block of a 10 → 2 Linear (22 parameters) has rank ≤ 6."""
    gen = torch.Generator().manual_seed(4)
    model = MLP(10, 2, 2, "tanh")
    _random_(model, gen)
    x = torch.randn(3, 10, generator=gen, dtype=DTYPE)
    fc1 = dead_dimension(model, x, "fc1")
    assert fc1.probe_rows == 6 and fc1.rank_cap == 6 and fc1.data_limited
    assert fc1.exact >= fc1.n_params - 6


def test_kfac_only_above_the_exact_size_and_errors():
    model, x = _planted_mlp()
    big = dead_dimension(model, x, "fc1", exact_max_params=4)
    assert (big.method, big.exact, big.kfac, big.dead) == ("kfac", None, 4, 4)
    assert isinstance(big, DeadDimension) and big.probe_rows == 200
    with pytest.raises(ValueError, match="not a module"):
        dead_dimension(model, x, "nope")
    with pytest.raises(ValueError, match="no parameters of its own"):
        dead_dimension(model, x, "act")
    with pytest.raises(ValueError, match="rtol"):
        dead_dimension(model, x, "fc1", rtol=0)
