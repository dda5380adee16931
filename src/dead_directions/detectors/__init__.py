"""Pluggable detectors: where dead directions come from (METHOD §5), and ``detect``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from torch import nn

from dead_directions.core.direction import Direction
from dead_directions.detectors import attention, fisher_block, kfac, norms, random, units  # noqa: F401  (registers)
from dead_directions.detectors.registry import (
    Context,
    Entry,
    available,
    get,
    register,
    stable_seed,
    unregister,
)
from dead_directions.detectors.structure import ACTIVATION_ORDERS, is_attention, layer_type

# Which detectors run at a module of each type (the key: class name, or "attention" for a
# module with q/k child Linears). A detector is anchored at a module; its directions may
# live in a neighbour (``layernorm_kernel`` anchored at a LayerNorm lives in the consuming
# Linear). ``fisher_block`` is opt-in (cost); ``kfac`` is on for Linear/Conv.
DEFAULT_BY_LAYER_TYPE: dict[str, list[str]] = {
    "Linear": ["dead_unit", "duplicate_units", "relu_rescale", "softmax_shift", "kfac", "random"],
    "Conv1d": ["dead_unit", "duplicate_units", "relu_rescale", "random"],
    "Conv2d": ["dead_unit", "duplicate_units", "relu_rescale", "kfac", "random"],
    "LayerNorm": ["layernorm_kernel", "norm_input_scale"],
    "BatchNorm1d": ["norm_input_scale", "dead_unit", "relu_rescale"],
    "BatchNorm2d": ["norm_input_scale", "dead_unit", "relu_rescale"],
    "RMSNorm": ["norm_input_scale"],
    "attention": ["attention_qk"],
}

__all__ = [
    "ACTIVATION_ORDERS",
    "DEFAULT_BY_LAYER_TYPE",
    "Context",
    "Entry",
    "available",
    "detect",
    "get",
    "layer_type",
    "layers",
    "register",
    "stable_seed",
    "unregister",
]


def layers(model: nn.Module) -> list[str]:
    """The layer names a sweep fans out over, in ``named_modules()`` order.

    Every module that owns parameters directly, plus every attention module (whose
    ``attention_qk`` directions live in its q/k children). These are the values
    ``Direction.layer`` takes for the built-in detectors.
    """
    out = []
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or is_attention(module):
            out.append(name)
    return out


def _plan(model: nn.Module, detectors, wanted: set[str] | None) -> dict[str, list[str]]:
    """Detector name → anchor modules it runs at."""
    modules = dict(model.named_modules())
    if detectors is None or isinstance(detectors, Mapping):
        config = dict(DEFAULT_BY_LAYER_TYPE)
        if isinstance(detectors, Mapping):
            config.update({k: list(v) for k, v in detectors.items()})
        plan: dict[str, list[str]] = {}
        for name, module in modules.items():
            for det in config.get(layer_type(module), []):
                plan.setdefault(det, []).append(name)
    elif isinstance(detectors, str):
        raise ValueError(
            f"detectors: give a list of names, e.g. [{detectors!r}], or a mapping from layer "
            "type to names."
        )
    elif isinstance(detectors, Iterable):
        names = list(detectors)
        plan = {det: list(modules) for det in names}
    else:
        raise ValueError(
            "detectors: expected None (defaults), a list of detector names, or a mapping "
            f"from layer type to names; got {type(detectors).__name__}."
        )
    for det in plan:
        get(det)  # unknown names fail early, listing what exists
    if wanted is not None:
        plan = {
            det: [a for a in anchors if not get(det).local or a in wanted]
            for det, anchors in plan.items()
        }
    return plan


def detect(
    model: nn.Module,
    inputs,
    *,
    detectors=None,
    layers: Iterable[str] | None = None,
    max_per_layer: int | None = None,
    seed: int = 0,
    output: Callable | None = None,
    likelihood="gaussian",
    context: Context | None = None,
    **options,
) -> list[Direction]:
    """Run detectors on a model and its probe data; return their directions.

    ``detectors``: None (``DEFAULT_BY_LAYER_TYPE``), a list of registered names (each run
    at every module; a detector returns nothing where it does not apply), or a mapping
    from layer type to names (overriding the defaults per type). ``layers``: keep only
    directions whose ``layer`` is one of these module names. ``max_per_layer`` caps each
    detector's directions per layer (default: the detector's own). ``seed`` makes every
    random choice deterministic. ``output``/``likelihood`` as in ``dd.read``. Extra
    ``options`` reach detectors through ``ctx.option``: ``name={...}`` for one detector,
    or a plain key for all. Names are ``"{detector}:{layer}:{index}"``, unique per model.
    ``context``: the :class:`Context` of an earlier call (``dd.detectors.Context(model,
    inputs, ...)`` with this call's inputs, likelihood, output, seed, max_per_layer and
    options) to reuse its float64 probe batches, traced module graph and caches: detecting
    the layers of one model one call at a time then costs one trace, and each call returns
    what a fresh call would.
    """
    modules = dict(model.named_modules())
    wanted = None
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        wanted = set(layers)
        unknown = sorted(wanted - set(modules))
        if unknown:
            raise ValueError(
                f"layers: {unknown} are not module names of the model; see "
                "dd.detectors.layers(model)."
            )
    plan = _plan(model, detectors, wanted)
    if context is None:
        ctx = Context(
            model,
            inputs,
            likelihood=likelihood,
            output=output,
            seed=seed,
            max_per_layer=max_per_layer,
            options=options,
        )
    else:
        ctx = context
        made = (ctx.model, ctx.output, ctx.seed, ctx.max_per_layer, ctx.options)
        if made != (model, output, int(seed), max_per_layer, dict(options)):
            raise ValueError(
                "context: made for another model, output, seed, max_per_layer or options "
                "than this call's; make one with the call's own (dd.detectors.Context)."
            )
    ctx.plan = plan
    params = set(ctx.params)
    found: dict[str, Direction] = {}
    for det, anchors in plan.items():
        entry = get(det)
        for anchor in anchors:
            if _width_zero(modules[anchor]):
                continue
            for d in entry.fn(ctx, anchor) or []:
                d = _checked(d, entry, anchor, modules, params)
                if wanted is not None and d.layer not in wanted:
                    continue
                if d.name in found:
                    if found[d.name].detector != d.detector or found[d.name].layer != d.layer:
                        raise ValueError(
                            f"detector {det!r} returned a direction named {d.name!r}, a name "
                            f"already used by detector {found[d.name].detector!r}."
                        )
                    continue  # the same direction reached from another anchor
                found[d.name] = d
    return list(found.values())


def _width_zero(module: nn.Module) -> bool:
    """A layer pruned to width 0 (a parameter with no entries): no units, no directions.
    Detectors are not called there (a pruned block whose every unit died keeps a
    Linear(d, 0) → Linear(0, d) pair that only adds the second bias)."""
    return any(p.numel() == 0 for p in module.parameters(recurse=False))


def _checked(d, entry: Entry, anchor: str, modules, params) -> Direction:
    if not isinstance(d, Direction):
        raise ValueError(
            f"detector {entry.name!r} at {anchor!r} returned a {type(d).__name__}, not a "
            "dd.Direction."
        )
    if d.detector == "user":
        d = replace(d, detector=entry.name)
    if d.layer not in modules:
        raise ValueError(
            f"detector {entry.name!r}: direction {d.name!r} has layer {d.layer!r}, which is "
            "not a module name of the model."
        )
    unknown = sorted(set(d.vector) - params)
    if unknown:
        raise ValueError(
            f"detector {entry.name!r}: direction {d.name!r} names unknown parameters {unknown}."
        )
    if entry.local and d.layer != anchor:
        raise ValueError(
            f"detector {entry.name!r} is registered local but returned a direction in "
            f"{d.layer!r} when anchored at {anchor!r}."
        )
    return d
