"""Directions in parameter space: a unit vector spread over named parameter tensors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

# How close a measured order k̂ must be to an integer or predicted order k to count as k:
# a read matches its prediction, an assembly takes k̂ as exact, a prune confirms a unit.
ORDER_TOLERANCE = 0.05

KINDS = ("regular", "singular", "gauge", "undetermined", "unresolved")

#: A detector's base projection makes its prediction true there by construction (METHOD §5):
#: a read at the base counts as recovered only when the base lies within this distance of
#: the checkpoint, relative to the norm of the tensors it moves (``Read.base_distance``).
BASE_TOL = 1e-3


@dataclass(frozen=True, eq=False)
class Direction:
    """A direction ``u`` in parameter space, with its provenance and prediction.

    ``vector`` maps parameter names (as in ``model.named_parameters()``) to tensors of
    those parameters' shapes; names left out are zero. ``base`` optionally maps names
    to offsets added to the checkpoint before reading (the detector's projection onto
    the singular locus). ``scale`` multiplies the default radius grid (1e-4 … 1).
    ``predicted_order`` is ``math.inf`` for a gauge (the function is constant along
    its orbit) and ``None`` when the architecture predicts nothing.
    """

    name: str
    layer: str
    vector: Mapping[str, torch.Tensor]
    detector: str = "user"
    predicted_kind: str | None = None
    predicted_order: float | None = None
    base: Mapping[str, torch.Tensor] | None = None
    scale: float = 1.0
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.predicted_kind is not None and self.predicted_kind not in KINDS:
            raise ValueError(
                f"Direction {self.name!r}: predicted_kind {self.predicted_kind!r} is not one "
                f"of {KINDS}."
            )
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Direction {self.name!r}: scale must be a positive finite number.")

    @property
    def support(self) -> tuple[str, ...]:
        """Names of the parameter tensors the direction touches, sorted."""
        return tuple(sorted(self.vector))

    def with_vector(self, vector: Mapping[str, torch.Tensor]) -> Direction:
        return replace(self, vector=dict(vector))


def as_direction(direction, index: int = 0) -> Direction:
    """Accept a ``Direction`` or a plain mapping ``name -> tensor``."""
    if isinstance(direction, Direction):
        return direction
    if isinstance(direction, Mapping):
        return Direction(name=f"direction{index}", layer="", vector=dict(direction))
    raise ValueError(
        f"direction {index}: expected a dd.Direction or a mapping from parameter names to "
        f"tensors, got {type(direction).__name__}."
    )


def validate_offsets(
    what: str,
    offsets: Mapping[str, torch.Tensor],
    params: Mapping[str, torch.Tensor],
    *,
    allow_zero: bool,
) -> dict[str, torch.Tensor]:
    """Check names, shapes and finiteness of a mapping of parameter offsets.

    Returns the mapping with tensors detached and cast to each parameter's dtype and
    device. Raises ``ValueError`` naming the offending entry and the fix.
    """
    if not isinstance(offsets, Mapping):
        raise ValueError(f"{what}: expected a mapping from parameter names to tensors.")
    out = {}
    for name, value in offsets.items():
        if name not in params:
            close = [p for p in params if p.split(".")[-1] == str(name).split(".")[-1]][:5]
            hint = f" Did you mean one of {close}?" if close else ""
            raise ValueError(
                f"{what}: unknown parameter name {name!r}; use names from "
                f"model.named_parameters().{hint}"
            )
        value = torch.as_tensor(value)
        if not (value.is_floating_point() or value.is_complex()):
            value = value.to(params[name].dtype)
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(
                f"{what}: tensor for {name!r} has shape {tuple(value.shape)}, but the "
                f"parameter has shape {tuple(params[name].shape)}."
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"{what}: tensor for {name!r} contains NaN or infinite values.")
        out[name] = value.detach().to(dtype=params[name].dtype, device=params[name].device)
    if not allow_zero:
        sq = sum(float((v.double() ** 2).sum()) for v in out.values())
        if not out or sq == 0.0:
            raise ValueError(
                f"{what}: the direction is zero; give at least one non-zero entry (it is "
                "normalised to unit length)."
            )
    return out


def normalise(vector: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale a mapping of tensors to unit Euclidean length over all its entries."""
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in vector.values()))
    return {k: v / norm for k, v in vector.items()}
