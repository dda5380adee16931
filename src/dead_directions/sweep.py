"""The sweep's per-job steps (probe data, layers, detect, measure, …) and their CLI commands."""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import store

DTYPES = ("auto", "float64", "float32")
SPEC_HELP = "a declared family's config entry as JSON (dd.declared); default: the zoo family"
# The sweep's name for the root module ('' in named_modules(), which owns parameters such
# as a positional embedding): '' cannot be a path component or a store label.
ROOT_LAYER = "_root"


def sweep_layer(module: str) -> str:
    """The sweep's (path-safe) name of a module: ``""`` becomes :data:`ROOT_LAYER`."""
    return module or ROOT_LAYER


def module_name(layer: str) -> str:
    """The module name of a sweep layer (inverse of :func:`sweep_layer`)."""
    return "" if layer == ROOT_LAYER else layer


# --------------------------------------------------------------------------------------
# Files between jobs: probe data and directions (safetensors, no pickle)
# --------------------------------------------------------------------------------------


def save_probe(inputs, path: str | os.PathLike) -> str:
    """Save probe inputs (a tensor or a dict of tensors); return their content hash."""
    from safetensors.torch import save_file

    tensors = {"input": inputs} if not isinstance(inputs, Mapping) else dict(inputs)
    kind = "tensor" if not isinstance(inputs, Mapping) else "dict"
    digest = probe_hash(inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"kind": kind, "sha256": digest},
    )
    os.replace(tmp, path)
    return digest


def _read_safetensors(path: Path, what: str, remedy: str) -> tuple[dict, dict]:
    """``(metadata, tensors)`` of a safetensors file; ``ValueError`` naming the file, what it
    should hold and how to remake it when it is missing or unreadable."""
    from safetensors import safe_open

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
    import torch

    from .fisher import iter_batches

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


def _jsonable(x):
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, int | float | str | bool) or x is None:
        return x
    return str(x)


def _float(x):
    return None if x is None else float(x)


def save_directions(directions, path: str | os.PathLike, info: Mapping | None = None) -> None:
    """Save ``dd.Direction``s (vectors and bases as tensors, the rest as JSON metadata)."""
    from safetensors.torch import save_file

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
                "predicted_order": _jsonable(_float(d.predicted_order)),
                "scale": d.scale,
                "base": bool(d.base),
                "meta": _jsonable(dict(d.meta)),
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    meta = {"directions": json.dumps(records), "info": json.dumps(_jsonable(dict(info or {})))}
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_directions(path: str | os.PathLike) -> list:
    """Directions saved by :func:`save_directions`.

    Raises ``ValueError`` naming the file when it is missing, unreadable, or its records and
    tensors do not match.
    """
    from .direction import Direction

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


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def family(name: str, spec: str | Mapping | None = None):
    """The family of a job: the family declared by ``spec`` (its config entry, a mapping or
    its JSON text; ``dd.declared``), else the zoo family ``name``."""
    from . import declared

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
    from . import checkpoints, declared

    path = Path(checkpoint)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist.")
    if isinstance(fam, declared.DeclaredFamily):
        model, meta = fam.load(path, size)
    else:
        model, meta = checkpoints.load(
            path, family=family_name, size=size, override_family=override_family
        )
    for name, value in model.named_parameters():
        bad = int((~value.detach().isfinite()).sum())
        if bad:
            raise ValueError(
                f"checkpoint {path}: parameter {name!r} has {bad} NaN or infinite entries of "
                f"{value.numel()}; the checkpoint is corrupt or training diverged."
            )
    return model, meta


def resolve_device(device: str = "auto"):
    """The torch device for ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.

    Raises ``ValueError`` for a device name torch does not know or a CUDA device this
    machine does not have.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: not a device name ({err}).") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise ValueError(
                f"--device {device}: this machine has {count} CUDA device(s); use auto (CUDA "
                "when present, else CPU) or cpu."
            )
    return chosen


def _torch_dtype(name: str):
    """``None`` for ``"auto"`` (the device decides), else the torch dtype."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}.")
    return None if name == "auto" else getattr(torch, name)


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(int(n))


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def _sidecar_matches(path: Path, family_name: str, size: str, seed: int, tiny: bool) -> bool:
    from . import checkpoints

    try:
        meta = checkpoints.read_meta(path)
    except (OSError, ValueError):
        return False
    return (
        meta.get("family") == family_name
        and str(meta.get("size")) == size
        and int(meta.get("seed", -1)) == seed
        and bool(meta.get("tiny", False)) == tiny
    )


def cmd_checkpoints(args) -> int:
    """Obtain one (family, size)'s checkpoints and write their manifest.

    Trains the zoo family (``dd.zoo.train``) at the ``--save`` steps unless every one is
    already on disk from the same family, size, seed and recipe; or, with ``--external``,
    registers checkpoint files the user brings (``STEP=PATH``, read as they are).
    """
    started = time.perf_counter()
    _threads(args.threads)
    root = Path(args.root)
    fam = family(args.family, args.spec)
    missing: list[int] = []
    from .declared import DeclaredFamily

    if isinstance(fam, DeclaredFamily):
        on_disk = fam.steps_on_disk(args.size)
        wanted = args.save or on_disk
        steps = {s: str(fam.checkpoint(args.size, s)) for s in wanted if s in on_disk}
        missing = [s for s in wanted if s not in on_disk]
        for s in missing:
            print(
                f"warning: {args.family}/{args.size} step {s}: no checkpoint at "
                f"{fam.checkpoint(args.size, s)}",
                file=sys.stderr,
            )
        how = "found"
    elif args.external:
        steps = {}
        for item in args.external:
            step, _, path = item.partition("=")
            if not step.isdigit() or not path:
                raise ValueError(f"--external: expected STEP=PATH, got {item!r}.")
            steps[int(step)] = path
        how = "registered"
    else:
        from . import zoo

        fam = family(args.family)
        save = sorted(set(args.save or fam.default_steps(args.tiny)))
        paths = {s: root / args.family / args.size / f"step{s:07d}.safetensors" for s in save}
        have = all(
            p.exists() and _sidecar_matches(p, args.family, args.size, args.seed, args.tiny)
            for p in paths.values()
        )
        if not have:
            zoo.train(args.family, args.size, save, root, seed=args.seed, tiny=args.tiny)
        steps = {s: str(p) for s, p in paths.items()}
        how = "found" if have else "trained"
    record = {
        "family": args.family,
        "size": args.size,
        "seed": args.seed,
        "tiny": bool(args.tiny),
        "how": how,
        "checkpoints": {str(k): v for k, v in sorted(steps.items())},
        "missing": missing,
    }
    out = Path(args.manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"{args.family}/{args.size}: {len(steps)} checkpoints {how} in "
        f"{time.perf_counter() - started:.1f} s -> {out}"
    )
    return 0


def cmd_probe(args) -> int:
    """Draw a family's probe inputs and save them (with their hash)."""
    from .declared import DeclaredFamily

    fam = family(args.family, args.spec)
    if isinstance(fam, DeclaredFamily):
        inputs = fam.probe(n=args.n, seed=args.seed, tokenizer_from=args.tokenizer_from)
    else:
        inputs = fam.probe(n=args.n, seed=args.seed)
    digest = save_probe(inputs, args.out)
    print(f"probe data of {args.family}: {args.out} (sha256 {digest[:12]})")
    return 0


def cmd_layers(args) -> int:
    """Write the layer names a sweep fans out over for one family and size (JSON list)."""
    from . import detectors

    _threads(args.threads)
    fam = family(args.family, args.spec)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    else:
        model = fam.build(args.size)
    select = getattr(fam, "select_layers", detectors.layers)
    names = [sweep_layer(n) for n in select(model)]
    if args.only:
        unknown = [p for p in args.only if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unknown:
            raise ValueError(
                f"layers {unknown} match no sweep layer of {args.family}/{args.size}; "
                f"available: {names}"
            )
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in args.only)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(names, indent=1) + "\n")
    print(f"{len(names)} layers of {args.family}/{args.size}: {', '.join(names)}")
    return 0


def detect_cell(
    model, inputs, fam, layer: str, *, detectors=None, max_per_layer=None, limit=None, seed=0
):
    """The directions of one layer (capped at ``limit``) and how many were dropped.

    The detectors see only the fit part of the probe (:func:`dead_directions.split_probe`):
    the read holds the rest out to confirm every gauge verdict (METHOD §3 rule 1)."""
    import dead_directions as dd

    found = dd.detect(
        model,
        dd.split_probe(inputs)[0],
        detectors=detectors,
        layers=[module_name(layer)],
        max_per_layer=max_per_layer,
        seed=seed,
        output=fam.output,
        likelihood=fam.likelihood,
    )
    return cap_directions(found, limit) if limit else (found, 0)


def detect_cells(
    model, inputs, fam, layers, *, detectors=None, max_per_layer=None, limit=None, seed=0
):
    """:func:`detect_cell` for every layer of one checkpoint: ``{layer: (directions,
    dropped)}``, each what :func:`detect_cell` returns (one ``dd.detect`` call per layer, as
    a detect job makes). The calls share one ``dd.detectors.Context``: the probe batches in
    float64 and the traced module graph are made once, not once per layer. (One call for
    all layers would also share the detectors that run at every anchor, but would plan
    K-FAC's factors of all layers in one pass: a call per layer computes exactly what a
    detect job computes, so both units write the same store.)"""
    import dead_directions as dd

    fit = dd.split_probe(inputs)[0]
    output = fam.output  # one object: a declared family makes a new one at each access
    ctx = dd.detectors.Context(
        model,
        fit,
        likelihood=fam.likelihood,
        output=output,
        seed=seed,
        max_per_layer=max_per_layer,
    )
    out = {}
    for layer in layers:
        found = dd.detect(
            model,
            fit,
            detectors=detectors,
            layers=[module_name(layer)],
            max_per_layer=max_per_layer,
            seed=seed,
            output=output,
            likelihood=fam.likelihood,
            context=ctx,
        )
        out[layer] = cap_directions(found, limit) if limit else (found, 0)
    return out


def parse_detectors(values: Sequence[str] | None):
    """``--detectors`` values: detector names (each run at every layer), or entries
    ``LayerType=name,name`` (a mapping from layer type to names, overriding
    ``dd.detectors.DEFAULT_BY_LAYER_TYPE`` per type); None or empty: the defaults."""
    if not values:
        return None
    typed = ["=" in v for v in values]
    if not any(typed):
        return list(values)
    if not all(typed):
        raise ValueError(
            f"--detectors {' '.join(values)}: give either detector names or LayerType=names "
            "entries (e.g. Linear=dead_unit,kfac LayerNorm=layernorm_kernel), not both."
        )
    mapping: dict[str, list[str]] = {}
    for v in values:
        kind, _, names = v.partition("=")
        if not kind or kind in mapping:
            raise ValueError(f"--detectors {v!r}: each entry is LayerType=name[,name...], once.")
        mapping[kind] = [n for n in names.split(",") if n]
    return mapping


def cmd_detect(args) -> int:
    """Run the detectors on one layer of one checkpoint; save the directions."""
    started = time.perf_counter()
    _threads(args.threads)
    fam = family(args.family, args.spec)
    model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    inputs, digest = load_probe(args.probe)
    check_probe(model, inputs, args.probe)
    limit = store.layout(args.store).max_directions if args.store else args.limit
    found, dropped = detect_cell(
        model,
        inputs,
        fam,
        args.layer,
        detectors=parse_detectors(args.detectors),
        max_per_layer=args.max_per_layer,
        limit=limit,
        seed=args.seed,
    )
    if dropped:
        print(
            f"warning: {dropped} directions dropped to fit the store's max_directions = {limit}",
            file=sys.stderr,
        )
    info = {"checkpoint": str(args.checkpoint), "probe_hash": digest, "dropped": dropped}
    save_directions(found, args.out, info)
    counts: dict[str, int] = {}
    for d in found:
        counts[d.detector] = counts.get(d.detector, 0) + 1
    print(
        f"{args.family}/{args.size}/step{args.step}/{args.layer}: {len(found)} directions "
        f"{counts} in {time.perf_counter() - started:.1f} s"
    )
    return 0


def measure_cell(model, inputs, directions, fam, radii, *, device, dtype, seed=0):
    """Read every direction of one cell on ``device`` (``dd.read_on_device``).

    ``dtype=None`` lets the device choose (float32 with a float64 spot check on CUDA,
    float64 on CPU). Returns ``(reads, spot check or None, device name, dtype name)``.
    """
    import dead_directions as dd

    if not directions:
        name = "float64" if dtype is None else str(dtype).replace("torch.", "")
        return [], None, str(device), name
    model = model.to(device=device)
    return dd.read_on_device(
        model,
        inputs,
        directions,
        device=device,
        dtype=dtype,
        likelihood=fam.likelihood,
        output=fam.output,
        radii=radii,
        seed=seed,
    )


def layer_dead_dimension(model, inputs, fam, layer: str):
    """The dead dimension of a sweep layer (``dd.dead_dimension``, float64 on the CPU,
    before the read moves the model), or None for a layer without parameters of its own."""
    from .dead_dimension import dead_dimension

    name = module_name(layer)
    modules = dict(model.named_modules())
    if name not in modules or not any(True for _ in modules[name].parameters(recurse=False)):
        return None
    return dead_dimension(model, inputs, name, likelihood=fam.likelihood, output=fam.output)


def measure_and_write(
    model, inputs, digest, directions, fam, key, args, started, *, lay=None, checkpoint_hash=None
) -> int:
    """Read one cell's directions (``measure_cell``), count its layer's dead dimension, and
    write its chunks, provenance and marker to ``args.store``; returns the cell's index.
    ``args``: the command's checkpoint, store, device, dtype and seed; ``started``: when the
    cell's work began (its wall time). ``lay`` (the store's layout) and ``checkpoint_hash``
    are computed when not given (a job reading many cells of one checkpoint passes them:
    hashing a large checkpoint folder once per layer would cost more than its reads)."""
    lay = lay if lay is not None else store.layout(args.store)
    if checkpoint_hash is None:
        checkpoint_hash = store.file_hash(args.checkpoint)
    device = resolve_device(args.device)
    dtype = _torch_dtype(args.dtype)
    dead = layer_dead_dimension(model, inputs, fam, key.layer)
    reads, check, device_name, dtype_name = measure_cell(
        model, inputs, directions, fam, lay.radii, device=device, dtype=dtype, seed=args.seed
    )
    prov = store.Provenance.collect(
        device=device_name,
        dtype=dtype_name,
        spot_check=check,
        seed=args.seed,
        probe_hash=digest,
        checkpoint=str(args.checkpoint),
        checkpoint_hash=checkpoint_hash,
        wall_seconds=time.perf_counter() - started,
    )
    index = store.write_cell(args.store, key, reads, prov, dead)
    kinds: dict[str, int] = {}
    for r in reads:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    if dead is not None:
        print(
            f"{key}: dead dimension {dead.dead} of {dead.n_params} ({dead.method}, rtol "
            f"{dead.rtol:g}, rank cap {dead.rank_cap})"
        )
    print(
        f"{key}: {len(reads)} reads {kinds} on {device_name} ({dtype_name}) in "
        f"{time.perf_counter() - started:.1f} s -> {args.store} cell {index}"
    )
    return index


def cmd_measure(args) -> int:
    """Read one cell's directions at its checkpoint and write its chunks and marker."""
    started = time.perf_counter()
    _threads(args.threads)
    key = store.CellKey(args.family, args.size, int(args.step), args.layer)
    fam = family(args.family, args.spec)
    model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    inputs, digest = load_probe(args.probe)
    check_probe(model, inputs, args.probe)
    directions = load_directions(args.directions)
    check_directions(directions, model, args.directions)
    measure_and_write(model, inputs, digest, directions, fam, key, args, started)
    return 0


def cmd_measure_checkpoint(args) -> int:
    """Detect and read every layer of one checkpoint in one process (the sweep's
    per-checkpoint unit of work): the model and probe load once; each layer's directions
    are saved under ``--directions-dir`` and written as its own store cell, exactly as the
    per-layer `detect` and `measure` jobs do; then the checkpoint's marker is written."""
    from tqdm.auto import tqdm

    from .read import on_terminal

    started = time.perf_counter()
    _threads(args.threads)
    fam = family(args.family, args.spec)
    model, _ = load_model(args.checkpoint, args.family, args.size, fam=fam)
    inputs, digest = load_probe(args.probe)
    check_probe(model, inputs, args.probe)
    layers = json.loads(Path(args.layers).read_text())
    lay = store.layout(args.store)
    checkpoint_hash = store.file_hash(args.checkpoint)
    out_dir = Path(args.directions_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # every layer's directions (on the CPU, as in a detect job), sharing one detector
    # context; the time is charged to the layers in equal shares
    detect_started = time.perf_counter()
    detected = detect_cells(
        model,
        inputs,
        fam,
        layers,
        detectors=parse_detectors(args.detectors),
        max_per_layer=args.max_per_layer,
        limit=lay.max_directions,
        seed=args.seed,
    )
    share = (time.perf_counter() - detect_started) / max(len(layers), 1)
    cells = []
    for layer in tqdm(layers, desc="layers", unit="layer", disable=not on_terminal()):
        layer_started = time.perf_counter() - share
        model = model.to("cpu")  # the read may have moved it to the device
        found, dropped = detected[layer]
        path = out_dir / f"{layer}.safetensors"
        info = {"checkpoint": str(args.checkpoint), "probe_hash": digest, "dropped": dropped}
        save_directions(found, path, info)
        directions = load_directions(path)  # the round trip a measure job reads
        key = store.CellKey(args.family, args.size, int(args.step), layer)
        index = measure_and_write(
            model,
            inputs,
            digest,
            directions,
            fam,
            key,
            args,
            layer_started,
            lay=lay,
            checkpoint_hash=checkpoint_hash,
        )
        cells.append({"layer": layer, "index": index, "n_directions": len(directions)})
    record = {
        "family": args.family,
        "size": args.size,
        "step": int(args.step),
        "cells": cells,
        "seconds": time.perf_counter() - started,
    }
    store.write_text_atomic(Path(args.marker), json.dumps(record, indent=1) + "\n")
    print(
        f"{args.family}/{args.size}/step{args.step}: {len(cells)} layers in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def _radii(args) -> np.ndarray | None:
    if args.radii:
        return np.asarray(args.radii, dtype=float)
    if args.n_radii:
        if not 0 < args.r_min < args.r_max:
            raise ValueError(
                f"--r-min {args.r_min} and --r-max {args.r_max}: need 0 < r_min < r_max "
                "(config store_layout.r_min, store_layout.r_max)."
            )
        return np.logspace(np.log10(args.r_min), np.log10(args.r_max), args.n_radii)
    return None


def cmd_init_store(args) -> int:
    """Create the store (or check an existing one's layout) and write a marker file.

    The marker records the store's path, identity and layout: the workflow compares them
    with the store and the config before any job runs (a deleted or replaced store is
    rebuilt; a changed layout is refused).
    """
    lay = store.init(args.store, max_directions=args.max_directions, radii=_radii(args))
    if args.marker:
        record = {
            "store": str(args.store),
            "store_id": store.store_id(args.store),
            "max_directions": lay.max_directions,
            "radii": lay.radii,
        }
        store.write_text_atomic(Path(args.marker), json.dumps(record) + "\n")
    print(f"store {args.store}: max_directions {lay.max_directions}, {len(lay.radii)} radii")
    return 0


def _dask_spec(text: str):
    """``--dask``: a JSON mapping (``ClusterSpec`` fields), a kind, or an address."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--dask: not valid JSON ({err}).") from None
    return text or None


def cmd_aggregate(args) -> int:
    """Summarise the completed cells of the store with dask; write the tidy CSV."""
    from .aggregate import aggregate

    started = time.perf_counter()
    frame = aggregate(args.store, _dask_spec(args.dask))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    cells = int((frame["layer"] != "all").sum()) if len(frame) else 0
    print(f"{cells} cells aggregated in {time.perf_counter() - started:.1f} s -> {out}")
    return 0


def _summary(path):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ValueError(f"summary {path} does not exist; run `dead-directions aggregate`.")
    return pd.read_csv(path, dtype={"family": str, "size": str, "layer": str})


def cmd_tables(args) -> int:
    """Write step × size tables (CSV and Markdown) for the given families."""
    from .aggregate import write_tables

    frame = _summary(args.summary)
    if args.family:
        frame = frame[frame["family"].isin(args.family)]
    written = write_tables(frame, args.out_dir)
    print(f"{len(written)} tables under {args.out_dir}")
    return 0


def cmd_figures(args) -> int:
    """Draw one family's figures (order heatmap, counts and λ, rate curves)."""
    from .report import figures

    frame = _summary(args.summary)
    checkpoint = None
    if args.checkpoint:
        size, _, step = args.checkpoint.rpartition(":")
        checkpoint = (size, int(step))
    paths = figures(frame, args.store, args.family, args.out_dir, checkpoint)
    print("\n".join(map(str, paths)))
    return 0


def cmd_report(args) -> int:
    """Write the report (Markdown and HTML) from the summary and the figures."""
    from .report import write_report

    frame = _summary(args.summary)
    dirs = dict(item.split("=", 1) for item in args.figures or [])
    paths = write_report(frame, dirs, args.out, store_path=args.store or "", missing=args.missing)
    print("\n".join(map(str, paths)))
    return 0


def cmd_check_family(args) -> int:
    """Check a declared family on one of its checkpoints before a sweep runs (the workflow
    calls this when it starts): builder, probe, output and layer patterns."""
    from . import declared

    fam = declared.DeclaredFamily.from_config(args.family, json.loads(args.spec))
    layers = declared.check(fam, args.size, args.step)
    print(f"{args.family}: {len(layers)} layers: {', '.join(layers)}")
    return 0


def cmd_missing(args) -> int:
    """Write the table of checkpoints the config lists but the disk lacks (CSV)."""
    import pandas as pd

    try:
        records = json.loads(args.records)
    except json.JSONDecodeError as err:
        raise ValueError(f"--records: not valid JSON ({err}).") from None
    frame = pd.DataFrame(records, columns=["family", "size", "step", "path"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    for row in records:
        print(f"missing: {row['family']}/{row['size']} step {row['step']}: {row['path']}")
    print(f"{len(records)} missing checkpoints -> {out}")
    return 0


def cmd_read(args) -> int:
    """Detect and read the directions of one checkpoint; print a table; optionally store."""
    from tabulate import tabulate

    from . import detectors
    from .cli import _fmt

    started = time.perf_counter()
    _threads(args.threads)
    spec = _read_spec(args)
    args.family = args.family or "checkpoint"
    fam = family(args.family, spec)
    model, meta = load_model(
        args.checkpoint,
        args.family,
        args.size,
        override_family=args.override_family,
        fam=fam if spec else None,
    )
    size = args.size or str(meta.get("size", "")) or "default"
    step = args.step if args.step is not None else int(meta.get("step", 0) or 0)
    if spec:
        inputs = fam.probe(n=args.probe_n, seed=args.seed, tokenizer_from=args.checkpoint)
        check_probe(model, inputs, args.probe_file)
    else:
        inputs = fam.probe(n=args.probe_n, seed=args.seed)
    select = getattr(fam, "select_layers", detectors.layers)
    layers = args.layers or [sweep_layer(n) for n in select(model)]
    device, dtype = resolve_device(args.device), _torch_dtype(args.dtype)
    radii, limit = None, None
    if args.store:
        lay = (
            store.layout(args.store)
            if _has_store(args.store)
            else store.init(args.store, max_directions=args.max_directions)
        )
        radii, limit = lay.radii, lay.max_directions
    # The dead dimension goes with the stored cells; counted before the read moves the model.
    dead = (
        {layer: layer_dead_dimension(model, inputs, fam, layer) for layer in layers}
        if args.store
        else {}
    )
    rows, per_layer = [], {}
    from tqdm.auto import tqdm

    from .read import on_terminal

    for layer in tqdm(layers, desc="layers", unit="layer", disable=not on_terminal()):
        found, _ = detect_cell(
            model,
            inputs,
            fam,
            layer,
            detectors=parse_detectors(args.detectors),
            max_per_layer=args.max_per_layer,
            limit=limit,
            seed=args.seed,
        )
        reads, check, device_name, dtype_name = measure_cell(
            model, inputs, found, fam, radii, device=device, dtype=dtype, seed=args.seed
        )
        per_layer[layer] = (reads, check, device_name, dtype_name)
        for r in reads:
            rows.append(
                [
                    layer,
                    r.name,
                    r.kind,
                    _fmt(r.order),
                    r.predicted_kind or "—",
                    _fmt(r.predicted_order, 0),
                    _fmt(r.lam),
                    _fmt(r.nu),
                    _fmt(r.correctability),
                    f"{r.magnitude:.1e}",
                ]
            )
    headers = ["layer", "direction", "kind", "k̂", "pred kind", "pred k", "λ", "ν", "ρ", "g/g_ref"]
    print(tabulate(rows, headers=headers, tablefmt=args.format))
    seconds = time.perf_counter() - started
    print(f"\n{len(rows)} directions in {len(layers)} layers read in {seconds:.1f} s.")
    if args.store:
        for layer, (reads, check, device_name, dtype_name) in per_layer.items():
            prov = store.Provenance.collect(
                device=device_name,
                dtype=dtype_name,
                spot_check=check,
                seed=args.seed,
                probe_hash=probe_hash(inputs),
                checkpoint=str(args.checkpoint),
                checkpoint_hash=store.file_hash(args.checkpoint),
                wall_seconds=seconds / max(1, len(layers)),
            )
            key = store.CellKey(args.family, size, step, layer)
            store.write_cell(args.store, key, reads, prov, dead.get(layer))
        print(f"written to {args.store} ({len(per_layer)} cells).")
    return 0


def _read_spec(args) -> dict | None:
    """A declared family's config entry from `read`'s command line (``--builder`` …), or
    None to read as the zoo family ``--family``."""
    if not args.builder:
        if not args.family:
            raise ValueError(
                "read: give --family (a zoo family) or --builder (hf, module:function)."
            )
        return None
    if not args.probe_file:
        raise ValueError("read: --builder needs --probe-file (the probe data) and --probe-kind.")
    spec = {
        "builder": args.builder,
        "task": args.task,
        "likelihood": args.likelihood,
        "probe": {"path": args.probe_file, "kind": args.probe_kind, "length": args.probe_length},
    }
    if args.output:
        spec["output"] = args.output
    return spec


def _has_store(path) -> bool:
    return (Path(path) / "zarr.json").exists()


def _cell_args(p: argparse.ArgumentParser, layer: bool = True) -> None:
    p.add_argument("--family", required=True)
    p.add_argument("--size", required=True)
    p.add_argument("--step", required=True, type=int)
    if layer:
        p.add_argument("--layer", required=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint file")
    p.add_argument("--probe", required=True, help="probe data (from `dead-directions probe`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--spec", default=None, help=SPEC_HELP)


def add_parser(sub) -> None:
    p = sub.add_parser("checkpoints", help="train (or register) one family size's checkpoints")
    p.add_argument("--family", required=True)
    p.add_argument("--size", required=True)
    p.add_argument("--root", required=True, help="checkpoint root ({root}/{family}/{size}/…)")
    p.add_argument("--save", type=int, nargs="*", default=None, help="steps to save")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the zoo's tiny recipe")
    p.add_argument("--external", nargs="*", default=None, help="STEP=PATH checkpoints to use")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--manifest", required=True, help="manifest JSON to write")
    p.add_argument("--spec", default=None, help=SPEC_HELP)
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("probe", help="save a family's probe inputs")
    p.add_argument("--family", required=True)
    p.add_argument("--n", type=int, default=None, help="probe inputs (family default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--spec", default=None, help=SPEC_HELP)
    p.add_argument(
        "--tokenizer-from", default=None, help="a checkpoint folder with the tokenizer (text)"
    )
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("layers", help="list the layers a sweep fans out over (JSON)")
    p.add_argument("--family", required=True)
    p.add_argument("--size", required=True)
    p.add_argument("--checkpoint", default=None, help="read the model from this checkpoint")
    p.add_argument("--only", nargs="*", default=None, help="keep only these layers")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--spec", default=None, help=SPEC_HELP)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("detect", help="run the detectors on one layer of one checkpoint")
    _cell_args(p)
    p.add_argument("--detectors", nargs="*", default=None, help="detector names (default all)")
    p.add_argument("--max-per-layer", type=int, default=None)
    p.add_argument("--store", default=None, help="cap at this store's max_directions")
    p.add_argument("--limit", type=int, default=None, help="cap without a store")
    p.add_argument("--out", required=True, help="directions file (.safetensors)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("measure", help="read one cell and write it to the store")
    _cell_args(p)
    p.add_argument("--directions", required=True, help="from `dead-directions detect`")
    p.add_argument("--store", required=True)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:0…")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="auto: float32 on CUDA, else float64"
    )
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser(
        "measure-checkpoint", help="detect and read every layer of one checkpoint (one job)"
    )
    _cell_args(p, layer=False)
    p.add_argument("--layers", required=True, help="the layers JSON (`dead-directions layers`)")
    p.add_argument("--detectors", nargs="*", default=None, help="detector names (default all)")
    p.add_argument("--max-per-layer", type=int, default=None)
    p.add_argument("--store", required=True)
    p.add_argument("--directions-dir", required=True, help="folder of the layers' directions")
    p.add_argument("--marker", required=True, help="the checkpoint's marker (JSON) to write")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:0…")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="auto: float32 on CUDA, else float64"
    )
    p.set_defaults(func=cmd_measure_checkpoint)

    p = sub.add_parser("init-store", help="create the Fisher-rate store (never truncates)")
    p.add_argument("--store", required=True)
    p.add_argument("--max-directions", type=int, default=store.DEFAULT_MAX_DIRECTIONS)
    p.add_argument("--n-radii", type=int, default=None, help="log-spaced radii (default 25)")
    p.add_argument("--r-min", type=float, default=1e-4)
    p.add_argument("--r-max", type=float, default=1.0)
    p.add_argument("--radii", type=float, nargs="*", default=None, help="explicit radii")
    p.add_argument("--marker", default=None, help="write this marker file when done")
    p.set_defaults(func=cmd_init_store)

    p = sub.add_parser("aggregate", help="summarise the store with dask (tidy CSV)")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--dask",
        default="local",
        help="local (LocalCluster), threads, synchronous, tcp://address, slurm, or a JSON "
        "mapping of dead_directions.cluster.ClusterSpec fields",
    )
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("tables", help="step × size tables (CSV, Markdown)")
    p.add_argument("--summary", required=True, help="CSV from `dead-directions aggregate`")
    p.add_argument("--family", nargs="*", default=None)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("figures", help="one family's figures (PNG)")
    p.add_argument("--summary", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--checkpoint", default=None, help="SIZE:STEP for the rate curves")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("report", help="the sweep report (Markdown + HTML)")
    p.add_argument("--summary", required=True)
    p.add_argument("--figures", nargs="*", default=None, help="FAMILY=DIR of its figures")
    p.add_argument("--store", default=None)
    p.add_argument("--missing", default=None, help="CSV of missing checkpoints (a section)")
    p.add_argument("--out", required=True, help="report .md (an .html twin is written)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("check-family", help="check a declared family before a sweep")
    p.add_argument("--family", required=True)
    p.add_argument("--spec", required=True, help=SPEC_HELP)
    p.add_argument("--size", required=True)
    p.add_argument("--step", required=True, type=int)
    p.set_defaults(func=cmd_check_family)

    p = sub.add_parser("missing", help="table of the checkpoints the config lists but lacks")
    p.add_argument("--records", required=True, help="JSON list of {family, size, step, path}")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_missing)

    p = sub.add_parser("read", help="detect and read one checkpoint; print a table")
    p.add_argument("checkpoint")
    p.add_argument("--family", default=None, help="a zoo family (or a name for --builder)")
    p.add_argument("--builder", default=None, help="hf or module:function: no zoo family")
    p.add_argument(
        "--task",
        default="base",
        choices=["base", "causal-lm", "sequence-classification", "image-classification"],
        help="with --builder hf: the head the model is built with",
    )
    p.add_argument("--probe-file", default=None, help="with --builder: the probe data")
    p.add_argument(
        "--probe-kind", default="tensor", choices=["text", "tensor", "images", "datasets"]
    )
    p.add_argument("--probe-length", type=int, default=32, help="text: tokens per example")
    p.add_argument("--likelihood", default="gaussian", choices=["gaussian", "categorical"])
    p.add_argument("--output", default=None, help="output field (logits, ...) or tensor")
    p.add_argument(
        "--override-family",
        action="store_true",
        help="read with --family even where the checkpoint's sidecar names another family",
    )
    p.add_argument("--size", default=None, help="default: from the checkpoint's sidecar")
    p.add_argument("--step", type=int, default=None, help="default: from the sidecar")
    p.add_argument("--layers", nargs="*", default=None, help="default: all sweep layers")
    p.add_argument("--detectors", nargs="*", default=None)
    p.add_argument("--max-per-layer", type=int, default=None)
    p.add_argument("--probe-n", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--store", default=None, help="also write the cells to this store")
    p.add_argument("--max-directions", type=int, default=store.DEFAULT_MAX_DIRECTIONS)
    p.add_argument("--format", default="github")
    p.set_defaults(func=cmd_read)
