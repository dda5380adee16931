"""Files passed between sweep jobs: probe data and directions (safetensors, no pickle),
and the sweep's path-safe layer names."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dead_directions.core.direction import Direction
from dead_directions.core.fisher import iter_batches
from dead_directions.io import files

# The sweep's name for the root module ('' in named_modules(), which owns parameters such
# as a positional embedding): '' cannot be a path component or a store label.
ROOT_LAYER = "_root"


def sweep_layer(module: str) -> str:
    """The sweep's (path-safe) name of a module: ``""`` becomes :data:`ROOT_LAYER`."""
    return module or ROOT_LAYER


def module_name(layer: str) -> str:
    """The module name of a sweep layer (inverse of :func:`sweep_layer`)."""
    return "" if layer == ROOT_LAYER else layer


def save_probe(inputs, path: str | os.PathLike) -> str:
    """Save probe inputs (a tensor or a dict of tensors); return their content hash."""

    tensors = {"input": inputs} if not isinstance(inputs, Mapping) else dict(inputs)
    kind = "tensor" if not isinstance(inputs, Mapping) else "dict"
    digest = probe_hash(inputs)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"kind": kind, "sha256": digest}
    files.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return digest


def _read_safetensors(path: Path, what: str, remedy: str) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a safetensors file; ``ValueError`` naming the file, what it
    should hold and how to remake it when it is missing or unreadable."""

    if not path.exists():
        raise ValueError(f"{what} {path} does not exist; {remedy}.")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as err:  # SafetensorError, OSError, ...: all mean an unusable file
        raise ValueError(
            f"{what} {path} is not a readable safetensors file ({err}); {remedy}."
        ) from None
    return meta, tensors


def load_probe(path: str | os.PathLike):
    """Probe inputs saved by :func:`save_probe` and their hash.

    Raises ``ValueError`` naming the file when it is missing, unreadable, or lacks the
    tensors its metadata promises.
    """
    path = Path(path)
    remedy = "rerun the probe rule (`dead-directions probe`)"
    meta, tensors = _read_safetensors(path, "probe data", remedy)
    if meta.get("kind") == "tensor":
        if "input" not in tensors:
            raise ValueError(
                f"probe data {path} says it holds one tensor but has no tensor 'input' "
                f"(found {sorted(tensors)}); {remedy}."
            )
        inputs = tensors["input"]
    else:
        if not tensors:
            raise ValueError(f"probe data {path} holds no tensors; {remedy}.")
        inputs = tensors
    return inputs, meta.get("sha256") or probe_hash(inputs)


def check_probe(model, inputs, path) -> None:
    """Run ``model`` on the first probe input: ``ValueError`` naming the probe file when the
    model cannot take it (wrong feature size, dtype or keys) instead of a shape error deep
    in the read."""

    dtype = next((p.dtype for p in model.parameters()), torch.float64)

    def cast(t):
        return t.to(dtype) if t.is_floating_point() else t

    try:
        args, kwargs = next(iter_batches(inputs, batch_size=1))
        with torch.no_grad():
            model(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})
    except Exception as err:  # any failure here means this probe does not fit this model
        shapes = (
            {k: tuple(v.shape) for k, v in inputs.items()}
            if isinstance(inputs, Mapping)
            else tuple(inputs.shape)
        )
        raise ValueError(
            f"probe data {path} (shape {shapes}) does not fit the model ({type(err).__name__}: "
            f"{err}); make it with `dead-directions probe` for this family."
        ) from None


def probe_hash(inputs) -> str:
    """sha256 over names, dtypes, shapes and bytes of the probe tensors."""
    tensors = {"input": inputs} if not isinstance(inputs, Mapping) else dict(inputs)
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _float(x):
    return None if x is None else float(x)


def save_directions(directions, path: str | os.PathLike, info: Mapping | None = None) -> None:
    """Save ``dd.Direction``s (vectors and bases as tensors, the rest as JSON metadata)."""

    tensors, records = {}, []
    for i, d in enumerate(directions):
        # clone: detectors may share tensors between directions (one base per layer), and
        # safetensors refuses tensors that share memory
        for name, value in d.vector.items():
            tensors[f"{i:05d}.vector.{name}"] = value.detach().cpu().clone().contiguous()
        for name, value in (d.base or {}).items():
            tensors[f"{i:05d}.base.{name}"] = value.detach().cpu().clone().contiguous()
        records.append(
            {
                "name": d.name,
                "layer": d.layer,
                "detector": d.detector,
                "predicted_kind": d.predicted_kind,
                "predicted_order": files.to_json(_float(d.predicted_order)),
                "scale": d.scale,
                "base": bool(d.base),
                "meta": files.to_json(dict(d.meta)),
            }
        )
    meta = {"directions": files.dumps(records), "info": files.dumps(dict(info or {}))}
    files.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_directions(path: str | os.PathLike) -> list:
    """Directions saved by :func:`save_directions`.

    Raises ``ValueError`` naming the file when it is missing, unreadable, or its records and
    tensors do not match.
    """

    path = Path(path)
    remedy = "rerun the detect rule (`dead-directions detect`) for this cell"
    meta, tensors = _read_safetensors(path, "directions file", remedy)
    try:
        records = json.loads(meta["directions"])
        if not isinstance(records, list):
            raise TypeError("the record list is not a list")
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(
            f"directions file {path} has no valid 'directions' metadata ({err!r}); {remedy}."
        ) from None
    out, bases = [], {}
    for i, rec in enumerate(records):
        prefix_v, prefix_b = f"{i:05d}.vector.", f"{i:05d}.base."
        vector = {k[len(prefix_v) :]: v for k, v in tensors.items() if k.startswith(prefix_v)}
        base = {k[len(prefix_b) :]: v for k, v in tensors.items() if k.startswith(prefix_b)}
        try:
            if not vector:
                raise KeyError(f"no tensors {prefix_v}*")
            # equal bases become one object again: dd.read_many streams directions that
            # share a base object together (one forward pass per batch for all of them)
            digest = hashlib.sha256()
            for k in sorted(base):
                digest.update(k.encode() + base[k].numpy().tobytes())
            base = bases.setdefault(digest.hexdigest(), base)
            po = rec["predicted_order"]
            out.append(
                Direction(
                    name=rec["name"],
                    layer=rec["layer"],
                    vector=vector,
                    detector=rec["detector"],
                    predicted_kind=rec["predicted_kind"],
                    predicted_order=None if po is None else float(po),
                    base=base if rec["base"] else None,
                    scale=float(rec["scale"]),
                    meta=rec.get("meta") or {},
                )
            )
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(
                f"directions file {path}: direction {i} is malformed ({err}); {remedy}."
            ) from None
    return out


def check_directions(directions, model, path) -> None:
    """``ValueError`` naming the directions file when a direction moves a tensor the model
    does not have, or has another shape than the model's."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for d in directions:
        for name, value in {**d.vector, **(d.base or {})}.items():
            if name not in shapes:
                raise ValueError(
                    f"directions file {path}: direction {d.name!r} moves {name!r}, which is "
                    "not a parameter of the model; was it detected on another checkpoint?"
                )
            if tuple(value.shape) != shapes[name]:
                raise ValueError(
                    f"directions file {path}: direction {d.name!r} has {name!r} of shape "
                    f"{tuple(value.shape)}, the model's is {shapes[name]}; rerun the detect "
                    "rule for this cell."
                )


def cap_directions(directions: Sequence, limit: int) -> tuple[list, int]:
    """At most ``limit`` directions, taken round-robin over detectors in their order."""
    if len(directions) <= limit:
        return list(directions), 0
    queues: dict[str, list] = {}
    for d in directions:
        queues.setdefault(d.detector, []).append(d)
    kept: list = []
    while len(kept) < limit:
        for q in queues.values():
            if q and len(kept) < limit:
                kept.append(q.pop(0))
    order = {id(d): i for i, d in enumerate(directions)}
    kept.sort(key=lambda d: order[id(d)])
    return kept, len(directions) - limit
