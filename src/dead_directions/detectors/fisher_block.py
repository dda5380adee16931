"""Exact Fisher block of one layer: bottom eigenvectors by block Lanczos on JVP/VJP products."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import jvp, vjp

from dead_directions.core.fisher import eval_mode
from dead_directions.detectors.common import Timer, direction, used
from dead_directions.detectors.registry import register
from dead_directions.detectors.structure import is_attention


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

    def matmat(self, vs: np.ndarray) -> np.ndarray:
        """``F V`` for a block of columns, the columns vmapped through one jvp and vjp."""
        vs = np.asarray(vs).reshape(self.n, -1)
        if vs.shape[1] == 1:
            return self.matvec(vs[:, 0]).reshape(-1, 1)
        lik = self.ctx.likelihood
        t = torch.as_tensor(np.ascontiguousarray(vs.T), dtype=torch.float64)  # (m, n)
        parts = torch.split(t, self.sizes, dim=1)
        u = {k: p.reshape(-1, *s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}
        total = torch.zeros(t.shape, dtype=torch.float64)
        for f, y, pull in self.pulls:

            def one(ui, f=f, y=y, pull=pull):
                _, ju = jvp(f, (self.theta,), (ui,))
                mju, pull_m = vjp(lambda w: lik.whiten(y, w), ju)
                back = pull(pull_m(mju)[0])[0]
                return torch.cat([back[k].reshape(-1) for k in self.names])

            total += torch.vmap(one)(u)
        self.products += t.shape[0]
        return (total / self.samples).numpy().T

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


def _bottom(ctx, layer: str, op: BlockFisher, n: int, k: int):
    """Bottom ``k`` eigenpairs of F by block Lanczos with full reorthogonalisation.

    Blocks of ``b = k + 2`` columns (vmapped products) build a Krylov basis of at most
    ``max_products`` (400) columns, or all n (then the answer is exact); Rayleigh–Ritz
    in that basis gives the eigenpairs. A block method because F's kernels are often
    exactly degenerate (a LayerNorm kernel per output row; a probe with fewer outputs
    than parameters): single-vector restarted Lanczos (ARPACK ``eigsh``) finds one
    vector per start there and does not converge, and LOBPCG stalls on the ill-conditioned
    rest of the spectrum. Returns (eigenvalues, vectors, λ_max, residuals ‖F x − λ x‖/λ_max).
    """
    gen = ctx.generator("fisher_block", layer)
    b = min(k + 2, n)
    budget = min(n, max(b, int(ctx.option("fisher_block", "max_products", 400))))
    q, _ = np.linalg.qr(torch.randn(n, b, generator=gen, dtype=torch.float64).numpy())
    basis, images, used_cols = [q], [], 0
    while True:
        images.append(op.matmat(basis[-1]))
        used_cols += basis[-1].shape[1]
        if used_cols >= budget:
            break
        w = images[-1]
        stacked = np.hstack(basis)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - stacked @ (stacked.T @ w)
        q, r = np.linalg.qr(w)
        keep = np.abs(np.diag(r)) > 1e-10 * max(1.0, float(np.abs(r).max()))
        keep[budget - used_cols :] = False
        if not keep.any():
            break  # the Krylov space is invariant: the basis holds exact eigenvectors
        basis.append(q[:, keep])
    basis = basis[: len(images)]
    stacked, fstacked = np.hstack(basis), np.hstack(images)
    small = stacked.T @ fstacked
    evals, rot = np.linalg.eigh((small + small.T) / 2.0)
    vecs, fvecs = stacked @ rot, fstacked @ rot
    top = float(evals[-1])
    residual = np.linalg.norm(fvecs - vecs * evals, axis=0) / (top if top > 0 else 1.0)
    return evals, vecs, top, residual


@register("fisher_block", local=True)
def fisher_block(ctx, layer: str):
    """Bottom eigenvectors of the layer's exact Fisher block by block Lanczos on
    directional-Fisher products (one jvp and one vjp per column, vmapped over a block; F
    is never materialised).

    The block is over the layer's own parameters (all parameters of an attention module).
    Layers above ``max_params`` (1e5) raise ValueError. No prediction (the read decides);
    ``meta`` has the eigenvalue, its ratio to the largest, the number of products and
    seconds, the residual ‖F x − λ x‖/λ_max (0 when the Krylov basis spans the block).
    Options: ``max_products`` (400), ``max_params`` (1e5).
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
        evals, evecs, top, residual = _bottom(ctx, layer, op, n_params, k)
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
                residual_rel=float(residual[i]),
                products=op.products,
                seconds=timer.seconds,
                params=n_params,
            )
        )
    return out
