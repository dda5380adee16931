"""Detector registry and the per-call context detectors share (probe batches, structure, seeds)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch

from dead_directions.core.device import DTYPE
from dead_directions.core.direction import Direction
from dead_directions.core.fisher import Batch, FunctionalModel, iter_batches, prepare_batch
from dead_directions.core.likelihood import Likelihood, get_likelihood
from dead_directions.detectors.structure import trace

DetectorFn = Callable[["Context", str], Iterable[Direction]]


@dataclass(frozen=True)
class Entry:
    """A registered detector.

    ``fn(ctx, layer)`` returns the directions the detector finds when anchored at module
    ``layer`` (an empty list where it does not apply). ``local``: every direction it
    returns lives in ``layer`` itself, so :func:`detect` may skip anchors outside the
    requested layers; a non-local detector (e.g. ``layernorm_kernel`` anchored at the
    norm, whose directions live in the consuming Linear) is run on every anchor and its
    directions are filtered by their ``layer``.
    """

    name: str
    fn: DetectorFn
    local: bool = False
    description: str = ""


_REGISTRY: dict[str, Entry] = {}


def register(name: str, *, local: bool = False, replace: bool = False):
    """Decorator registering ``fn(ctx, layer) -> list[Direction]`` under ``name``.

    Third-party code registers its own detectors the same way; ``replace=True`` overrides
    an existing registration (otherwise a clash raises ``ValueError``).
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"detector name must be a non-empty string without ':', got {name!r}.")

    def wrap(fn: DetectorFn) -> DetectorFn:
        if name in _REGISTRY and not replace:
            raise ValueError(
                f"a detector named {name!r} is already registered; pick another name or pass "
                "replace=True."
            )
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Entry(name, fn, local, doc[0] if doc else "")
        return fn

    return wrap


def unregister(name: str) -> None:
    """Remove a registered detector (for tests and plugins that clean up)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Entry:
    """The registered detector ``name``; ``ValueError`` listing the available ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown detector {name!r}; available: {', '.join(available())}."
        ) from None


def available() -> list[str]:
    """Names of all registered detectors, sorted."""
    return sorted(_REGISTRY)


def stable_seed(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Context:
    """What one :func:`detect` call shares between detectors.

    ``batches``: the probe batches, cast to float64 (kept in memory: detectors make
    several passes). ``params``/``buffers``: the model's tensors in float64, detached.
    ``structure``: the traced module graph (computed on first use). ``options``: the
    keyword options of ``detect``; a detector reads its own with :meth:`option`, which
    looks in ``options[detector][key]`` first, then ``options[key]``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        inputs,
        *,
        likelihood="gaussian",
        output: Callable | None = None,
        seed: int = 0,
        max_per_layer: int | None = None,
        options: Mapping | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}.")
        if max_per_layer is not None and (not isinstance(max_per_layer, int) or max_per_layer < 1):
            raise ValueError(f"max_per_layer must be a positive integer, got {max_per_layer!r}.")
        self.model = model
        self.likelihood: Likelihood = get_likelihood(likelihood)
        self.output = output
        self.seed = int(seed)
        self.max_per_layer = max_per_layer
        self.options = dict(options or {})
        self.modules = dict(model.named_modules())
        self.params = {k: v.detach().to(DTYPE) for k, v in model.named_parameters()}
        if not self.params:
            raise ValueError("model has no parameters to detect directions in.")
        self.buffers = {
            k: (v.detach().to(DTYPE) if v.is_floating_point() else v.detach())
            for k, v in model.named_buffers()
        }
        self.batches: list[Batch] = [
            prepare_batch(b, DTYPE, next(iter(self.params.values())).device, i)
            for i, b in enumerate(iter_batches(inputs))
        ]
        self.cache: dict = {}

    @cached_property
    def structure(self):

        return trace(self)

    def fmodel(self, params: Mapping[str, torch.Tensor] | None = None) -> FunctionalModel:
        """The model evaluated functionally in float64 at ``params`` (default: its own)."""
        return FunctionalModel(self.model, dict(params or self.params), self.buffers, self.output)

    def option(self, detector: str, key: str, default=None):
        own = self.options.get(detector)
        if isinstance(own, Mapping) and key in own:
            return own[key]
        return self.options.get(key, default)

    def limit(self, detector: str, default: int) -> int:
        """Directions per layer: ``max_per_layer`` if given, else the detector's default."""
        if self.max_per_layer is not None:
            return self.max_per_layer
        return int(self.option(detector, "max_per_layer", default))

    def generator(self, *parts) -> torch.Generator:
        """A torch generator seeded by the call's ``seed`` and ``parts`` (deterministic)."""
        return torch.Generator().manual_seed(stable_seed(self.seed, *parts))

    def own_params(self, layer: str, recurse: bool = False) -> dict[str, torch.Tensor]:
        """Full names → float64 values of the parameters of module ``layer``."""
        module = self.modules[layer]
        prefix = f"{layer}." if layer else ""
        return {
            prefix + n: self.params[prefix + n] for n, _ in module.named_parameters(recurse=recurse)
        }
