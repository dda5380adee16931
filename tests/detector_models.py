"""Constructed models for the detector tests: each contains (or lacks) one structure."""

import math

import torch
from torch import nn

DTYPE = torch.float64


class Monomial(nn.Module):
    """σ(z) = z^p, with the ``order`` attribute the detectors read (as in the zoo)."""

    def __init__(self, order: int):
        super().__init__()
        self.order = order

    def forward(self, z):
        return z**self.order


class RMSNorm(nn.Module):
    """A hand-written RMSNorm (class name ends in RMSNorm; no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=DTYPE))
        self.eps = eps

    def forward(self, x):
        return self.weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps)


def _init(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            fan = p.shape[1:].numel() if p.ndim > 1 else 10
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) / math.sqrt(fan))


class NormMLP(nn.Module):
    """fc → norm → head, with norm ∈ {layernorm, rmsnorm}; γ, β random (non-trivial)."""

    def __init__(self, norm: str = "layernorm", d_in: int = 3, hidden: int = 6, d_out: int = 2):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.fc = nn.Linear(d_in, hidden, dtype=DTYPE)
        self.norm = nn.LayerNorm(hidden, dtype=DTYPE) if norm == "layernorm" else RMSNorm(hidden)
        self.head = nn.Linear(hidden, d_out, dtype=DTYPE)
        _init(self, gen)
        with torch.no_grad():
            self.norm.weight.copy_(1.0 + 0.3 * torch.randn(hidden, generator=gen, dtype=DTYPE))

    def forward(self, x):
        return self.head(self.norm(self.fc(x)))


class UnitMLP(nn.Module):
    """fc1 → activation (module or functional) → fc2, with hidden units to plant."""

    def __init__(self, activation, d_in: int = 4, hidden: int = 6, d_out: int = 3, seed: int = 2):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(d_in, hidden, dtype=DTYPE)
        self.act = activation if isinstance(activation, nn.Module) else None
        self.fn = None if isinstance(activation, nn.Module) else activation
        self.fc2 = nn.Linear(hidden, d_out, dtype=DTYPE)
        _init(self, gen)

    def forward(self, x):
        h = self.fc1(x)
        h = self.act(h) if self.act is not None else self.fn(h)
        return self.fc2(h)


def activation(name: str):
    return {
        "relu": nn.ReLU(),
        "tanh": nn.Tanh(),
        "gelu": nn.GELU(),
        "z^2": Monomial(2),
        "z^3": Monomial(3),
        "relu-functional": torch.relu,
    }[name]


def dead_mlp(name: str) -> UnitMLP:
    """UnitMLP with unit 0 silent on all data (ReLU: bias −100; otherwise zero incoming)
    and unit 3 with zero outgoing weights."""
    model = UnitMLP(activation(name))
    with torch.no_grad():
        if name.startswith("relu"):
            model.fc1.bias[0] = -100.0
        else:
            model.fc1.weight[0] = 0.0
            model.fc1.bias[0] = 0.0
        model.fc2.weight[:, 3] = 0.0
    return model


def duplicate_mlp(name: str = "relu") -> UnitMLP:
    """UnitMLP with unit 1 a copy of unit 0, and (ReLU) unit 4 = 2.5 × unit 2."""
    model = UnitMLP(activation(name))
    with torch.no_grad():
        model.fc1.weight[1] = model.fc1.weight[0]
        model.fc1.bias[1] = model.fc1.bias[0]
        if name == "relu":
            model.fc1.weight[4] = 2.5 * model.fc1.weight[2]
            model.fc1.bias[4] = 2.5 * model.fc1.bias[2]
    return model


class ConvBN(nn.Module):
    """conv → BatchNorm2d → relu → conv → flatten; BN with batch or running statistics."""

    def __init__(self, batch_stats: bool, channels: int = 3):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, dtype=DTYPE)
        self.bn = nn.BatchNorm2d(channels, track_running_stats=not batch_stats, dtype=DTYPE)
        self.conv2 = nn.Conv2d(channels, 2, 3, dtype=DTYPE)
        _init(self, gen)
        if not batch_stats:
            return
        with torch.no_grad():
            self.bn.weight.copy_(1.0 + 0.2 * torch.randn(channels, generator=gen, dtype=DTYPE))

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).flatten(1)


class DeadConv(nn.Module):
    """conv → relu → maxpool → flatten → linear, with channel 1 silent (bias −100)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        gen = torch.Generator().manual_seed(4)
        self.conv = nn.Conv2d(1, channels, 3, padding=1, dtype=DTYPE)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels * 4, 2, dtype=DTYPE)
        _init(self, gen)
        with torch.no_grad():
            self.conv.bias[1] = -100.0

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def gaussian(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
