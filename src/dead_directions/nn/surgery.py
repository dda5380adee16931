"""Module surgery: narrow Linear, Conv and BatchNorm modules to a subset of their units.

Used by pruning (removing units) and by checkpoint loading (a pruned checkpoint is loaded
into the built model narrowed to the saved shapes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of ``model``'s submodule ``name`` (dotted)."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def param_copy(t: torch.Tensor) -> nn.Parameter:
    """A parameter holding a contiguous copy of ``t`` (detached)."""
    return nn.Parameter(t.detach().clone().contiguous())


def slice_outputs(m: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of Linear/Conv/BatchNorm ``m`` keeping output units ``keep``."""
    new = copy.deepcopy(m)
    idx = torch.tensor(keep, dtype=torch.long)
    new.weight = param_copy(m.weight[idx]) if m.weight is not None else None
    if m.bias is not None:
        new.bias = param_copy(m.bias[idx])
    if isinstance(m, nn.Linear):
        new.out_features = len(keep)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        new.num_features = len(keep)
        if m.running_mean is not None:
            new.running_mean = m.running_mean[idx].clone()
            new.running_var = m.running_var[idx].clone()
    else:
        new.out_channels = len(keep)
    return new


def slice_inputs(m: nn.Module, units: int, keep: list[int]) -> nn.Module:
    """A copy of Linear/Conv consumer ``m`` keeping the inputs of units ``keep``."""
    new = copy.deepcopy(m)
    if isinstance(m, nn.Linear):
        block = m.in_features // units
        cols = torch.tensor([u * block + b for u in keep for b in range(block)], dtype=torch.long)
        new.weight = param_copy(m.weight[:, cols])
        new.in_features = len(cols)
    else:
        new.weight = param_copy(m.weight[:, torch.tensor(keep, dtype=torch.long)])
        new.in_channels = len(keep)
    return new


def narrow_to_shapes(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> nn.Module:
    """Rebuild ``model``'s Linear/Conv/BatchNorm modules to the given state shapes (in place).

    The pruned checkpoint's sidecar stores ``pruned.shapes``; building the family at the
    original size and narrowing it gives a module that loads the pruned state strictly
    (``dd.checkpoints.load`` does this for every pruned checkpoint). A saved shape wider
    than the built module raises ``ValueError`` naming the tensor.
    """
    for name, m in list(model.named_modules()):
        if not isinstance(m, nn.Linear | nn.Conv2d | nn.modules.batchnorm._BatchNorm):
            continue
        w = shapes.get(f"{name}.weight")
        if w is None or tuple(w) == tuple(m.weight.shape):
            continue
        w = tuple(int(s) for s in w)
        have = tuple(m.weight.shape)
        if len(w) != len(have) or any(a > b for a, b in zip(w, have, strict=True)):
            raise ValueError(
                f"pruned shape {w} of {name}.weight does not fit the built {have} (a pruned "
                "checkpoint only narrows; check the family and size)"
            )
        new = slice_outputs(m, list(range(w[0])))
        if isinstance(m, nn.Linear) and w[1] != m.in_features:
            new.weight, new.in_features = param_copy(new.weight[:, : w[1]]), w[1]
        elif isinstance(m, nn.Conv2d) and w[1] != m.in_channels:
            new.weight, new.in_channels = param_copy(new.weight[:, : w[1]]), w[1]
        replace_module(model, name, new)
    return model


def producer_units(module: nn.Module) -> int:
    """How many units a Linear, Conv or BatchNorm module produces (its output axis)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return module.out_channels
