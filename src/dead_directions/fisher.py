"""Directional Fisher g(θ; u) = uᵀF(θ)u by forward-mode JVPs, batched with vmap."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vmap
from torch.overrides import TorchFunctionMode

from .likelihood import Likelihood

Batch = tuple[tuple, dict]


def iter_batches(inputs, batch_size: int | None = None) -> Iterator[Batch]:
    """Yield probe batches as ``(args, kwargs)``.

    ``inputs`` is a tensor (one positional batch), a mapping (keyword arguments of one
    batch), or any other iterable of such batches (tuples are positional arguments).
    A single tensor or mapping is split into batches of ``batch_size`` samples along
    its first axis when ``batch_size`` is given. Iterables are consumed lazily, so
    memory does not grow with the number of batches.
    """
    if isinstance(inputs, torch.Tensor):
        yield from _split(((inputs,), {}), batch_size)
    elif isinstance(inputs, Mapping):
        yield from _split(((), dict(inputs)), batch_size)
    elif isinstance(inputs, Iterable) and not isinstance(inputs, str | bytes):
        count = 0
        for batch in inputs:
            count += 1
            if isinstance(batch, torch.Tensor):
                yield from _split(((batch,), {}), batch_size)
            elif isinstance(batch, Mapping):
                yield from _split(((), dict(batch)), batch_size)
            elif isinstance(batch, tuple | list):
                yield from _split((tuple(batch), {}), batch_size)
            else:
                raise ValueError(
                    f"inputs: batch {count - 1} is a {type(batch).__name__}; each batch must "
                    "be a tensor, a tuple of positional tensors or a dict of keyword tensors."
                )
        if count == 0:
            raise ValueError("inputs: the iterable of batches is empty; give at least one batch.")
    else:
        raise ValueError(
            f"inputs: expected a tensor, a dict of tensors or an iterable of batches, got "
            f"{type(inputs).__name__}."
        )


def _split(batch: Batch, batch_size: int | None) -> Iterator[Batch]:
    args, kwargs = batch
    if batch_size is None:
        yield batch
        return
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    n = tensors[0].shape[0] if tensors else 0
    for start in range(0, max(n, 1), batch_size):
        cut = slice(start, start + batch_size)
        yield (
            tuple(a[cut] if isinstance(a, torch.Tensor) else a for a in args),
            {k: (v[cut] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()},
        )


def prepare_batch(batch: Batch, dtype: torch.dtype, device: torch.device, index: int) -> Batch:
    """Move a batch to ``device``, cast floating tensors to ``dtype``, reject non-finite."""

    def convert(value, where):
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            if not torch.isfinite(value).all():
                raise ValueError(
                    f"inputs: batch {index}, {where} contains NaN or infinite values; clean "
                    "or drop those samples."
                )
            return value.to(device=device, dtype=dtype)
        return value.to(device=device)

    args, kwargs = batch
    return (
        tuple(convert(a, f"positional argument {i}") for i, a in enumerate(args)),
        {k: convert(v, f"argument {k!r}") for k, v in kwargs.items()},
    )


@dataclass
class FunctionalModel:
    """A module evaluated functionally at parameters ``params`` (buffers kept).

    ``output`` maps the module's return value to the output tensor of shape
    ``(batch, ..., out)``. ``params`` holds every parameter at the read's base point,
    in the read's dtype and device.
    """

    module: torch.nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    output: Callable | None = None

    def __call__(self, support: Mapping[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        args, kwargs = batch
        state = {**self.buffers, **self.params, **support}
        result = functional_call(self.module, state, args, kwargs, strict=False)
        return result if self.output is None else self.output(result)


def check_output(y, index: int = 0) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        kind = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(
            f"the model's output (batch {index}) is {kind}, not a floating tensor; pass "
            "output=callable mapping the module's return value to its output tensor "
            "(e.g. output=lambda o: o.logits)."
        )
    if y.ndim == 0:
        raise ValueError("the model's output is a scalar; it needs a leading batch axis.")
    return y


def squared_norms(lik: Likelihood, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample ``‖M(y) v‖²`` summed over all non-batch axes; shape ``(batch,)``."""
    w = lik.whiten(y, v)
    return (w * w).reshape(w.shape[0], -1).sum(dim=1)


def directional_fisher_sums(
    fmodel: FunctionalModel,
    lik: Likelihood,
    batch: Batch,
    points: Mapping[str, torch.Tensor],
    tangents: Mapping[str, torch.Tensor],
    chunk_size: int,
) -> torch.Tensor:
    """Sum over the batch of ``‖M J(p) u‖²`` for each (point, tangent) pair.

    ``points[name]`` and ``tangents[name]`` have shape ``(pairs, *param.shape)``: the
    parameter value at which to evaluate and the direction. Parameters not named stay
    at ``fmodel.params``. Returns the sums, shape ``(pairs,)``.
    Everything that does not depend on the pair (e.g. the network before the first
    tensor the directions touch) is computed once per chunk by vmap.
    """
    names = list(points)
    n_pairs = next(iter(points.values())).shape[0]

    def one(point: dict, tangent: dict) -> torch.Tensor:
        def f(sup):
            return fmodel(sup, batch)

        y, dy = jvp(f, (point,), (tangent,))
        return squared_norms(lik, y, dy).sum()

    batched = vmap(one)
    frozen = {id(v) for k, v in fmodel.params.items() if k not in points}
    frozen |= {id(v) for v in fmodel.buffers.values()}
    out = []
    with FrozenWeightMode(frozen):
        for start in range(0, n_pairs, chunk_size):
            cut = slice(start, start + chunk_size)
            p = {k: points[k][cut] for k in names}
            t = {k: tangents[k][cut] for k in names}
            out.append(batched(p, t))
    return torch.cat(out)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LayerNorm written out: its forward-mode derivative through these few elementwise
    ops runs about 1.6x faster than PyTorch's rule for the fused kernel (same values to
    rounding)."""
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    var = (centred * centred).mean(dim=dims, keepdim=True)
    out = centred * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


class _Frozen:
    """Holds a layer's frozen tensors and arguments out of autograd's sight."""

    __slots__ = ("func", "weight", "bias", "rest")

    def __init__(self, func, weight, bias, rest):
        self.func, self.weight, self.bias, self.rest = func, weight, bias, rest


class _FrozenWeightOp(torch.autograd.Function):
    """``func(x, W, b, *rest)`` with W, b constants: tangent ``func(ẋ, W, None, *rest)``.

    PyTorch's forward-mode rule for linear/conv materialises a zero tangent for the
    weight and multiplies by it, one wasted matmul per layer; with the weight held as
    a constant the tangent costs one matmul and the jvp two, the floor.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, frozen):
        return frozen.func(x, frozen.weight, frozen.bias, *frozen.rest)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.frozen = inputs[1]

    @staticmethod
    def jvp(ctx, x_t, _):
        frozen = ctx.frozen
        return frozen.func(x_t, frozen.weight, None, *frozen.rest)


class FrozenWeightMode(TorchFunctionMode):
    """Route linear and conv layers whose weights are not being read through
    :class:`_FrozenWeightOp`. ``frozen`` holds the ids of the constant tensors."""

    _FUNCS = {
        F.linear: ("weight", "bias"),
        F.conv1d: ("weight", "bias", "stride", "padding", "dilation", "groups"),
        F.conv2d: ("weight", "bias", "stride", "padding", "dilation", "groups"),
    }

    def __init__(self, frozen: set[int]):
        super().__init__()
        self.frozen = frozen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        names = self._FUNCS.get(func)
        if names is not None and len(args) >= 2:
            bound = dict(zip(names, args[1:], strict=False))
            for key in names:
                if key in kwargs:
                    bound[key] = kwargs[key]
            weight, bias = bound.get("weight"), bound.get("bias")
            if (
                isinstance(weight, torch.Tensor)
                and id(weight) in self.frozen
                and (bias is None or id(bias) in self.frozen)
                and not isinstance(bound.get("padding"), str)
            ):
                defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
                rest = tuple(bound.get(k, defaults[k]) for k in names[2:])
                return _FrozenWeightOp.apply(args[0], _Frozen(func, weight, bias, rest))
        return func(*args, **kwargs)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Evaluate a frozen checkpoint: dropout off, norm layers on running statistics."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
