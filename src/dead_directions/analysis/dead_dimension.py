"""Dead dimension of a layer: how many of its parameter dimensions the Fisher does not see.

METHOD §7: the detectors' direction counts depend on their caps; the intrinsic per-layer
quantity is the number of dimensions of the layer's parameter space along which the
Fisher block vanishes at the checkpoint (flat or singular directions, to first order):

* ``exact``: ``d_L − rank F_L``, with ``F_L = E_x[J_Lᵀ Λ J_L]`` the layer's Fisher block.
  The rank is that of the whitened Jacobian ``M J_L`` (rows: probe samples × whitened
  output coordinates), whose squared singular values are ``n`` times F_L's eigenvalues;
  built column by column with vmapped ``torch.func.jvp`` (small layers only).
* ``kfac``: ``dim ker(A ⊗ G) = d_A d_G − rank A · rank G`` from the K-FAC factors of a
  Linear/Conv2d layer (``detectors.kfac.factors``: A over bias-augmented inputs, G over
  whitened output gradients), never forming F_L. Because a zero of A or of G is a zero
  of every per-sample term of F_L, ``ker(A ⊗ G) ⊆ ker F_L``: the K-FAC count is a lower
  bound on the exact one, equal when the layer's degeneracy is that of its inputs or of
  its back-propagated gradients (dead or duplicate units, a LayerNorm's centring, a
  softmax's shift).

Ranks count eigenvalues above ``rtol`` times the largest (``RTOL`` = 1e-10 by default,
float64). The probe bounds what can be seen: a rank is at most the number of rows behind
it (samples × output coordinates for F_L; input positions for A), so a layer with more
parameters than that has a data-induced kernel; ``rank_cap`` and ``data_limited`` say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jvp, vmap

from dead_directions.core.fisher import eval_mode
from dead_directions.detectors import kfac
from dead_directions.detectors.registry import Context

#: Relative eigenvalue tolerance of the ranks (eigenvalues of F_L, A and G; for F_L via
#: squared singular values of the whitened Jacobian).
RTOL = 1e-10
#: Layers with at most this many parameters get the exact count.
EXACT_MAX_PARAMS = 2048
METHODS = ("exact", "kfac", "none")


@dataclass(frozen=True)
class DeadDimension:
    """The dead dimension of one layer at a checkpoint, with how it was obtained.

    ``n_params``: the layer's own parameters (``module.parameters(recurse=False)``).
    ``dead``: the reported count — ``exact`` where computed, else ``kfac`` (``method``
    says which; ``"none"``: neither applies, ``dead`` = −1). ``exact``/``kfac``: each
    count, or None where not computed. ``rtol``: the relative eigenvalue tolerance.
    ``probe_rows``: rows behind the reported rank (samples × whitened output coordinates
    for ``exact``; input positions of A for ``kfac``). ``rank_cap``: the largest rank the
    probe allows for the reported method; ``data_limited``: ``rank_cap < n_params`` (part
    of the count may be the probe's, not the model's). ``fraction``: dead / n_params.
    """

    layer: str
    n_params: int
    dead: int
    method: str
    exact: int | None
    kfac: int | None
    rtol: float
    probe_rows: int
    rank_cap: int

    @property
    def data_limited(self) -> bool:
        return self.rank_cap < self.n_params

    @property
    def fraction(self) -> float:
        if self.dead < 0 or self.n_params == 0:
            return math.nan
        return self.dead / self.n_params


def _rank(eigenvalues: torch.Tensor, rtol: float) -> int:
    top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    if top <= 0:
        return 0
    return int((eigenvalues > rtol * top).sum())


def exact_count(ctx, layer: str, rtol: float = RTOL, chunk: int = 64) -> tuple[int, int]:
    """``(d_L − rank M J_L, rows)`` for the own parameters of ``layer`` (see the module doc).

    ``ctx``: a ``detectors.registry.Context`` (model, probe batches in float64, likelihood,
    output). The whitened Jacobian block is built with ``chunk`` one-hot tangents per
    vmapped ``jvp``; memory ``d_L × rows`` floats.
    """

    params = ctx.own_params(layer)
    names = list(params)
    sizes = [params[k].numel() for k in names]
    d = sum(sizes)
    fmodel = ctx.fmodel()
    blocks = []
    with eval_mode(ctx.model), torch.no_grad():
        for batch in ctx.batches:
            y0 = fmodel({}, batch)

            def push(flat, batch=batch, y0=y0):
                parts = torch.split(flat, sizes)
                tangent = {k: p.reshape(params[k].shape) for k, p in zip(names, parts, strict=True)}
                _, ju = jvp(lambda sup: fmodel(sup, batch), (params,), (tangent,))
                return ctx.likelihood.whiten(y0, ju).reshape(-1)

            cols = []
            for start in range(0, d, chunk):
                stop = min(d, start + chunk)
                eye = torch.zeros(stop - start, d, dtype=torch.float64)
                eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                cols.append(vmap(push)(eye))  # (chunk, rows of this batch)
            blocks.append(torch.cat(cols, dim=0))
    jac_t = torch.cat(blocks, dim=1)  # (d, rows)
    sv = torch.linalg.svdvals(jac_t)
    return d - _rank(sv**2, rtol), int(jac_t.shape[1])


def kfac_count(ctx, layer: str, rtol: float = RTOL) -> tuple[int, int, int] | None:
    """``(d_A d_G − rank A · rank G, rows of A, rank cap)`` of a Linear/Conv2d layer, or
    None where K-FAC does not apply (``detectors.kfac.applies``)."""

    module = ctx.modules[layer]
    if not kfac.applies(module):
        return None
    fac = kfac.factors(ctx, [layer]).get(layer)
    if fac is None:
        return None
    a, g = fac["A"], fac["G"]
    rank_a = _rank(torch.linalg.eigvalsh(a), rtol)
    rank_g = _rank(torch.linalg.eigvalsh(g), rtol)
    d_a, d_g = a.shape[0], g.shape[0]
    # G sums one outer product per (input position, cotangent): ``products`` counts one
    # forward pass per batch plus one backward pass per cotangent, so the rows behind G
    # are the positions times the cotangents per batch.
    cotangents = (fac["products"] - len(ctx.batches)) // max(len(ctx.batches), 1)
    rows_g = fac["rows"] * cotangents
    cap = min(d_a, fac["rows"]) * min(d_g, max(rows_g, 1))
    return d_a * d_g - rank_a * rank_g, int(fac["rows"]), int(cap)


def dead_dimension(
    model: nn.Module,
    inputs,
    layer: str,
    *,
    likelihood="gaussian",
    output=None,
    rtol: float = RTOL,
    exact_max_params: int = EXACT_MAX_PARAMS,
    kfac: bool = True,
) -> DeadDimension:
    """The dead dimension of ``layer`` (a ``named_modules()`` name) at ``model``.

    ``inputs``: the probe (a tensor, a mapping, or an iterable of batches, as for
    ``dd.read``). ``likelihood``/``output``: as for ``dd.read``. The exact count runs when
    the layer has at most ``exact_max_params`` own parameters; the K-FAC count runs for
    Linear/Conv2d layers (``kfac=False`` skips it). Both are returned where computed; the
    reported ``dead`` is the exact one where there is one. Raises ``ValueError`` for an
    unknown layer or a layer without parameters of its own.
    """

    if not isinstance(rtol, int | float) or not (0 < rtol < 1):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}.")
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of the model; see named_modules().")
    n_params = sum(p.numel() for p in modules[layer].parameters(recurse=False))
    if n_params == 0:
        raise ValueError(f"layer {layer!r} has no parameters of its own: nothing to count.")
    ctx = Context(model, inputs, likelihood=likelihood, output=output)
    exact = rows = None
    if n_params <= exact_max_params:
        exact, rows = exact_count(ctx, layer, rtol)
    k = kfac_count(ctx, layer, rtol) if kfac else None
    if exact is not None:
        return DeadDimension(
            layer,
            n_params,
            exact,
            "exact",
            exact,
            None if k is None else k[0],
            float(rtol),
            rows,
            min(n_params, rows),
        )
    if k is not None:
        return DeadDimension(layer, n_params, k[0], "kfac", None, k[0], float(rtol), k[1], k[2])
    return DeadDimension(layer, n_params, -1, "none", None, None, float(rtol), 0, 0)
