"""Zoo architectures in float64: MLP, CNN, ViT, decoder-only transformer (explicit attention)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dead_directions.core.device import DTYPE


class Monomial(nn.Module):
    """Elementwise ``σ(z) = z^p``; ``order = p`` is the activation order at 0 (σ ~ z^p)."""

    def __init__(self, p: int):
        super().__init__()
        if int(p) != p or p < 1:
            raise ValueError(f"Monomial: the power p must be a positive integer, got {p!r}.")
        self.order = int(p)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z**self.order

    def extra_repr(self) -> str:
        return f"p={self.order}"


def activation(name: str) -> nn.Module:
    """An activation module by name: ``relu``, ``gelu``, ``tanh`` or ``z^p`` (:class:`Monomial`)."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name.startswith("z^") and name[2:].isdigit():
        return Monomial(int(name[2:]))
    raise ValueError(
        f"unknown activation {name!r}; use relu, gelu, tanh or z^p (p a positive int)."
    )


def activation_order(name: str) -> int:
    """The order p of ``σ(z) ~ z^p`` at 0 of a named activation (1 for relu/gelu/tanh)."""
    module = activation(name)
    return int(getattr(module, "order", 1))


class MLP(nn.Module):
    """Two-layer perceptron ``fc2(act(fc1(x)))``: input ``(N, d_in)`` → output ``(N, d_out)``."""

    def __init__(self, d_in: int, hidden: int, d_out: int, act: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden, dtype=DTYPE)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, d_out, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNet(nn.Module):
    """Digits classifier: 2 × (conv 3×3 → BatchNorm → ReLU → max-pool 2) → flatten → linear.

    Input ``(N, 1, 8, 8)`` images; output ``(N, classes)`` logits. ``channels`` is the width
    of the first conv (the second has twice as many).
    """

    def __init__(self, channels: int, classes: int = 10):
        super().__init__()
        c1, c2 = channels, 2 * channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, dtype=DTYPE)
        self.bn1 = nn.BatchNorm2d(c1, dtype=DTYPE)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, dtype=DTYPE)
        self.bn2 = nn.BatchNorm2d(c2, dtype=DTYPE)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2 * 2 * 2, classes, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention written out: ``o(softmax(Q Kᵀ/√d_h [+ causal mask]) V)``.

    Separate ``q``, ``k``, ``v`` and output ``o`` linears; ``heads`` heads of size
    ``dim // heads``. No fused kernel (forward-mode AD must work). Input ``(N, S, dim)``;
    output ``(N, S, dim)``, or ``(N, 1, dim)`` for the last query only (``last_only``).
    """

    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SelfAttention: dim {dim} is not divisible by heads {heads}.")
        self.heads, self.head_dim, self.causal = heads, dim // heads, causal
        self.q = nn.Linear(dim, dim, dtype=DTYPE)
        self.k = nn.Linear(dim, dim, dtype=DTYPE)
        self.v = nn.Linear(dim, dim, dtype=DTYPE)
        self.o = nn.Linear(dim, dim, dtype=DTYPE)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        n, s, _ = x.shape

        def split(z):
            return z.reshape(n, z.shape[1], self.heads, self.head_dim).transpose(1, 2)

        q = split(self.q(x[:, -1:] if last_only else x))
        k, v = split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if self.causal and not last_only:  # the last query sees every position anyway
            mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        att = torch.softmax(scores, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(n, q.shape[2], -1))


class FeedForward(nn.Module):
    """Transformer MLP ``fc2(act(fc1(x)))`` with hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, dtype=DTYPE)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1 x)``, then ``+ mlp(ln2 x)``."""

    def __init__(self, dim: int, heads: int, hidden: int, act: str, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, dtype=DTYPE)
        self.attn = SelfAttention(dim, heads, causal=causal)
        self.ln2 = nn.LayerNorm(dim, dtype=DTYPE)
        self.mlp = FeedForward(dim, hidden, act)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``(N, S, dim)`` → ``(N, S, dim)``, or ``(N, 1, dim)`` at the last position only."""
        x = (x[:, -1:] if last_only else x) + self.attn(self.ln1(x), last_only=last_only)
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Vision transformer on small images: non-overlapping ``patch × patch`` patches.

    Input ``(N, 1, H, W)``; patches → ``patch_embed`` (Linear) + learned ``pos``; ``depth``
    pre-LN blocks (GELU MLP of width ``hidden``); mean over tokens → ``ln`` → ``head``.
    Output ``(N, classes)`` logits.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        hidden: int,
        image: int = 8,
        patch: int = 2,
        classes: int = 10,
    ):
        super().__init__()
        self.patch, self.tokens = patch, (image // patch) ** 2
        self.patch_embed = nn.Linear(patch * patch, dim, dtype=DTYPE)
        self.pos = nn.Parameter(0.02 * torch.randn(self.tokens, dim, dtype=DTYPE))
        self.blocks = nn.ModuleList(
            Block(dim, heads, hidden, "gelu", causal=False) for _ in range(depth)
        )
        self.ln = nn.LayerNorm(dim, dtype=DTYPE)
        self.head = nn.Linear(dim, classes, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.patch_embed(x.reshape(n, self.tokens, c * p * p)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x.mean(dim=1)))


class DecoderTransformer(nn.Module):
    """Decoder-only transformer (causal, pre-LN) returning the last position's logits.

    Input token ids ``(N, S)`` (int64, ``S ≤ context``); output ``(N, classes)`` logits at
    the last position. ``embed`` (vocab × dim) + learned ``pos``; ``depth`` blocks with a
    ``act`` MLP of width ``hidden``; final ``ln`` → ``unembed``. The last block computes the
    last position only (the same logits as the full causal stack, at a third of the cost).
    """

    def __init__(
        self,
        vocab: int,
        classes: int,
        dim: int,
        depth: int,
        heads: int,
        hidden: int,
        context: int = 3,
        act: str = "relu",
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, dtype=DTYPE)
        self.pos = nn.Parameter(0.02 * torch.randn(context, dim, dtype=DTYPE))
        self.blocks = nn.ModuleList(
            Block(dim, heads, hidden, act, causal=True) for _ in range(depth)
        )
        self.ln = nn.LayerNorm(dim, dtype=DTYPE)
        self.unembed = nn.Linear(dim, classes, dtype=DTYPE)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=i == len(self.blocks) - 1)
        return self.unembed(self.ln(x[:, -1]))
