"""Exact Fisher block of one layer: bottom eigenvectors by Lanczos on JVP/VJP products."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import jvp, vjp

from ..fisher import eval_mode
from .common import Timer, direction, used
from .registry import register
from .structure import is_attention


class BlockFisher:
    """``v ↦ F_L v = mean_x J_Lᵀ Λ J_L v`` for the parameters of one layer, never formed.

    One ``jvp`` (forward mode) and one ``vjp`` (pullback kept per probe batch) per batch
    and product; ``products`` counts the calls.
    """

    def __init__(self, ctx, params: dict[str, torch.Tensor]):
        self.ctx = ctx
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.sizes = [params[k].numel() for k in self.names]
        self.theta = dict(params)
        self.n = sum(self.sizes)
        self.products = 0
        self.fmodel = ctx.fmodel()
        self.pulls = []
        self.samples = 0
        for batch in ctx.batches:

            def f(sup, batch=batch):
                return self.fmodel(sup, batch)

            y, pull = vjp(f, self.theta)
            self.pulls.append((f, y.detach(), pull))
            self.samples += y.shape[0]

    def unflatten(self, v: np.ndarray) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64)
        parts = torch.split(t, self.sizes)
        return {k: p.reshape(s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def matvec(self, v: np.ndarray) -> np.ndarray:
        lik = self.ctx.likelihood
        u = self.unflatten(np.asarray(v).reshape(-1))
        total = torch.zeros(self.n, dtype=torch.float64)
        for f, y, pull in self.pulls:
            _, ju = jvp(f, (self.theta,), (u,))
            mju, pull_m = vjp(lambda w, y=y: lik.whiten(y, w), ju)
            back = pull(pull_m(mju)[0])[0]
            total += torch.cat([back[k].reshape(-1) for k in self.names])
        self.products += 1
        return (total / self.samples).numpy()


@register("fisher_block", local=True)
def fisher_block(ctx, layer: str):
    """Bottom eigenvectors of the layer's exact Fisher block by Lanczos (``eigsh`` on a
    ``LinearOperator`` of directional-Fisher products; F is never materialised).

    The block is over the layer's own parameters (all parameters of an attention module).
    Layers above ``max_params`` (1e5) raise ValueError. No prediction (the read decides);
    ``meta`` has the eigenvalue, its ratio to the largest, the number of products and
    seconds. Options: ``tol`` (ARPACK, 1e-10), ``maxiter``.
    """
    module = ctx.modules[layer]
    params = ctx.own_params(layer, recurse=is_attention(module))
    if not params or not used(ctx, params):
        return []
    n_params = sum(v.numel() for v in params.values())
    max_params = int(ctx.option("fisher_block", "max_params", 100_000))
    if n_params > max_params:
        raise ValueError(
            f"fisher_block: layer {layer!r} has {n_params} parameters, above max_params="
            f"{max_params}; use kfac for it, or raise max_params (cost grows with the layer)."
        )
    timer = Timer()
    k = min(ctx.limit("fisher_block", 2), n_params)
    with eval_mode(ctx.model):
        op = BlockFisher(ctx, params)
        if n_params <= max(8, k + 1):
            # Tiny block: n products give the whole matrix; no Lanczos needed.
            mat = np.stack([op.matvec(e) for e in np.eye(n_params)], axis=1)
            evals, evecs = np.linalg.eigh((mat + mat.T) / 2.0)
            top = float(evals[-1])
        else:
            lin = LinearOperator((n_params, n_params), matvec=op.matvec, dtype=np.float64)
            gen = ctx.generator("fisher_block", layer)
            v0 = torch.randn(n_params, generator=gen, dtype=torch.float64).numpy()
            tol = float(ctx.option("fisher_block", "tol", 1e-10))
            maxiter = ctx.option("fisher_block", "maxiter", None)
            top = float(eigsh(lin, k=1, which="LA", v0=v0, tol=1e-4, return_eigenvectors=False)[0])
            ncv = min(n_params, max(2 * k + 1, 24))
            evals, evecs = eigsh(lin, k=k, which="SA", v0=v0, tol=tol, ncv=ncv, maxiter=maxiter)
    order = np.argsort(evals)
    out = []
    for i in order[:k]:
        vec = op.unflatten(evecs[:, i])
        out.append(
            direction(
                "fisher_block",
                layer,
                len(out),
                vec,
                kind=None,
                order=None,
                eigenvalue=float(evals[i]),
                eigenvalue_rel=float(evals[i] / top) if top > 0 else math.nan,
                products=op.products,
                seconds=timer.seconds,
                params=n_params,
            )
        )
    return out
