"""Structural flat gauges of normalisation and softmax: layernorm_kernel, norm_input_scale,
softmax_shift."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from dead_directions.detectors.common import (
    Timer,
    direction,
    is_batchnorm,
    is_layernorm,
    is_linear_or_conv,
    is_norm,
    is_rmsnorm,
    orthonormal,
    row_preserving,
    used,
)
from dead_directions.detectors.registry import register
from dead_directions.detectors.structure import step_of

INF = math.inf


# -- layernorm_kernel ---------------------------------------------------------------------
def _gamma_beta(ctx, norm: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    module = ctx.modules[norm]
    prefix = f"{norm}." if norm else ""
    d = module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else module.weight.shape[0]
    w = ctx.params.get(prefix + "weight")
    b = ctx.params.get(prefix + "bias")
    gamma = w if w is not None else torch.ones(d, dtype=torch.float64)
    beta = b if b is not None else torch.zeros(d, dtype=torch.float64)
    return gamma, beta


def _kernel_consumers(ctx, norm: str) -> list[str]:
    """Linear layers every call of which reads rows of ``norm``'s output."""
    s = ctx.structure
    found = []
    for call in s.calls.get(norm, []):
        for chain in s.chains(call.outputs[0], row_preserving):
            end = s.events[chain.end]
            if end.kind == "module" and isinstance(end.target, nn.Linear):
                if chain.end_input == end.inputs[0] and end.name not in found:
                    found.append(end.name)
    return found


def _kernel_norm_of(ctx, layer: str) -> str | None:
    """The LayerNorm whose output (rows) every call of Linear ``layer`` reads, if any."""
    s = ctx.structure
    norms = set()
    for call in s.calls.get(layer, []):
        chain = s.producer_chain(call.inputs[0], row_preserving)
        if chain is None:
            return None
        producer = s.events[chain.end]
        if producer.kind != "module" or not is_layernorm(producer.target):
            return None
        norms.add(producer.name)
    return norms.pop() if len(norms) == 1 else None


def _kernel_vector(gamma: torch.Tensor) -> torch.Tensor | None:
    """γ⁻¹ scaled to max-norm 1; where γ has exact zeros, the indicator of the first one
    (that output coordinate is the constant β_i, so its column is dead by itself). A tiny
    γ_i (seen in all-MiniLM-L6-v2's last LayerNorm, 5e-33) makes γ⁻¹ ≈ e_i, the same."""
    if not bool(torch.isfinite(gamma).all()) or float(gamma.abs().max()) == 0.0:
        return None
    zero = gamma == 0
    if bool(zero.any()):
        return zero.to(torch.float64) * (torch.arange(len(gamma)) == int(zero.nonzero()[0]))
    inv = 1.0 / gamma
    return inv / inv.abs().max()


def _kernel_holds(ctx, norm: str, consumer: str, tol: float) -> bool:
    """Every input row x of every call of ``consumer`` has (x − β)·γ⁻¹ = 0 (relative)."""
    gamma, beta = _gamma_beta(ctx, norm)
    inv = _kernel_vector(gamma)
    if inv is None:
        return False
    s = ctx.structure
    for call in s.calls.get(consumer, []):
        x = s.values[call.inputs[0]].tensor
        if x.shape[-1] != gamma.shape[0]:
            return False
        rows = x.reshape(-1, x.shape[-1]) - beta
        lhs = (rows @ inv).abs()
        rhs = rows.norm(dim=1) * inv.norm() + 1e-300  # relative to |x − β|·|γ⁻¹|
        if bool((lhs > tol * rhs).any()):
            return False
    return True


def _kernel_directions(ctx, norm: str, consumer: str) -> list:
    timer = Timer()
    module = ctx.modules[consumer]
    gamma, beta = _gamma_beta(ctx, norm)
    inv = _kernel_vector(gamma)
    if inv is None:
        return []
    shift = float(inv @ beta)
    prefix = f"{consumer}."
    has_bias = module.bias is not None
    if not has_bias and abs(shift) > 1e-12 * float(inv.norm() * beta.norm() + 1e-300):
        return []  # W moved by v γ⁻¹ᵀ shifts the output by v (γ⁻¹·β) with no bias to absorb it
    if not used(ctx, [prefix + "weight"]):
        return []
    if not _kernel_holds(ctx, norm, consumer, float(ctx.option("layernorm_kernel", "tol", 1e-8))):
        return []
    n = min(ctx.limit("layernorm_kernel", 2), module.out_features)
    vs = orthonormal(module.out_features, n, ctx.generator("layernorm_kernel", consumer))
    out = []
    for i in range(n):
        v = vs[:, i]
        vec = {prefix + "weight": torch.outer(v, inv)}
        if has_bias:
            vec[prefix + "bias"] = -v * shift
        out.append(
            direction(
                "layernorm_kernel",
                consumer,
                i,
                vec,
                kind="gauge",
                order=INF,
                norm=norm,
                subspace_dim=module.out_features,
                seconds=timer.seconds,
                products=0,
            )
        )
    return out


@register("layernorm_kernel")
def layernorm_kernel(ctx, layer: str):
    """After a LayerNorm (γ, β): the next Linear's W + v(γ⁻¹)ᵀ, b − v(γ⁻¹·β) (flat gauge).

    Anchored at the LayerNorm (directions in each consuming Linear) or at a Linear (if a
    LayerNorm feeds it). The consumer must read rows of the norm's output unchanged
    (dropout, identity, reshapes, row selection), which is checked structurally and on
    the probe batch. An RMSNorm (no mean subtraction) has no such kernel: nothing.
    """
    module = ctx.modules[layer]
    if is_layernorm(module):
        pairs = [(layer, c) for c in _kernel_consumers(ctx, layer)]
    elif isinstance(module, nn.Linear):
        norm = _kernel_norm_of(ctx, layer)
        pairs = [(norm, layer)] if norm is not None else []
    else:
        return []
    out = []
    for norm, consumer in pairs:
        if _kernel_norm_of(ctx, consumer) == norm:
            out.extend(_kernel_directions(ctx, norm, consumer))
    return out


# -- norm_input_scale ---------------------------------------------------------------------
def _feeding_pair(ctx, layer: str) -> tuple[str, str] | None:
    """(producer Linear/Conv, norm) with the producer's output going only into the norm."""
    s = ctx.structure
    module = ctx.modules[layer]
    if is_norm(module):
        calls = s.calls.get(layer, [])
        if len(calls) != 1:
            return None
        chain = s.producer_chain(calls[0].inputs[0], _reshape_or_identity)
        if chain is None:
            return None
        producer = s.events[chain.end]
        if producer.kind != "module" or not is_linear_or_conv(producer.target):
            return None
        pair = (producer.name, layer)
    elif is_linear_or_conv(module):
        calls = s.calls.get(layer, [])
        if len(calls) != 1:
            return None
        chains = s.chains(calls[0].outputs[0], _reshape_or_identity)
        if len(chains) != 1:
            return None
        end = s.events[chains[0].end]
        if end.kind != "module" or not is_norm(end.target):
            return None
        pair = (layer, end.name)
    else:
        return None
    producer, norm = pair
    if len(s.calls.get(producer, [])) != 1 or len(s.calls.get(norm, [])) != 1:
        return None
    chains = s.chains(s.calls[producer][0].outputs[0], _reshape_or_identity)
    if len(chains) != 1 or not chains[0].exclusive or s.events[chains[0].end].name != norm:
        return None
    if chains[0].end_input != s.calls[norm][0].inputs[0]:
        return None
    return pair


def _reshape_or_identity(e) -> bool:
    st = step_of(e)
    return st is not None and st.kind in ("identity", "reshape")


def _norm_apply(ctx, norm: str, x: torch.Tensor) -> torch.Tensor:
    module = ctx.modules[norm]
    prefix = f"{norm}."
    state = {n: ctx.params[prefix + n] for n, _ in module.named_parameters()}
    state.update({n: ctx.buffers[prefix + n] for n, _ in module.named_buffers()})
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            return functional_call(module, state, (x,))
    finally:
        module.train(was)


def _invariant(ctx, norm: str, x: torch.Tensor, dx: torch.Tensor, tol: float) -> bool:
    """‖N(x + δ dx) − N(x)‖ ≤ tol · δ ‖N(x)‖ ‖dx‖/‖x‖ (δ = 1e-3): N is flat along dx."""
    y = _norm_apply(ctx, norm, x)
    delta = 1e-3 * float(x.norm()) / max(float(dx.norm()), 1e-300)
    y2 = _norm_apply(ctx, norm, x + delta * dx)
    change = float((y2 - y).norm())
    return change <= tol * 1e-3 * float(y.norm())


@register("norm_input_scale")
def norm_input_scale(ctx, layer: str):
    """Weights feeding a LayerNorm/RMSNorm/BatchNorm are scale invariant (flat gauge).

    Anchored at the norm or at the Linear/Conv feeding it (whose output must go only into
    the norm). LayerNorm (over the producer's features): the scale (W, b) and the mean
    shifts (a constant added to every bias; one row r added to every row of W). RMSNorm:
    the scale. BatchNorm only where it normalises with batch statistics in eval mode
    (``track_running_stats=False``): per channel, the scale (W[c], b[c]) and the bias shift.
    A BatchNorm with running statistics is affine in eval mode, so nothing is invariant:
    nothing is returned. Every claim is also checked on the norm itself (the norm's output
    moves by less than ``tol`` = 1e-4 relative along the input change; LayerNorm's ε makes
    the scale flat only to about (ε/var)²).
    """
    pair = _feeding_pair(ctx, layer)
    if pair is None:
        return []
    timer = Timer()
    producer, norm = pair
    pm, nm = ctx.modules[producer], ctx.modules[norm]
    prefix = f"{producer}."
    w = ctx.params[prefix + "weight"]
    b = ctx.params.get(prefix + "bias")
    if not used(ctx, [prefix + "weight"]):
        return []
    s = ctx.structure
    x = s.values[s.calls[norm][0].inputs[0]].tensor
    tol = float(ctx.option("norm_input_scale", "tol", 1e-4))
    limit = ctx.limit("norm_input_scale", 3)
    gen = ctx.generator("norm_input_scale", producer)
    candidates: list[tuple[str, dict, torch.Tensor]] = []

    def add(kind, vec, dx):
        candidates.append((kind, vec, dx))

    full = {prefix + "weight": w.clone(), **({prefix + "bias": b.clone()} if b is not None else {})}
    if is_layernorm(nm) or is_rmsnorm(nm):
        if not isinstance(pm, nn.Linear) or x.shape[-1] != pm.out_features:
            return []
        if nm.weight is not None and nm.weight.shape[0] != pm.out_features:
            return []
        add("scale", full, x)
        if is_layernorm(nm):
            ones = torch.ones_like(x)
            if b is not None:
                add("mean_shift_bias", {prefix + "bias": torch.ones_like(b)}, ones)
            r = torch.randn(pm.in_features, generator=gen, dtype=torch.float64)
            add("mean_shift_weight", {prefix + "weight": torch.ones(pm.out_features, 1) * r}, None)
    elif is_batchnorm(nm):
        if nm.track_running_stats and nm.running_mean is not None:
            return []  # eval mode uses running statistics: an affine map, no invariance
        channels = w.shape[0]
        if x.ndim < 2 or x.shape[1] != channels:
            return []
        for c in range(channels):
            mask = torch.zeros_like(x)
            mask[:, c] = 1.0
            vec = {prefix + "weight": torch.zeros_like(w)}
            vec[prefix + "weight"][c] = w[c]
            if b is not None:
                vec[prefix + "bias"] = torch.zeros_like(b)
                vec[prefix + "bias"][c] = b[c]
            add(f"scale[{c}]", vec, x * mask)
            if b is not None:
                shift = {prefix + "bias": torch.zeros_like(b)}
                shift[prefix + "bias"][c] = 1.0
                add(f"shift[{c}]", shift, mask)
    else:
        return []
    out = []
    for kind, vec, dx in candidates:
        if len(out) >= limit:
            break
        if dx is None:  # a weight mean shift moves every feature of a row by r·h
            h = s.values[s.calls[producer][0].inputs[0]].tensor
            r = vec[prefix + "weight"][0]
            dx = (h @ r).unsqueeze(-1).expand_as(x)
        if sum(float((v**2).sum()) for v in vec.values()) == 0.0:
            continue
        if not _invariant(ctx, norm, x, dx, tol):
            continue
        out.append(
            direction(
                "norm_input_scale",
                producer,
                len(out),
                vec,
                kind="gauge",
                order=INF,
                norm=norm,
                gauge=kind,
                seconds=timer.seconds,
                products=0,
            )
        )
    return out


# -- softmax_shift ------------------------------------------------------------------------
def _logit_preserving(e) -> bool:
    st = step_of(e)
    if st is not None and st.kind in ("identity", "reshape", "select"):
        return True
    return e.kind == "op" and e.name == "log_softmax"


@register("softmax_shift", local=True)
def softmax_shift(ctx, layer: str):
    """Final Linear before a categorical softmax: bias along 1, and W + 1 rᵀ (flat gauge).

    Only with ``likelihood="categorical"`` (under a Gaussian head adding a constant to
    every output is a live direction) and only for the Linear whose output is the model's
    output over its last axis (through reshapes, row selection or log_softmax).
    """
    if ctx.likelihood.name != "categorical":
        return []
    module = ctx.modules[layer]
    if not isinstance(module, nn.Linear):
        return []
    s = ctx.structure
    if s.output_value is None or len(s.calls.get(layer, [])) != 1:
        return []
    chain = s.producer_chain(s.output_value, _logit_preserving)
    if chain is None or s.events[chain.end].name != layer or not chain.exclusive:
        return []
    y = s.values[s.output_value].tensor
    if y.shape[-1] != module.out_features:
        return []
    timer = Timer()
    prefix = f"{layer}."
    gen = ctx.generator("softmax_shift", layer)
    vecs = []
    if module.bias is not None:
        vecs.append(("bias", {prefix + "bias": torch.ones(module.out_features)}))
    for _ in range(2):
        r = torch.randn(module.in_features, generator=gen, dtype=torch.float64)
        vecs.append(("weight", {prefix + "weight": torch.ones(module.out_features, 1) * r}))
    n = ctx.limit("softmax_shift", 2)
    return [
        direction(
            "softmax_shift",
            layer,
            i,
            {k: v.to(torch.float64) for k, v in vec.items()},
            kind="gauge",
            order=INF,
            shift=kind,
            seconds=timer.seconds,
            products=0,
        )
        for i, (kind, vec) in enumerate(vecs[:n])
    ]
