"""Hidden-unit structure between two layers: dead_unit, duplicate_units, relu_rescale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dead_directions.detectors.common import Timer, direction, is_batchnorm, is_linear_or_conv, used
from dead_directions.detectors.registry import register
from dead_directions.detectors.structure import step_of, unit_map

INF = math.inf


@dataclass(frozen=True, eq=False)
class UnitChain:
    """Producer P → elementwise activations (→ pooling/flatten) → consumer Q.

    ``pre``: P's outputs with units on the last axis, shape (N, C). ``post``: Q's inputs
    grouped per unit, shape (N', C, block). ``order``: the composed activation order p
    (NaN unknown, 0 when there is no activation). ``sigma``: the composed elementwise
    activation as a callable (None when some step cannot be replayed).
    """

    producer: str
    consumer: str
    block: int
    order: float
    pre: torch.Tensor
    post: torch.Tensor
    sigma: object
    inputs: torch.Tensor


def unit_chain(ctx, producer: str) -> UnitChain | None:
    """The chain out of Linear/Conv ``producer`` into the next Linear/Conv, if exact."""
    key = ("unit_chain", producer)
    if key in ctx.cache:
        return ctx.cache[key]
    ctx.cache[key] = found = _unit_chain(ctx, producer)
    return found


def is_unit_producer(module) -> bool:
    """Linear/Conv (units: output features/channels) or an affine BatchNorm (units: its
    channels, incoming parameters (γ_c, β_c) acting on the normalised input)."""
    if module is None:
        return False
    return is_linear_or_conv(module) or (is_batchnorm(module) and module.affine)


def _units_of(module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_batchnorm(module):
        return module.num_features
    return module.out_channels


def _unit_chain(ctx, producer: str) -> UnitChain | None:
    module = ctx.modules.get(producer)
    if not is_unit_producer(module) or _units_of(module) == 0:
        return None  # not a unit producer, or pruned to width 0
    s = ctx.structure
    calls = s.calls.get(producer, [])
    if len(calls) != 1:
        return None
    chains = s.chains(calls[0].outputs[0], lambda e: step_of(e) is not None)
    if len(chains) != 1 or not chains[0].exclusive:
        return None
    chain = chains[0]
    end = s.events[chain.end]
    if end.kind != "module" or not is_linear_or_conv(end.target):
        return None
    if len(s.calls.get(end.name, [])) != 1 or chain.end_input != end.inputs[0]:
        return None
    mapped = unit_map(s, chain, module)
    if mapped is None:
        return None
    block, order = mapped
    pre = s.values[calls[0].outputs[0]].tensor
    post = s.values[chain.end_input].tensor
    units = _units_of(module)
    if isinstance(module, nn.Linear) or pre.ndim == 2:
        pre = pre.reshape(-1, units)
    else:
        pre = pre.movedim(1, -1).reshape(-1, units)
    if isinstance(end.target, nn.Linear):
        post = post.reshape(-1, units, block)
    else:
        post = post.movedim(1, -1).reshape(-1, units, 1)
    steps = [s.events[i] for i in chain.steps]
    acts = [e for e in steps if step_of(e).kind == "activation"]
    sigma = None
    if all(e.kind == "module" or e.call is not None for e in acts):
        fns = [e.target if e.kind == "module" else e.call for e in acts]

        def sigma(z, fns=fns):
            with torch.no_grad():
                for f in fns:
                    z = f(z)
            return z

    inputs = s.values[calls[0].inputs[0]].tensor
    return UnitChain(producer, end.name, block, order, pre, post, sigma, inputs)


def _in_names(ctx, producer: str) -> tuple[str, str | None]:
    m = ctx.modules[producer]
    return f"{producer}.weight", (f"{producer}.bias" if m.bias is not None else None)


def _normalised(ctx, uc: UnitChain) -> torch.Tensor:
    """A BatchNorm producer's normalised input, units on the last axis, shape (N, C)."""
    m = ctx.modules[uc.producer]
    x = uc.inputs.movedim(1, -1).reshape(-1, m.num_features)
    prefix = f"{uc.producer}."
    if m.track_running_stats and m.running_mean is not None:
        mean, var = ctx.buffers[prefix + "running_mean"], ctx.buffers[prefix + "running_var"]
    else:
        mean, var = x.mean(0), x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + m.eps)


def _out_slice(ctx, uc: UnitChain, j: int) -> tuple:
    """Index of unit j's outgoing weights in the consumer's weight."""
    if isinstance(ctx.modules[uc.consumer], nn.Linear):
        return (slice(None), slice(j * uc.block, (j + 1) * uc.block))
    return (slice(None), j)


def _preactivation(
    ctx, uc: UnitChain, j: int, w: torch.Tensor, b: torch.Tensor | None
) -> torch.Tensor:
    """Pre-activations (flattened) of unit ``j`` with incoming weight ``w`` and bias ``b``."""
    m = ctx.modules[uc.producer]
    x = uc.inputs
    if is_batchnorm(m):
        z = w * _normalised(ctx, uc)[:, j]
    elif isinstance(m, nn.Linear):
        z = x @ w
    else:
        conv = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}
        z = conv[w.ndim - 1](
            x, w.unsqueeze(0), None, m.stride, m.padding, m.dilation
        )  # padding modes other than zeros are rare in the zoo; treat as zeros
    z = z.reshape(-1)
    return z + b if b is not None else z


# -- dead_unit ------------------------------------------------------------------------------
@register("dead_unit", local=True)
def dead_unit(ctx, layer: str):
    """Units/channels of ``layer`` never active on the probe data, or with ~0 outgoing
    weights: node death, predicted singular of order p + 1 (p the activation order).

    Dead: largest |activation| on the probe ≤ ``tol`` (1e-3) × the layer's largest
    (``reason='silent'``), outgoing norm ≤ ``tol`` × the largest (``'zero_outgoing'``), or
    in-norm × out-norm ≤ ``score_tol`` (1e-2) × the layer's median or ≤ ``score_atol``
    (1e-3; parameters are O(1) at initialisation, so this holds when every unit of a
    layer decays together under weight decay) (``'weak'``, a trained unit decaying towards
    the locus). The prediction holds at the projected base whatever the
    thresholds; they only choose which units count as dead. ``meta['distance']`` is the
    checkpoint's distance to that base.

    Direction: (incoming row and bias, outgoing column) of the unit, each half of the
    unit norm; the incoming part is the unit's own weights unless they keep it silent
    along the ray (a dead ReLU's), in which case a seeded random row whose unit fires on
    the probe data; the outgoing part is its own column unless ~0 (then seeded random).
    Base: the incoming rows, biases and outgoing columns of all the layer's dead units set
    to 0 — on the crossing of the two branches of each unit's node-death locus, where the
    order is p + 1 (METHOD §4); shared by the layer's dead-unit directions. For a
    non-homogeneous σ (tanh, GELU) ``scale`` keeps |t·z| ≤ 0.1 for the unit's
    pre-activations z on the whole grid (σ's power law holds there); for a homogeneous σ
    (ReLU, z^p) the law is exact at every t and the grid is left at 1e-4 … 1.
    """
    uc = unit_chain(ctx, layer)
    if uc is None or not (math.isfinite(uc.order) and uc.order >= 1) or uc.sigma is None:
        return []
    timer = Timer()
    w_name, b_name = _in_names(ctx, layer)
    q_name = f"{uc.consumer}.weight"
    if not used(ctx, [w_name, q_name]):
        return []
    w, q = ctx.params[w_name], ctx.params[q_name]
    b = ctx.params[b_name] if b_name else None
    act, out_norm, in_sq, score, silent, no_out, weak = _death_evidence(ctx, uc, w, b, q)
    dead = torch.nonzero(silent | no_out | weak).flatten().tolist()
    dead.sort(key=lambda j: (float(score[j]) * float(act[j]), j))
    gen = ctx.generator("dead_unit", layer)
    homogeneous = _homogeneous_degree(uc) is not None
    # One base for the layer: every dead unit's incoming row, bias and outgoing column set
    # to 0 (the crossing of all their node-death loci). Projecting only unit j would leave
    # the other near-dead units as a continuum of tiny units that can absorb unit j's
    # second-order departure (ρ ≈ 0 by unbounded corrections along near-null J).
    base = {w_name: torch.zeros_like(w), q_name: torch.zeros_like(q)}
    if b is not None:
        base[b_name] = torch.zeros_like(b)
    for j in dead:
        base[w_name][j] = -w[j]
        base[q_name][_out_slice(ctx, uc, j)] = -q[_out_slice(ctx, uc, j)]
        if b is not None:
            base[b_name][j] = -b[j]
    base_distance = math.sqrt(sum(float((v**2).sum()) for v in base.values()))
    out = []
    for j in dead[: ctx.limit("dead_unit", 8)]:
        w_in = w[j].clone()
        b_in = b[j].clone() if b is not None else None
        if _silent_along_ray(ctx, uc, j, w_in, b_in):
            w_in, b_in = _firing_row(ctx, uc, j, w, b, gen)
            if w_in is None:
                continue
        w_out = q[_out_slice(ctx, uc, j)].clone()
        if bool(no_out[j]):
            w_out = torch.randn(w_out.shape, generator=gen, dtype=torch.float64)
        n_in = math.sqrt(float((w_in**2).sum()) + (float(b_in**2) if b_in is not None else 0.0))
        n_out = float(w_out.norm())
        vec = {w_name: torch.zeros_like(w), q_name: torch.zeros_like(q)}
        vec[w_name][j] = w_in / n_in
        vec[q_name][_out_slice(ctx, uc, j)] = w_out / n_out
        if b is not None:
            vec[b_name] = torch.zeros_like(b)
            vec[b_name][j] = b_in / n_in
        scale = 1.0
        if not homogeneous:
            # unit vector: each half has norm 1/√2, so pre-activations along the ray are
            # t z/√2; keep them in σ's power-law range (|t z| ≤ 0.1) on the whole grid
            z = _preactivation(ctx, uc, j, w_in / n_in, b_in / n_in if b_in is not None else None)
            zmax = float(z.abs().max()) / math.sqrt(2.0)
            scale = min(1.0, 0.1 / zmax) if zmax > 0 else 1.0
        out.append(
            direction(
                "dead_unit",
                layer,
                len(out),
                vec,
                kind="singular",
                order=uc.order + 1.0,
                base=base,
                scale=scale,
                unit=j,
                consumer=uc.consumer,
                reason="silent"
                if bool(silent[j])
                else ("zero_outgoing" if bool(no_out[j]) else "weak"),
                distance=base_distance,
                dead_units=len(dead),
                score=float(score[j] / score.median().clamp_min(1e-300)),
                activation_order=uc.order,
                seconds=timer.seconds,
                products=0,
            )
        )
    return out


def _death_evidence(ctx, uc: UnitChain, w, b, q):
    """Per unit of ``uc``, shapes (C,): largest |activation| on the probe, outgoing norm,
    squared incoming norm (with bias), score = in-norm × out-norm, and the three node-death
    masks of ``dead_unit`` (silent, zero outgoing, weak) under its options."""
    tol = float(ctx.option("dead_unit", "tol", 1e-3))
    score_tol = float(ctx.option("dead_unit", "score_tol", 1e-2))
    score_atol = float(ctx.option("dead_unit", "score_atol", 1e-3))
    act = uc.post.abs().amax(dim=(0, 2))
    units = act.shape[0]
    out_norm = torch.stack([q[_out_slice(ctx, uc, j)].norm() for j in range(units)])
    in_sq = w.reshape(units, -1).pow(2).sum(1) + (b.pow(2) if b is not None else 0.0)
    score = in_sq.sqrt() * out_norm
    silent = act <= tol * act.max().clamp_min(1e-300)
    no_out = out_norm <= tol * out_norm.max().clamp_min(1e-300)
    weak = (score <= score_tol * score.median().clamp_min(1e-300)) | (score <= score_atol)
    return act, out_norm, in_sq, score, silent, no_out, weak


def _silent_along_ray(ctx, uc: UnitChain, j: int, w_in, b_in) -> bool:
    z = _preactivation(ctx, uc, j, w_in, b_in)
    if float(z.abs().max()) == 0.0:
        return True
    a = uc.sigma(1e-3 * z / z.abs().max())
    return float(a.abs().max()) == 0.0


def _firing_row(ctx, uc: UnitChain, j: int, w, b, gen):
    """A seeded random incoming row (and bias 0) whose unit fires on the probe data."""
    scale = float(w.norm()) / math.sqrt(w.shape[0]) or 1.0
    for _ in range(8):
        cand = torch.randn(w.shape[1:], generator=gen, dtype=torch.float64) * scale
        for sign in (1.0, -1.0):
            b_in = torch.zeros((), dtype=torch.float64) if b is not None else None
            if not _silent_along_ray(ctx, uc, j, sign * cand, b_in):
                return sign * cand, b_in
    return None, None


# -- duplicate_units ------------------------------------------------------------------------
def _producer_of(ctx, layer: str) -> str | None:
    s = ctx.structure
    calls = s.calls.get(layer, [])
    if len(calls) != 1:
        return None
    chain = s.producer_chain(calls[0].inputs[0], lambda e: step_of(e) is not None)
    if chain is None:
        return None
    e = s.events[chain.end]
    return e.name if e.kind == "module" else None


@register("duplicate_units", local=True)
def duplicate_units(ctx, layer: str):
    """Units feeding Linear/Conv ``layer`` whose firing patterns on the probe data are
    collinear (a_j = c a_i): the outgoing difference direction ΔQ[:, i] = c v,
    ΔQ[:, j] = −v, predicted a flat gauge (order ∞).

    ``layer`` is the consumer Q (the direction lives only in its weight). The function
    depends on Q[:, i] a_i + Q[:, j] a_j = (Q[:, i] + c Q[:, j]) a_i, which the move
    leaves unchanged at every t: flat on the probe data. Where the incoming weights are
    collinear too (``meta['weights_collinear']``; exact duplicates, or for ReLU positive
    multiples) it is a flat gauge of the function itself; where only the firing patterns
    coincide, it is flat for the probe data the read uses. The incoming difference
    direction is not predicted: its order depends on the outgoing weights (1 when
    Q[:, i] ≠ Q[:, j]). Dead units (a ≡ 0) are left to ``dead_unit``.
    """
    producer = _producer_of(ctx, layer)
    if producer is None:
        return []
    uc = unit_chain(ctx, producer)
    if uc is None or uc.consumer != layer:
        return []
    q_name = f"{layer}.weight"
    if not used(ctx, [q_name]):
        return []
    timer = Timer()
    tol = float(ctx.option("duplicate_units", "tol", 1e-10))
    a = uc.post.movedim(1, 0).reshape(uc.post.shape[1], -1)  # (C, N·block)
    norms = a.norm(dim=1)
    live = norms > 1e-6 * norms.max().clamp_min(1e-300)
    idx = torch.nonzero(live).flatten()
    if len(idx) < 2:
        return []
    an = a[idx] / norms[idx].unsqueeze(1)
    cos = an @ an.T
    w_name, b_name = _in_names(ctx, producer)
    w = ctx.params[w_name].reshape(ctx.params[w_name].shape[0], -1)
    if b_name:
        w = torch.cat([w, ctx.params[b_name].unsqueeze(1)], dim=1)
    wn = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    q = ctx.params[q_name]
    gen = ctx.generator("duplicate_units", layer)
    out = []
    n = ctx.limit("duplicate_units", 8)
    pairs = torch.nonzero(torch.triu(cos.abs() >= 1.0 - tol, diagonal=1)).tolist()
    for ii, jj in pairs:
        if len(out) >= n:
            break
        i, j = int(idx[ii]), int(idx[jj])
        c = float(a[j] @ a[i]) / float(a[i] @ a[i])
        v = torch.randn(q[_out_slice(ctx, uc, i)].shape, generator=gen, dtype=torch.float64)
        vec = {q_name: torch.zeros_like(q)}
        vec[q_name][_out_slice(ctx, uc, i)] = c * v
        vec[q_name][_out_slice(ctx, uc, j)] = -v
        out.append(
            direction(
                "duplicate_units",
                layer,
                len(out),
                vec,
                kind="gauge",
                order=INF,
                producer=producer,
                units=(i, j),
                ratio=c,
                cosine=float(cos[ii, jj]),
                weights_collinear=bool(abs(float(wn[i] @ wn[j])) >= 1.0 - tol),
                seconds=timer.seconds,
                products=0,
            )
        )
    return out


# -- relu_rescale ---------------------------------------------------------------------------
def _homogeneous_degree(uc: UnitChain) -> float | None:
    """p if the composed activation satisfies σ(c z) = c^p σ(z) for c > 0 (checked)."""
    if uc.sigma is None or not (math.isfinite(uc.order) and uc.order >= 1):
        return None
    p = uc.order
    z = torch.cat([uc.pre.reshape(-1)[:4096], torch.linspace(-3, 3, 61, dtype=torch.float64)])
    base = uc.sigma(z)
    scale = float(base.abs().max()) + 1e-300
    for c in (0.5, 2.0, 3.0):
        if float((uc.sigma(c * z) - c**p * base).abs().max()) > 1e-12 * c**p * scale:
            return None
    return p


@register("relu_rescale", local=True)
def relu_rescale(ctx, layer: str):
    """Positive rescaling of a hidden unit through a homogeneous activation (ReLU,
    LeakyReLU, z^p): (c·in, c·b, out/c^p) is a curved orbit; its tangent
    (in, b, −p·out) is predicted a (curved) gauge, order ∞.

    Homogeneity σ(c z) = c^p σ(z) is checked numerically on the composed activation; max
    and average pooling and flattening between the layers keep it. Units ``dead_unit``
    calls dead (same options) are skipped.
    """
    uc = unit_chain(ctx, layer)
    if uc is None:
        return []
    p = _homogeneous_degree(uc)
    if p is None:
        return []
    w_name, b_name = _in_names(ctx, layer)
    q_name = f"{uc.consumer}.weight"
    if not used(ctx, [w_name, q_name]):
        return []
    timer = Timer()
    w, q = ctx.params[w_name], ctx.params[q_name]
    b = ctx.params[b_name] if b_name else None
    # A dead unit sits at the origin of its own parameters, where the rescaling orbit
    # degenerates: the ray (in, b, −p·out) leaves the node-death locus (order p + 1), so
    # units that dead_unit calls dead are left to it.
    act, *_, silent, no_out, weak = _death_evidence(ctx, uc, w, b, q)
    live = ~(silent | no_out | weak)
    order = torch.randperm(act.shape[0], generator=ctx.generator("relu_rescale", layer))
    units = [int(j) for j in order if bool(live[j])][: ctx.limit("relu_rescale", 2)]
    out = []
    for i, j in enumerate(units):
        vec = {w_name: torch.zeros_like(w), q_name: torch.zeros_like(q)}
        vec[w_name][j] = w[j]
        vec[q_name][_out_slice(ctx, uc, j)] = -p * q[_out_slice(ctx, uc, j)]
        if b is not None:
            vec[b_name] = torch.zeros_like(b)
            vec[b_name][j] = b[j]
        out.append(
            direction(
                "relu_rescale",
                layer,
                i,
                vec,
                kind="gauge",
                order=INF,
                unit=j,
                consumer=uc.consumer,
                degree=p,
                seconds=timer.seconds,
                products=0,
            )
        )
    return out
