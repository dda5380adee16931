"""Small models shared by tests: an MLP, a CNN and a transformer block (explicit attention)."""

import math

import torch
from torch import nn

from dead_directions.nn.constructed import MLP, Attention, ConvNet

DTYPE = torch.float64


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN x), then + MLP(LN x); explicit softmax attention."""

    def __init__(self, dim: int, heads: int, generator):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, dtype=DTYPE)
        self.attn = Attention(dim, heads, generator)
        self.ln2 = nn.LayerNorm(dim, dtype=DTYPE)
        self.fc1 = nn.Linear(dim, 2 * dim, dtype=DTYPE)
        self.fc2 = nn.Linear(2 * dim, dim, dtype=DTYPE)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not name.startswith("attn"):
                    fan = p.shape[1] if p.ndim > 1 else 1
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=DTYPE) / math.sqrt(fan))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


def make(name: str, seed: int = 0):
    """(model, inputs) for 'mlp', 'cnn' or 'block'."""
    gen = torch.Generator().manual_seed(seed)
    if name == "mlp":
        return MLP(3, 6, 4, "tanh", gen), torch.randn(64, 3, generator=gen, dtype=DTYPE)
    if name == "cnn":
        return ConvNet(gen), torch.randn(16, 1, 6, 6, generator=gen, dtype=DTYPE)
    if name == "block":
        return Block(4, 2, gen), torch.randn(8, 3, 4, generator=gen, dtype=DTYPE)
    raise KeyError(name)


def random_direction(model, seed: int = 1, names=None):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(p.shape, generator=gen, dtype=DTYPE)
        for k, p in model.named_parameters()
        if names is None or k in names
    }
