"""Likelihood heads: the output-space metric Λ of the exact Fisher F = E_x[Jᵀ Λ J]."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Likelihood:
    """A likelihood head, represented by a square root ``M`` of its output metric Λ.

    ``whiten(y, v)`` returns ``M(y) v`` with ``M(y)ᵀ M(y) = Λ(y)``, for network outputs
    ``y`` and output tangents ``v`` of the same shape ``(batch, ..., classes)``, so that
    the directional Fisher is ``E_x ‖M J u‖²`` (summed over all non-batch axes).

    * ``gaussian``: ``y ~ N(f, σ² I)``, ``Λ = I / σ²``, ``M = I / σ``.
    * ``categorical``: ``y ~ softmax(f)`` over the last axis, ``Λ = diag π − π πᵀ``,
      ``M v = √π ⊙ (v − ⟨π, v⟩ 1)``.
    """

    name: str
    sigma: float = 1.0

    def whiten(self, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.name == "gaussian":
            return v / self.sigma
        pi = torch.softmax(y, dim=-1)
        centred = v - (pi * v).sum(dim=-1, keepdim=True)
        return pi.sqrt() * centred

    @property
    def needs_primal(self) -> bool:
        """Whether ``whiten`` depends on the outputs (not only on the tangents)."""
        return self.name != "gaussian"


LIKELIHOODS = ("gaussian", "categorical")


def get_likelihood(name, sigma: float = 1.0) -> Likelihood:
    """Look up a likelihood head by name; ``sigma`` is the Gaussian noise scale."""
    if isinstance(name, Likelihood):
        return name
    if name not in LIKELIHOODS:
        raise ValueError(
            f"unknown likelihood {name!r}; choose one of {LIKELIHOODS} (the exact Fisher of "
            "the model's own predictive distribution)."
        )
    if not (sigma > 0 and torch.isfinite(torch.tensor(float(sigma)))):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}.")
    return Likelihood(name=name, sigma=float(sigma))
