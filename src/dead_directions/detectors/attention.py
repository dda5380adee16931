"""Curved gauge of dot-product attention: (W_Q, W_K) → (Aᵀ W_Q, A⁻¹ W_K) per head."""

from __future__ import annotations

import math

import torch

from dead_directions.detectors.common import Timer, direction, used
from dead_directions.detectors.registry import register
from dead_directions.detectors.structure import attention_parts


def _tangent(ctx, layer, q, k, blocks) -> dict[str, torch.Tensor]:
    """Orbit tangent for A = I + t·B with B block-diagonal (``blocks`` per head)."""
    vec = {}
    b_full = torch.block_diag(*blocks)
    for child, sign, mat in ((q, 1.0, b_full.T), (k, -1.0, b_full)):
        for part in ("weight", "bias"):
            name = f"{layer}.{child}.{part}"
            if name in ctx.params:
                vec[name] = sign * (mat @ ctx.params[name])
    return vec


def _invariant(ctx, layer, q, k, blocks, tol: float) -> bool:
    """f at (Aᵀ W_Q, A⁻¹ W_K) with A = I + 0.1 B equals f at the checkpoint (relative)."""
    a = torch.eye(sum(b.shape[0] for b in blocks), dtype=torch.float64) + 0.1 * torch.block_diag(
        *blocks
    )
    a_inv = torch.linalg.inv(a)
    moved = dict(ctx.params)
    for child, mat in ((q, a.T), (k, a_inv)):
        for part in ("weight", "bias"):
            name = f"{layer}.{child}.{part}"
            if name in moved:
                moved[name] = mat @ moved[name]
    args = ctx.batches[0]
    with torch.no_grad():
        y0 = ctx.fmodel()({}, args)
        y1 = ctx.fmodel(moved)({}, args)
    return float((y1 - y0).norm()) <= tol * float(y0.norm())


@register("attention_qk", local=True)
def attention_qk(ctx, layer: str):
    """Attention module (child Linears q/k, query/key or q_proj/k_proj): per head h,
    (W_Q, b_Q) → Aᵀ(W_Q, b_Q), (W_K, b_K) → A⁻¹(W_K, b_K) leaves q·k unchanged; the
    tangent (Bᵀ W_Q, −B W_K) for a seeded random B per head is predicted a (curved)
    gauge, order ∞. Without a known head count only A = c·I (valid for any head layout).

    Each orbit is checked on the probe batch (f at a finite A equals f): a module whose
    scores are not plain q·k (rotary embeddings, other head layouts) is caught there and
    falls back to the scalar orbit, or yields nothing.
    """
    module = ctx.modules[layer]
    parts = attention_parts(module)
    if parts is None:
        return []
    q, k, heads = parts
    qm, km = getattr(module, q), getattr(module, k)
    d = qm.out_features
    if km.out_features != d:
        return []
    if not used(ctx, [f"{layer}.{q}.weight", f"{layer}.{k}.weight"]):
        return []
    timer = Timer()
    tol = float(ctx.option("attention_qk", "tol", 1e-9))
    gen = ctx.generator("attention_qk", layer)
    n = ctx.limit("attention_qk", 2)
    candidates = []
    if heads is not None and d % heads == 0:
        hd = d // heads
        for _ in range(n):
            blocks = [torch.randn(hd, hd, generator=gen, dtype=torch.float64) for _ in range(heads)]
            candidates.append(("heads", blocks))
    out = []
    if candidates and _invariant(ctx, layer, q, k, candidates[0][1], tol):
        chosen = candidates
    else:
        chosen = [("scalar", [torch.eye(d, dtype=torch.float64)])]
        if not _invariant(ctx, layer, q, k, chosen[0][1], tol):
            return []
    for i, (kind, blocks) in enumerate(chosen[:n]):
        out.append(
            direction(
                "attention_qk",
                layer,
                i,
                _tangent(ctx, layer, q, k, blocks),
                kind="gauge",
                order=math.inf,
                orbit=kind,
                heads=heads,
                seconds=timer.seconds,
                products=2,
            )
        )
    return out
