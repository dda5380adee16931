"""Control directions: seeded random unit vectors in a layer's parameters (predicted regular)."""

from __future__ import annotations

import torch

from dead_directions.detectors.common import Timer, direction, used
from dead_directions.detectors.registry import register
from dead_directions.detectors.structure import is_attention


@register("random", local=True)
def random_directions(ctx, layer: str):
    """Gaussian unit directions over ``layer``'s own parameters (all of them for an
    attention module, which owns none directly): the control, predicted regular (k = 1).

    Nothing for a layer without parameters or whose parameters do not reach the output.
    """
    module = ctx.modules[layer]
    params = ctx.own_params(layer, recurse=is_attention(module))
    if not params or not used(ctx, params):
        return []
    timer = Timer()
    gen = ctx.generator("random", layer)
    out = []
    for i in range(ctx.limit("random", 2)):
        vec = {
            k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()
        }
        out.append(
            direction(
                "random",
                layer,
                i,
                vec,
                kind="regular",
                order=1.0,
                seconds=timer.seconds,
                products=0,
            )
        )
    return out
