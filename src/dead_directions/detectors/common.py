"""Helpers shared by detectors: unit vectors, names, norm-module tests, timing."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
from torch import nn

from dead_directions.core.direction import Direction
from dead_directions.detectors.structure import Event, step_of


def unit(vector: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``vector`` scaled to unit Euclidean length over all its tensors."""
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in vector.values()))
    if norm == 0.0:
        raise ValueError("internal: a detector built a zero direction.")
    return {k: v / norm for k, v in vector.items()}


def direction(
    detector: str,
    layer: str,
    index: int,
    vector: Mapping[str, torch.Tensor],
    *,
    kind: str | None,
    order: float | None,
    base: Mapping[str, torch.Tensor] | None = None,
    scale: float = 1.0,
    **meta,
) -> Direction:
    """A ``Direction`` named ``"{detector}:{layer}:{index}"`` with a unit vector."""
    return Direction(
        name=f"{detector}:{layer}:{index}",
        layer=layer,
        vector=unit(vector),
        detector=detector,
        predicted_kind=kind,
        predicted_order=order,
        # a dict is kept as it is: directions that share a base object (dead_unit's one
        # base per layer) are streamed together by dd.read_many (grouped by identity)
        base=(base if isinstance(base, dict) else dict(base)) if base else None,
        scale=scale,
        meta=meta,
    )


def orthonormal(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k ≤ n`` seeded orthonormal columns in R^n, shape (n, k)."""
    g = torch.randn(n, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def is_layernorm(module: nn.Module) -> bool:
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1
    return type(module).__name__.endswith("LayerNorm") and _vector_weight(module)


def is_rmsnorm(module: nn.Module) -> bool:
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return len(module.normalized_shape) == 1
    return type(module).__name__.endswith("RMSNorm") and _vector_weight(module)


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def is_norm(module: nn.Module) -> bool:
    return is_layernorm(module) or is_rmsnorm(module) or is_batchnorm(module)


def _vector_weight(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.ndim == 1


def is_linear_or_conv(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups == 1


def transparent(e: Event) -> bool:
    """Ops that pass a tensor on unchanged (dropout in eval, identity, casts)."""
    st = step_of(e)
    return st is not None and st.kind == "identity"


def row_preserving(e: Event) -> bool:
    """Ops that keep every last-axis row of their input intact (or select rows)."""
    st = step_of(e)
    return st is not None and st.kind in ("identity", "reshape", "select")


def single_call(ctx, layer: str) -> Event | None:
    calls = ctx.structure.calls.get(layer, [])
    return calls[0] if len(calls) == 1 else None


def used(ctx, names) -> bool:
    """Whether every parameter in ``names`` reaches the output on the probe batch."""
    return all(n in ctx.structure.used_params for n in names)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
