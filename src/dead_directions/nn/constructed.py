"""Constructed cells: small models whose dead directions have closed-form kind and order."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dead_directions.core.device import DTYPE
from dead_directions.core.direction import Direction, normalise
from dead_directions.core.read import read
from dead_directions.nn.models import Monomial


@dataclass(frozen=True, eq=False)
class Cell:
    """A constructed model, probe inputs and one direction with its closed-form read."""

    name: str
    description: str
    model: nn.Module
    inputs: torch.Tensor
    direction: Direction
    likelihood: str = "gaussian"

    def read(self, **options):

        return read(self.model, self.inputs, self.direction, likelihood=self.likelihood, **options)


def _scalar(value: float = 0.0) -> nn.Parameter:
    return nn.Parameter(torch.tensor(float(value), dtype=DTYPE))


class Affine(nn.Module):
    """``f(x) = a x + b``: every direction regular (k = 1)."""

    def __init__(self, a: float = 0.7, b: float = -0.3):
        super().__init__()
        self.a, self.b = _scalar(a), _scalar(b)

    def forward(self, x):
        return self.a * x + self.b


class Product(nn.Module):
    """``f(x) = a₁ ⋯ a_L x``: at 0, the diagonal direction has k = L."""

    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            setattr(self, f"a{i + 1}", _scalar())

    def forward(self, x):
        out = x
        for i in range(self.depth):
            out = getattr(self, f"a{i + 1}") * out
        return out


ACTIVATIONS: dict[str, tuple[Callable, int]] = {
    # name: (σ, order p of σ(z) ~ z^p at 0)
    "relu": (torch.relu, 1),
    "tanh": (torch.tanh, 1),
    "gelu": (nn.functional.gelu, 1),
    **{f"z^{p}": (Monomial(p), p) for p in range(1, 5)},
}


class NodeDeath(nn.Module):
    """``f(x) = a σ(w x)``: at (0, 0), direction (1, 1)/√2 has k = p + 1."""

    def __init__(self, activation: str, a: float = 0.0, w: float = 0.0):
        super().__init__()
        self.activation = activation
        self.a, self.w = _scalar(a), _scalar(w)

    def forward(self, x):
        return self.a * ACTIVATIONS[self.activation][0](self.w * x)


class MLP(nn.Module):
    """Two-layer perceptron ``W₂ σ(W₁ x + b₁) + b₂``."""

    def __init__(self, d_in: int, hidden: int, d_out: int, activation: str, generator):
        super().__init__()
        self.activation = activation
        self.fc1 = nn.Linear(d_in, hidden, dtype=DTYPE)
        self.fc2 = nn.Linear(hidden, d_out, dtype=DTYPE)
        _randomise(self, generator)

    def forward(self, x):
        return self.fc2(ACTIVATIONS[self.activation][0](self.fc1(x)))


class ConvNet(nn.Module):
    """Conv → ReLU → conv, flattened: a channel with zero weights in and out is dead."""

    def __init__(self, generator, channels: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, dtype=DTYPE)
        self.conv2 = nn.Conv2d(channels, 2, 3, dtype=DTYPE)
        _randomise(self, generator)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))).flatten(1)


class Attention(nn.Module):
    """Multi-head self-attention written out: softmax(Q Kᵀ/√d_h) V (forward-mode safe)."""

    def __init__(self, dim: int, heads: int, generator):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False, dtype=DTYPE)
        self.k = nn.Linear(dim, dim, bias=False, dtype=DTYPE)
        self.v = nn.Linear(dim, dim, dtype=DTYPE)
        self.o = nn.Linear(dim, dim, dtype=DTYPE)
        _randomise(self, generator)

    def forward(self, x):
        b, s, _ = x.shape

        def split(z):
            return z.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, s, -1))


class NormNet(nn.Module):
    """``v · LN(W x + b)``; LayerNorm with a random affine γ, β."""

    def __init__(self, d_in: int, hidden: int, d_out: int, generator):
        super().__init__()
        self.fc = nn.Linear(d_in, hidden, dtype=DTYPE)
        self.norm = nn.LayerNorm(hidden, dtype=DTYPE)
        self.head = nn.Linear(hidden, d_out, dtype=DTYPE)
        _randomise(self, generator)
        with torch.no_grad():
            self.norm.weight.copy_(
                1.0 + 0.3 * torch.randn(hidden, generator=generator, dtype=DTYPE)
            )
            self.norm.bias.copy_(0.3 * torch.randn(hidden, generator=generator, dtype=DTYPE))

    def forward(self, x):
        return self.head(self.norm(self.fc(x)))


class Linear(nn.Module):
    """``f(x) = W x + b``, read as logits."""

    def __init__(self, d_in: int, classes: int, generator):
        super().__init__()
        self.fc = nn.Linear(d_in, classes, dtype=DTYPE)
        _randomise(self, generator)

    def forward(self, x):
        return self.fc(x)


def _randomise(module: nn.Module, generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[1:].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=generator, dtype=DTYPE) / math.sqrt(fan_in))


def _gaussian(generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=DTYPE)


def _dir(name, layer, vector, kind, order, base=None) -> Direction:
    return Direction(
        name=name,
        layer=layer,
        vector=vector,
        detector="cell",
        predicted_kind=kind,
        predicted_order=order,
        base=base,
    )


def _diagonal(names) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(1.0 / math.sqrt(len(names)), dtype=DTYPE) for n in names}


def read_cells(n_inputs: int = 512, seed: int = 0) -> list[Cell]:
    """Every constructed cell of METHOD §4 and more, with predicted kind and order."""
    gen = torch.Generator().manual_seed(seed)
    x1 = _gaussian(gen, n_inputs, 1)
    cells: list[Cell] = []

    def add(name, description, model, inputs, direction, likelihood="gaussian"):
        cells.append(Cell(name, description, model, inputs, direction, likelihood))

    add(
        "regular",
        "a x + b at a generic point, direction (1, 1)/√2",
        Affine(),
        x1,
        _dir("regular", "", _diagonal(["a", "b"]), "regular", 1.0),
    )
    for depth in range(1, 6):
        names = [f"a{i + 1}" for i in range(depth)]
        kind = "regular" if depth == 1 else "singular"
        add(
            f"product-{depth}",
            f"a1⋯a{depth} x at 0, diagonal direction",
            Product(depth),
            x1,
            _dir(f"product-{depth}", "", _diagonal(names), kind, float(depth)),
        )
    for act, (_, p) in ACTIVATIONS.items():
        add(
            f"node-death-{act}",
            f"a {act}(w x) at (0, 0), direction (1, 1)/√2; σ ~ z^{p}",
            NodeDeath(act),
            x1,
            _dir(f"node-death-{act}", "", _diagonal(["a", "w"]), "singular", float(p + 1)),
        )
    offset = 1e-3
    add(
        "node-death-z^2-offset",
        f"a (w x)² with the base offset by {offset:g} from the locus (upper plateau k = 3)",
        NodeDeath("z^2", a=offset, w=offset),
        x1,
        _dir("node-death-z^2-offset", "", _diagonal(["a", "w"]), "singular", 3.0),
    )
    # Convolutional dead channel: channel 0's kernels in and out are zero at the base.
    conv = ConvNet(gen)
    c = 0
    v_in = torch.zeros_like(conv.conv1.weight)
    v_in[c] = _gaussian(gen, *conv.conv1.weight.shape[1:])
    v_out = torch.zeros_like(conv.conv2.weight)
    v_out[:, c] = _gaussian(gen, conv.conv2.weight.shape[0], *conv.conv2.weight.shape[2:])
    dead_base = {
        "conv1.weight": _mask_channel(conv.conv1.weight, c, axis=0),
        "conv1.bias": _mask_channel(conv.conv1.bias, c, axis=0),
        "conv2.weight": _mask_channel(conv.conv2.weight, c, axis=1),
    }
    add(
        "conv-dead-channel",
        "conv→relu→conv with channel 0 zeroed in and out; its in/out kernels",
        conv,
        _gaussian(gen, n_inputs, 1, 6, 6),
        _dir(
            "conv-dead-channel",
            "conv1",
            {"conv1.weight": v_in, "conv2.weight": v_out},
            "singular",
            2.0,
            base=dead_base,
        ),
    )
    mlp = MLP(3, 4, 2, "relu", gen)
    j = 1
    vec = {
        "fc1.weight": _row(mlp.fc1.weight, j, axis=0),
        "fc1.bias": _row(mlp.fc1.bias, j, axis=0),
        "fc2.weight": -_row(mlp.fc2.weight, j, axis=1),
    }
    add(
        "relu-rescale",
        "2-layer ReLU MLP, hidden unit 1 scaled (c·in, out/c): orbit tangent",
        mlp,
        _gaussian(gen, n_inputs, 3),
        _dir("relu-rescale", "fc1", vec, "gauge", math.inf),
    )
    att = Attention(4, 2, gen)
    block = torch.zeros(4, 4, dtype=DTYPE)
    for h in range(2):
        block[2 * h : 2 * h + 2, 2 * h : 2 * h + 2] = _gaussian(gen, 2, 2)
    vec = {"q.weight": block.T @ att.q.weight.detach(), "k.weight": -block @ att.k.weight.detach()}
    add(
        "attention-qk",
        "self-attention, (W_Q, W_K) → (Aᵀ W_Q, A⁻¹ W_K) per head: orbit tangent",
        att,
        _gaussian(gen, n_inputs // 8, 5, 4),
        _dir("attention-qk", "q", vec, "gauge", math.inf),
    )
    norm = NormNet(3, 5, 2, gen)
    add(
        "layernorm-input-scale",
        "v·LN(W x + b), direction (W, b)/‖(W, b)‖",
        norm,
        _gaussian(gen, n_inputs, 3),
        _dir(
            "layernorm-input-scale",
            "fc",
            {
                "fc.weight": norm.fc.weight.detach().clone(),
                "fc.bias": norm.fc.bias.detach().clone(),
            },
            "gauge",
            math.inf,
        ),
    )
    row = _gaussian(gen, 3)
    add(
        "layernorm-mean-shift",
        "v·LN(W x + b), one row r added to every row of W (and c to every bias)",
        norm,
        _gaussian(gen, n_inputs, 3),
        _dir(
            "layernorm-mean-shift",
            "fc",
            {
                "fc.weight": torch.ones(5, 1, dtype=DTYPE) * row,
                "fc.bias": torch.ones(5, dtype=DTYPE),
            },
            "gauge",
            math.inf,
        ),
    )
    gamma, beta = norm.norm.weight.detach(), norm.norm.bias.detach()
    v = _gaussian(gen, 2)
    add(
        "layernorm-kernel",
        "LN then linear: W' = W + v (γ⁻¹)ᵀ, b' = b − v (γ⁻¹·β)",
        norm,
        _gaussian(gen, n_inputs, 3),
        _dir(
            "layernorm-kernel",
            "head",
            {
                "head.weight": torch.outer(v, 1.0 / gamma),
                "head.bias": -v * float((beta / gamma).sum()),
            },
            "gauge",
            math.inf,
        ),
    )
    lin = Linear(3, 4, gen)
    add(
        "softmax-shift",
        "softmax(W x + b), b along the all-ones vector (categorical)",
        lin,
        _gaussian(gen, n_inputs, 3),
        _dir("softmax-shift", "fc", {"fc.bias": torch.ones(4, dtype=DTYPE)}, "gauge", math.inf),
        likelihood="categorical",
    )
    tanh_mlp = MLP(3, 5, 2, "tanh", gen)
    add(
        "random-direction",
        "2-layer tanh MLP at random weights, a random direction over all parameters",
        tanh_mlp,
        _gaussian(gen, n_inputs, 3),
        _dir(
            "random-direction",
            "",
            {k: _gaussian(gen, *p.shape) for k, p in tanh_mlp.named_parameters()},
            "regular",
            1.0,
        ),
    )
    return cells


WIDTH_CELL_KINDS = (
    "node-death-tanh",
    "node-death-gelu",
    "relu-rescale",
    "z^2-rotation",
    "attention-qk",
    "tanh-split",
)


def width_cells(
    width: int,
    n_inputs: int = 512,
    seed: int = 0,
    noise: float = 0.0,
    kinds: tuple[str, ...] = WIDTH_CELL_KINDS,
) -> list[Cell]:
    """The cells of :data:`WIDTH_CELL_KINDS` at one width (issue 16, METHOD §3 rule 2).

    MLP 3→``width``→2 on ``n_inputs`` Gaussian inputs: a node death (unit 0's incoming
    weights, bias and outgoing weights zero at the base; the direction moves them, k = 2)
    for tanh and GELU; a live ReLU unit's rescaling (curved gauge); a z² network whose
    units 0 and 1 have equal outgoing weights, rotated into each other (curved gauge).
    Attention of model width ``width`` (heads of dimension 2) on ``n_inputs`` sequences of
    5 tokens: the ``W_Q A, W_K A^{-T}`` orbit tangent (curved gauge). A tanh MLP whose
    units 0 and 1 are duplicates (same weights in and out), split apart (``w₀ + v``,
    ``w₁ − v``): the ray leaves at second order, and unlike the z² rotation no first-order
    move of those weights absorbs it (tanh''/tanh' is not linear in x), a genuine k = 2
    with a nontrivial ρ. ``noise``: dense
    Gaussian noise over every parameter of the model added to each direction, of norm
    ``noise`` relative to the direction's (a direction whose exact zeros are not zero).
    ``kinds``: which of :data:`WIDTH_CELL_KINDS` to build (the rest are skipped, but every
    model is drawn, so a cell is the same whichever others are asked for).
    """
    unknown = set(kinds) - set(WIDTH_CELL_KINDS)
    if unknown:
        raise ValueError(f"kinds: unknown {sorted(unknown)}; choose from {WIDTH_CELL_KINDS}.")
    if width < 2:
        raise ValueError(f"width must be at least 2 (two units for the rotation), got {width}.")
    gen = torch.Generator().manual_seed(seed)
    x = _gaussian(gen, n_inputs, 3)
    cells: list[Cell] = []

    def add(name, model, inputs, vector, kind, order, base=None):
        if noise:
            norm = math.sqrt(sum(float((v * v).sum()) for v in vector.values()))
            dense = {k: _gaussian(gen, *p.shape) for k, p in model.named_parameters()}
            scale = noise * norm / math.sqrt(sum(float((v * v).sum()) for v in dense.values()))
            vector = {k: vector.get(k, 0) + scale * v for k, v in dense.items()}
        if name not in kinds:
            return
        direction = _dir(f"{name}-w{width}", "fc1", vector, kind, order, base=base)
        cells.append(Cell(f"{name}-w{width}", f"{name} at width {width}", model, inputs, direction))

    for act in ("tanh", "gelu"):
        mlp = MLP(3, width, 2, act, gen)
        base = {
            "fc1.weight": _mask_channel(mlp.fc1.weight, 0, axis=0),
            "fc1.bias": _mask_channel(mlp.fc1.bias, 0, axis=0),
            "fc2.weight": _mask_channel(mlp.fc2.weight, 0, axis=1),
        }
        vec = {
            "fc1.weight": _row(_gaussian(gen, width, 3), 0, axis=0),
            "fc1.bias": _row(_gaussian(gen, width), 0, axis=0),
            "fc2.weight": _row(_gaussian(gen, 2, width), 0, axis=1),
        }
        add(f"node-death-{act}", mlp, x, vec, "singular", 2.0, base)
    mlp = MLP(3, width, 2, "relu", gen)
    vec = {
        "fc1.weight": _row(mlp.fc1.weight, 0, axis=0),
        "fc1.bias": _row(mlp.fc1.bias, 0, axis=0),
        "fc2.weight": -_row(mlp.fc2.weight, 0, axis=1),
    }
    add("relu-rescale", mlp, x, vec, "gauge", math.inf)
    square = MLP(3, width, 2, "z^2", gen)
    with torch.no_grad():
        square.fc2.weight[:, 1] = square.fc2.weight[:, 0]
    w, b = square.fc1.weight.detach(), square.fc1.bias.detach()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    vw[0], vw[1], vb[0], vb[1] = w[1], -w[0], b[1], -b[0]
    add("z^2-rotation", square, x, {"fc1.weight": vw, "fc1.bias": vb}, "gauge", math.inf)
    att = Attention(width, max(1, width // 2), gen)
    block = torch.zeros(width, width, dtype=DTYPE)
    for h in range(att.heads):
        sl = slice(h * att.head_dim, (h + 1) * att.head_dim)
        block[sl, sl] = _gaussian(gen, att.head_dim, att.head_dim)
    vec = {"q.weight": block.T @ att.q.weight.detach(), "k.weight": -block @ att.k.weight.detach()}
    add("attention-qk", att, _gaussian(gen, n_inputs, 5, width), vec, "gauge", math.inf)
    split = MLP(3, width, 2, "tanh", gen)
    with torch.no_grad():
        split.fc1.weight[1], split.fc1.bias[1] = split.fc1.weight[0], split.fc1.bias[0]
        split.fc2.weight[:, 1] = split.fc2.weight[:, 0]
    v = _gaussian(gen, 3)
    vw = torch.zeros_like(split.fc1.weight.detach())
    vw[0], vw[1] = v, -v
    add("tanh-split", split, x, {"fc1.weight": vw}, "singular", 2.0)
    return cells


def near_locus_cells(
    width: int,
    distance: float,
    activations: tuple[str, ...] = ("tanh", "gelu"),
    n_inputs: int = 512,
    seed: int = 0,
) -> list[Cell]:
    """Node death seen from near its locus: a trained network's nearly dead unit.

    The node-death models of :func:`width_cells` (MLP 3→``width``→2, ``n_inputs``
    Gaussian inputs) with unit 0's incoming weights, bias and outgoing weights equal to
    ``distance · û``, ``û`` the unit's randomly drawn weights there, normalised over all
    three tensors: the checkpoint lies ``distance`` from the node-death locus
    along ``û``, and the direction is ``û`` itself (no base: read at the checkpoint). The
    truth is the node death, singular k = 2: along the ray the unit's contribution is
    ``(δ + t)² â (ŵ·x + b̂)`` to leading order, so ``g`` is flat-ish below ``t ≈ δ`` and
    grows as ``t²`` above, and ``g(θ; û)`` is small but not zero (``J û ≠ 0``: û is not
    tangent to any orbit of constant function).

    What makes the cell hard: near the locus the activation is linear, so a first-order
    move of size ≈ 1/δ absorbs the ray's second-order departure and ρ ≈ 0 (≤ 1e-8 for δ ≤
    1e-3), as for a curved gauge. But û is no tangent to an orbit: ``J û`` is small only
    because every column of ``J`` on the unit's weights is (``RhoFit.support_magnitude``:
    against the largest first-order change of its correction space, û's is of order
    ``‖â‖²`` or more, where a tangent's is 0).
    """
    cells = []
    for act in activations:
        (cell,) = width_cells(width, n_inputs, seed, kinds=(f"node-death-{act}",))
        offsets = cell.direction.base  # unit 0's weights → 0
        unit = normalise({k: -v for k, v in offsets.items()})  # the unit's own weights
        with torch.no_grad():
            for k, p in cell.model.named_parameters():
                if k in unit:
                    p.add_(offsets[k] + distance * unit[k])
        name = f"near-locus-{act}-w{width}"
        direction = _dir(name, "fc1", unit, "singular", 2.0)
        description = f"{act} unit {distance:g} from its node death, width {width}"
        cells.append(Cell(name, description, cell.model, cell.inputs, direction))
    return cells


def _mask_channel(weight: torch.Tensor, channel: int, axis: int) -> torch.Tensor:
    """Offset that sets ``weight``'s slice ``channel`` along ``axis`` to zero."""
    offset = torch.zeros_like(weight.detach())
    index = [slice(None)] * weight.ndim
    index[axis] = channel
    offset[tuple(index)] = -weight.detach()[tuple(index)]
    return offset


def _row(weight: torch.Tensor, j: int, axis: int) -> torch.Tensor:
    """``weight`` with every slice but ``j`` along ``axis`` zeroed."""
    out = torch.zeros_like(weight.detach())
    index = [slice(None)] * weight.ndim
    index[axis] = j
    out[tuple(index)] = weight.detach()[tuple(index)]
    return out
