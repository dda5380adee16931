"""K-FAC detector: bottom eigenpairs of the activation (A) and gradient (G) factors."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from dead_directions.core.fisher import eval_mode
from dead_directions.detectors.common import Timer, direction, used
from dead_directions.detectors.registry import register


def applies(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.numel() == 0:
        return False  # pruned to width 0: no factors
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
    )


def _rows_in(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Input activations as rows (positions × fan-in), with a 1 appended for the bias."""
    if isinstance(module, nn.Linear):
        rows = a.reshape(-1, module.in_features)
    else:
        padding = module.padding
        if isinstance(padding, str):
            return None
        cols = nn.functional.unfold(
            a, module.kernel_size, module.dilation, padding, module.stride
        )  # (B, C·kh·kw, L)
        rows = cols.movedim(1, -1).reshape(-1, cols.shape[1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def _rows_out(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return g.reshape(-1, module.out_features)
    return g.movedim(1, -1).reshape(-1, module.out_channels)


def factors(ctx, layers: list[str]) -> dict[str, dict]:
    """Accumulate K-FAC factors of ``layers`` over all probe batches, one pass per batch.

    A = mean over positions of [a, 1][a, 1]ᵀ (input activations, bias-augmented).
    G = mean over samples of Σ_positions Σ_o g_o g_oᵀ, with g_o = ∂(M f)_o/∂s the gradient
    of the o-th whitened output coordinate w.r.t. the layer's pre-activations s (M the
    likelihood's square root metric at the model's own predictions: the exact Fisher's
    factor, not a label-sampled one). Exact (one backward pass per output coordinate)
    when a sample has at most ``exact_outputs`` (16) output coordinates; otherwise
    ``samples`` (16) Gaussian cotangents ξ, since E_ξ[g_ξ g_ξᵀ] = Σ_o g_o g_oᵀ for
    g_ξ = Σ_o ξ_o g_o. The layers' outputs get a zero leaf added, so one backward pass
    gives every layer's g at once.
    """
    exact_max = int(ctx.option("kfac", "exact_outputs", 16))
    n_mc = int(ctx.option("kfac", "samples", 16))
    gen = ctx.generator("kfac", "cotangents")
    acc = {layer: {"A": None, "G": None, "rows": 0, "samples": 0} for layer in layers}
    products = 0
    mode = "exact"
    name_of = {id(ctx.modules[layer]): layer for layer in layers}
    for args, kwargs in ctx.batches:
        records: list[tuple[str, torch.Tensor, torch.Tensor]] = []

        def hook(module, inputs, output, records=records):
            z = torch.zeros_like(output, requires_grad=True)
            records.append((name_of[id(module)], inputs[0].detach(), z))
            return output + z

        handles = [ctx.modules[layer].register_forward_hook(hook) for layer in layers]
        try:
            with eval_mode(ctx.model), torch.enable_grad():
                result = functional_call(
                    ctx.model, {**ctx.buffers, **ctx.params}, args, kwargs, strict=False
                )
                y = ctx.output(result) if ctx.output is not None else result
        finally:
            for h in handles:
                h.remove()
        products += 1
        if not y.requires_grad:
            continue
        n_samples = y.shape[0]
        per_sample = y[0].numel()
        y0 = y.detach()
        # Mᵀ ξ by one reverse pass through the (linear) whitening: torch.autograd.grad,
        # like the model's pass below; torch.func.vjp would cost each detect job a
        # ~0.6 s import of torch._dynamo (torch 2.13's VJP enters compiled_autograd).
        with torch.enable_grad():
            v0 = torch.zeros_like(y0, requires_grad=True)
            whitened = ctx.likelihood.whiten(y0, v0)

        def pull_m(xi, whitened=whitened, v0=v0):
            return torch.autograd.grad(whitened, v0, xi, retain_graph=True)

        if per_sample <= exact_max:
            xis = []
            for c in range(per_sample):
                xi = y0.new_zeros(n_samples, per_sample)
                xi[:, c] = 1.0
                xis.append(xi.reshape(y.shape))
            weight = 1.0
        else:
            xis = [
                torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device) for _ in range(n_mc)
            ]
            weight = 1.0 / n_mc
            mode = "sampled"
        for layer, a, _ in records:
            rows = _rows_in(ctx.modules[layer], a)
            if rows is None:
                continue
            st = acc[layer]
            outer = rows.T @ rows
            st["A"] = outer if st["A"] is None else st["A"] + outer
            st["rows"] += rows.shape[0]
        zs = [z for _, _, z in records]
        for xi in xis:
            ct = pull_m(xi)[0]
            grads = torch.autograd.grad(y, zs, ct, retain_graph=True, allow_unused=True)
            products += 1
            for (layer, _, _), g in zip(records, grads, strict=True):
                if g is None:
                    continue
                rows = _rows_out(ctx.modules[layer], g)
                st = acc[layer]
                outer = weight * (rows.T @ rows)
                st["G"] = outer if st["G"] is None else st["G"] + outer
        for layer in {r[0] for r in records}:
            acc[layer]["samples"] += n_samples
    out = {}
    for layer, st in acc.items():
        if st["A"] is None or st["G"] is None:
            continue
        out[layer] = {
            "A": st["A"] / st["rows"],
            "G": st["G"] / max(st["samples"], 1),
            "rows": st["rows"],
            "products": products,
            "mode": mode,
        }
    return out


@register("kfac", local=True)
def kfac(ctx, layer: str):
    """Bottom eigenpairs of the K-FAC factors of a Linear/Conv2d layer: candidates a_i ⊗ g_j
    (ΔW = g_j a_iᵀ, bias part g_j·a_i[-1]) with the smallest products λ_A,i·λ_G,j.

    Kernel of A (linearly dependent inputs, e.g. after a LayerNorm): the layer is linear
    in its weights, so the whole ray stays in the kernel — predicted a flat gauge, but
    only when the probe has more input rows than A's dimension (otherwise the kernel is
    the probe's, ``meta['rank_limited']``, and nothing is predicted). Other candidates
    (e.g. kernel of G) carry no prediction. Factors of every layer the call plans ``kfac``
    for are accumulated together over the probe batches; ``meta`` has the cost.
    """
    module = ctx.modules[layer]
    if not applies(module):
        return []
    prefix = f"{layer}."
    if not used(ctx, [prefix + "weight"]):
        return []
    timer = Timer()
    cache = ctx.cache.setdefault("kfac", {})
    if layer not in cache:
        planned = [
            name
            for name in getattr(ctx, "plan", {}).get("kfac", [layer])
            if name in ctx.modules and applies(ctx.modules[name])
        ]
        if layer not in planned:
            planned.append(layer)
        todo = [name for name in planned if name not in cache]
        cache.update(factors(ctx, todo))
        # one shared pass for all planned layers: each layer is charged an equal share
        share = timer.seconds / max(len(todo), 1)
        cache.setdefault("_seconds", {}).update({name: share for name in todo})
        for name in todo:
            cache.setdefault(name, None)
    fac = cache.get(layer)
    if fac is None:
        return []
    seconds = cache["_seconds"].get(layer, 0.0)
    la, va = torch.linalg.eigh(fac["A"])
    lg, vg = torch.linalg.eigh(fac["G"])
    la, lg = la.clamp_min(0.0), lg.clamp_min(0.0)
    tol = float(ctx.option("kfac", "tol", 1e-10))
    dim_a = fac["A"].shape[0]
    rank_limited = fac["rows"] <= dim_a
    prod = la.unsqueeze(1) * lg.unsqueeze(0)  # (dim_a, dim_g)
    order = torch.argsort(prod.reshape(-1), stable=True)
    n = ctx.limit("kfac", 2)
    has_bias = module.bias is not None
    out = []
    for flat in order[:n].tolist():
        i, j = divmod(flat, prod.shape[1])
        a, g = va[:, i], vg[:, j]
        w_part = a[:-1] if has_bias else a
        vec = {prefix + "weight": torch.outer(g, w_part).reshape(module.weight.shape)}
        if has_bias:
            vec[prefix + "bias"] = g * a[-1]
        a_dead = bool(la[i] <= tol * la.max())
        kind, pred = ("gauge", math.inf) if a_dead and not rank_limited else (None, None)
        out.append(
            direction(
                "kfac",
                layer,
                len(out),
                vec,
                kind=kind,
                order=pred,
                eig_a=float(la[i]),
                eig_g=float(lg[j]),
                eig_a_rel=float(la[i] / la.max()) if la.max() > 0 else math.nan,
                eig_g_rel=float(lg[j] / lg.max()) if lg.max() > 0 else math.nan,
                rank_limited=rank_limited,
                factor_mode=fac["mode"],
                seconds=seconds + timer.seconds,
                products=fac["products"],
            )
        )
    return out
