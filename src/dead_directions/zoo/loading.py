"""A sweep job's model: its family (zoo or declared) and its checkpoint, loaded and checked."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from dead_directions.core.read import check_finite_parameters
from dead_directions.io import checkpoints
from dead_directions.zoo import declared


def family(name: str, spec: str | Mapping | None = None):
    """The family of a job: the family declared by ``spec`` (its config entry, a mapping or
    its JSON text; ``dd.declared``), else the zoo family ``name``."""

    if isinstance(spec, str):
        try:
            spec = json.loads(spec) if spec.strip() else None
        except json.JSONDecodeError as err:
            raise ValueError(f"--spec: not valid JSON ({err}).") from None
    return declared.resolve(name, spec)


def load_model(
    checkpoint: str | os.PathLike,
    family_name: str,
    size: str | None = None,
    *,
    override_family: bool = False,
    fam=None,
):
    """``(model, meta)`` of a checkpoint of ``family_name``; ``ValueError`` names the cause.

    ``fam``: a declared family (``dd.declared.DeclaredFamily``) loads with its own builder;
    otherwise ``dd.checkpoints.load`` with the family's name. A checkpoint whose sidecar
    names another family is refused unless ``override_family``; NaN or infinite weights are
    refused.
    """

    path = Path(checkpoint)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist.")
    if isinstance(fam, declared.DeclaredFamily):
        model, meta = fam.load(path, size)
    else:
        model, meta = checkpoints.load(
            path, family=family_name, size=size, override_family=override_family
        )
    check_finite_parameters(model, f"checkpoint {path}")
    return model, meta
