"""Act on the read: remove dead units and merge duplicate units, verified on held-out inputs."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from dead_directions import zoo
from dead_directions.core.direction import ORDER_TOLERANCE, Direction
from dead_directions.core.read import Read, read_many
from dead_directions.detectors import detect
from dead_directions.io import checkpoints
from dead_directions.nn.surgery import (
    producer_units,
    replace_module,
    slice_inputs,
    slice_outputs,
)
from dead_directions.zoo.loading import load_model

PRUNE_DETECTORS = ("dead_unit", "duplicate_units")


# ------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class UnitAction:
    """One accepted action on a hidden unit of ``layer`` (the unit's producer module).

    ``action``: ``"remove"`` (node death; the unit's mean activation on the probe data is
    folded into the consumer's bias) or ``"merge"`` (duplicate; its outgoing weights, times
    ``ratio`` c with a_unit = c·a_into, are added to unit ``into``'s). ``change``: the
    relative change of the outputs on the held-out inputs from this action alone.
    """

    layer: str
    unit: int
    action: str
    into: int | None
    ratio: float | None
    reason: str
    direction: str
    kind: str
    order: float
    change: float


@dataclass(frozen=True)
class Skipped:
    """A direction (or unit) not acted on, and why."""

    direction: str
    layer: str
    unit: int | None
    why: str


@dataclass(frozen=True)
class LayerPrune:
    """Per producer layer: widths, units removed/merged, parameters and forward FLOPs saved.

    ``modules``: the modules whose shapes changed (producer group and consumer).
    """

    layer: str
    consumer: str
    modules: tuple[str, ...]
    width_before: int
    width_after: int
    removed: tuple[int, ...]
    merged: tuple[tuple[int, int], ...]
    params_before: int
    params_saved: int
    flops_before: int
    flops_saved: int

    @property
    def units_removed(self) -> int:
        return self.width_before - self.width_after


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` did and what it cost, measured.

    ``output_change``: ‖f_pruned(X) − f(X)‖ / ‖f(X)‖ on the held-out inputs X (Frobenius).
    ``metric``: ``"accuracy"`` (integer labels; ``metric_change`` absolute) or ``"loss"``
    (mean squared error summed over outputs; ``metric_change`` relative), None without
    labels. FLOPs are forward FLOPs of one probe batch (``torch.utils.flop_counter``).
    ``shapes``: the pruned model's parameter and buffer shapes (for :func:`load_pruned`).
    """

    layers: tuple[LayerPrune, ...]
    actions: tuple[UnitAction, ...]
    skipped: tuple[Skipped, ...]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    output_change: float
    metric: str | None
    metric_before: float | None
    metric_after: float | None
    metric_change: float | None
    tolerance: float
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def params_saved(self) -> int:
        return self.params_before - self.params_after

    @property
    def flops_saved(self) -> int:
        return self.flops_before - self.flops_after

    @property
    def removed_fraction(self) -> float:
        """Fraction of the parameters removed."""
        return self.params_saved / self.params_before if self.params_before else 0.0

    def rows(self) -> list[dict]:
        """One JSON-friendly dict per layer (for tables and the sidecar)."""
        return [
            {
                "layer": lp.layer,
                "consumer": lp.consumer,
                "width_before": lp.width_before,
                "width_after": lp.width_after,
                "removed": list(lp.removed),
                "merged": [list(p) for p in lp.merged],
                "params_saved": lp.params_saved,
                "params_fraction": lp.params_saved / lp.params_before if lp.params_before else 0.0,
                "flops_saved": lp.flops_saved,
            }
            for lp in self.layers
        ]

    def summary(self) -> dict:
        """JSON-friendly summary (sidecar ``pruned.report``)."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "output_change": self.output_change,
            "metric": self.metric,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "metric_change": self.metric_change,
            "tolerance": self.tolerance,
            "layers": self.rows(),
            "skipped": [[s.direction, s.layer, s.unit, s.why] for s in self.skipped],
        }


# ------------------------------------------------------------------------------ plumbing
def _call(model: nn.Module, inputs, output: Callable | None, params=None) -> torch.Tensor:
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})
    with torch.no_grad():
        y = (
            model(*args, **kwargs)
            if params is None
            else functional_call(model, params, args, kwargs)
        )
    return output(y) if output is not None else y


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def _metric(y: torch.Tensor, labels: torch.Tensor | None) -> tuple[str | None, float | None]:
    if labels is None:
        return None, None
    if labels.is_floating_point():
        return "loss", float(((y - labels) ** 2).sum(-1).mean())
    return "accuracy", float((y.argmax(-1) == labels).double().mean())


def _metric_loss(ref: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None) -> float:
    """How much worse ``y`` does than ``ref`` on the task metric (0 without labels)."""
    name, m0 = _metric(ref, labels)
    _, m1 = _metric(y, labels)
    if name is None:
        return 0.0
    if name == "accuracy":
        return m0 - m1
    return (m1 - m0) / m0 if m0 > 0 else (0.0 if m1 <= m0 else math.inf)


def _trace(model: nn.Module, inputs) -> dict[str, tuple[list[int], int]]:
    """Leaf module name -> (ids of its tensor inputs, id of its output) for one forward."""
    seen: dict[str, tuple[list[int], int]] = {}
    keep: list = []
    hooks = []
    for name, m in model.named_modules():
        if next(m.children(), None) is not None or not name:
            continue

        def hook(mod, inp, out, name=name):
            keep.append((inp, out))
            ids = [id(t) for t in inp if isinstance(t, torch.Tensor)]
            seen[name] = (ids, id(out) if isinstance(out, torch.Tensor) else -1)

        hooks.append(m.register_forward_hook(hook))
    try:
        _call(model, inputs, None)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _group(modules: dict, trace: dict, producer: str) -> list[str]:
    """The modules whose output axis carries ``producer``'s units: a BatchNorm producer
    and the Linear/Conv feeding it directly."""
    group = [producer]
    m = modules[producer]
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and producer in trace:
        ids = trace[producer][0]
        for name, (_, out) in trace.items():
            if ids and out == ids[0] and isinstance(modules[name], nn.Linear | nn.Conv2d):
                if producer_units(modules[name]) == m.num_features:
                    group.insert(0, name)
                break
    return group


def _cols(consumer: nn.Module, units: int, j: int) -> slice | int:
    if isinstance(consumer, nn.Linear):
        block = consumer.in_features // units
        return slice(j * block, (j + 1) * block)
    return j


def _activations(model, inputs, consumer: str, units: int) -> torch.Tensor:
    """The consumer's inputs grouped per unit, shape (rows, units, block)."""
    got = []
    m = dict(model.named_modules())[consumer]
    h = m.register_forward_pre_hook(lambda mod, inp: got.append(inp[0].detach()))
    try:
        _call(model, inputs, None)
    finally:
        h.remove()
    a = got[0]
    if isinstance(m, nn.Linear):
        return a.reshape(-1, units, m.in_features // units)
    return a.movedim(1, -1).reshape(-1, units, 1)


def _flops(model: nn.Module, inputs) -> dict[str, int]:

    with FlopCounterMode(display=False) as counter:
        _call(model, inputs, None)
    root = type(model).__name__
    out = {}
    for key, ops in counter.get_flop_counts().items():
        name = "" if key in ("Global", root) else key.removeprefix(root + ".")
        if key == "Global":
            out["__total__"] = int(sum(ops.values()))
        elif name:
            out[name] = int(sum(ops.values()))
    return out


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def _first_batch(inputs, n: int):
    if isinstance(inputs, Mapping):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


# ----------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class _Candidate:
    producer: str
    consumer: str
    unit: int
    into: int | None
    reason: str
    direction: str
    kind: str
    order: float


def _confirmed(d: Direction, r: Read, order_tol: float) -> str | None:
    """None when the read confirms the detector's prediction, else why not."""
    if d.detector == "dead_unit":
        if r.kind not in ("singular", "gauge"):
            return f"reads {r.kind} (k̂={r.order:.3g}), not singular"
        k = r.order if r.kind == "singular" else r.ray_order
        if d.predicted_order is not None and not abs(k - d.predicted_order) <= order_tol:
            return f"reads {r.kind} with ray order {k:.3g}, predicted {d.predicted_order:g}"
        return None
    if r.kind != "gauge":
        return f"reads {r.kind} (k̂={r.order:.3g}), not a flat gauge"
    return None


def _producer_consumer(d: Direction, modules: dict) -> tuple[str, str, int, int | None] | None:
    if d.detector == "dead_unit" and "unit" in d.meta and "consumer" in d.meta:
        return d.layer, str(d.meta["consumer"]), int(d.meta["unit"]), None
    if d.detector == "duplicate_units" and "units" in d.meta and "producer" in d.meta:
        i, j = (int(u) for u in d.meta["units"])
        return str(d.meta["producer"]), d.layer, j, i
    return None


# ----------------------------------------------------------------------------------- prune
def prune(
    model: nn.Module,
    reads: Sequence[Read] | None = None,
    directions: Sequence[Direction] | None = None,
    *,
    inputs=None,
    held_out=None,
    labels: torch.Tensor | None = None,
    output: Callable | None = None,
    likelihood: str = "gaussian",
    tolerance: float = 1e-3,
    metric_tolerance: float = 0.005,
    min_width: int = 0,
    detect_options: Mapping | None = None,
    order_tol: float = ORDER_TOLERANCE,
    seed: int = 0,
    flop_batch: int = 64,
) -> tuple[nn.Module, PruneReport]:
    """Remove node-death units and merge duplicate units that the reads confirm.

    ``reads``/``directions``: reads of ``dead_unit`` and ``duplicate_units`` directions,
    matched by name (other detectors are ignored). ``directions=None`` re-detects on
    ``inputs`` (same ``seed``: the same names); ``reads=None`` too detects and reads here.
    Evidence: a ``dead_unit`` read must be singular with |k̂ − (p+1)| ≤ ``order_tol`` (at
    the detector's projected base), or a curved gauge (the ray's departure is correctable
    by the other parameters, e.g. through a residual stream) whose straight-ray order is
    p + 1 within ``order_tol``; a ``duplicate_units`` read must be a flat gauge (the
    firing patterns are collinear on the probe data). A unit named by any read that is
    regular (or otherwise unconfirmed) is protected: it is never removed or merged away.
    Every confirmed action is then measured on ``held_out`` (default ``inputs``): removal
    folds the unit's mean activation on ``inputs`` into the consumer's bias; a merge of j
    into i adds c·Q[:, j] to Q[:, i] with c = ⟨a_j, a_i⟩/⟨a_i, a_i⟩ on ``inputs`` (c = s^p
    for incoming weights w_j = s·w_i, s > 0, under a degree-p homogeneous σ; 1 for equal
    rows). Actions are accepted greedily, smallest change first, while the joint relative
    output change stays ≤ ``tolerance`` and, with ``labels``, the task metric on
    ``held_out`` loses at most ``metric_tolerance`` (accuracy: absolute; loss: relative);
    each layer keeps at least ``min_width`` units (0: a block whose every unit died becomes
    ``Linear(d, 0) → Linear(0, d)``, i.e. only the second bias; detectors skip width 0).
    ``detect_options`` go to ``dd.detect`` (e.g. ``{"dead_unit": {"score_tol": 0.5}}``)
    when it runs here.

    Returns ``(pruned_model, PruneReport)``: a deep copy with narrower Linear/Conv/BatchNorm
    modules (same classes, same architecture); ``model`` itself is not modified.
    """
    if inputs is None:
        raise ValueError("prune: inputs (the probe data of the detection) are required.")
    held_out = inputs if held_out is None else held_out
    model = model.eval()
    modules = dict(model.named_modules())
    if directions is None:
        directions = detect(
            model,
            inputs,
            detectors=list(PRUNE_DETECTORS),
            seed=seed,
            output=output,
            likelihood=likelihood,
            max_per_layer=1 << 20,
            **dict(detect_options or {}),
        )
    directions = [d for d in directions if d.detector in PRUNE_DETECTORS]
    if reads is None:
        reads = read_many(
            model, inputs, directions, likelihood=likelihood, output=output, seed=seed
        )
    by_name = {r.name: r for r in reads}

    skipped: list[Skipped] = []
    protected: set[tuple[str, int]] = set()
    cands: list[_Candidate] = []
    for d in directions:
        pc = _producer_consumer(d, modules)
        if pc is None:
            skipped.append(Skipped(d.name, d.layer, None, "no unit in the direction's meta"))
            continue
        producer, consumer, unit, into = pc
        r = by_name.get(d.name)
        if r is None:
            skipped.append(Skipped(d.name, producer, unit, "no read of this direction"))
            continue
        why = _confirmed(d, r, order_tol)
        if why is not None:
            protected.add((producer, unit))
            skipped.append(Skipped(d.name, producer, unit, why))
            continue
        reason = str(d.meta.get("reason", "duplicate" if into is not None else "dead"))
        cands.append(_Candidate(producer, consumer, unit, into, reason, d.name, r.kind, r.order))

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    ref = _call(model, held_out, output)

    acts: dict[str, torch.Tensor] = {}
    units_of: dict[str, int] = {}
    plans = []  # (candidate, edit) with edit(params) -> None applying the action in place
    for c in cands:
        if (c.producer, c.unit) in protected or (
            c.into is not None and (c.producer, c.into) in protected
        ):
            skipped.append(
                Skipped(c.direction, c.producer, c.unit, "a read of this unit is regular")
            )
            continue
        prod, cons = modules.get(c.producer), modules.get(c.consumer)
        if not isinstance(prod, nn.Linear | nn.Conv2d | nn.modules.batchnorm._BatchNorm) or not (
            isinstance(cons, nn.Linear) or (isinstance(cons, nn.Conv2d) and cons.groups == 1)
        ):
            skipped.append(Skipped(c.direction, c.producer, c.unit, "unsupported module types"))
            continue
        units = units_of.setdefault(c.producer, producer_units(prod))
        if c.consumer not in acts:
            acts[c.consumer] = _activations(model, inputs, c.consumer, units)
        a = acts[c.consumer]
        plans.append((c, _edit(c, cons, a, units)))

    # measure each action alone, then accept greedily while the joint change stays in bounds
    alone = []
    for _c, edit in plans:
        trial = dict(params)
        edit(trial)
        alone.append(_rel(_call(model, held_out, output, {**trial, **buffers}), ref))
    order = sorted(range(len(plans)), key=lambda k: (alone[k], k))
    accepted: list[UnitAction] = []
    gone: dict[str, set[int]] = {}
    targets: dict[str, set[int]] = {}
    consumer_of: dict[str, str] = {}
    current = dict(params)
    for k in order:
        c, edit = plans[k]
        g, t = gone.setdefault(c.producer, set()), targets.setdefault(c.producer, set())
        if c.unit in g or c.unit in t or (c.into is not None and c.into in g):
            skipped.append(Skipped(c.direction, c.producer, c.unit, "unit already acted on"))
            continue
        if units_of[c.producer] - len(g) - 1 < min_width:
            skipped.append(Skipped(c.direction, c.producer, c.unit, f"would leave < {min_width}"))
            continue
        if not alone[k] <= tolerance:
            skipped.append(
                Skipped(c.direction, c.producer, c.unit, f"changes outputs by {alone[k]:.3g}")
            )
            continue
        trial = dict(current)
        edit(trial)
        y = _call(model, held_out, output, {**trial, **buffers})
        joint = _rel(y, ref)
        if not joint <= tolerance:
            skipped.append(
                Skipped(c.direction, c.producer, c.unit, f"joint change {joint:.3g} > tolerance")
            )
            continue
        lost = _metric_loss(ref, y, labels)
        if not lost <= metric_tolerance:
            skipped.append(Skipped(c.direction, c.producer, c.unit, f"metric worse by {lost:.3g}"))
            continue
        current = trial
        g.add(c.unit)
        consumer_of[c.producer] = c.consumer
        if c.into is not None:
            t.add(c.into)
        ratio = getattr(edit, "ratio", None)
        accepted.append(
            UnitAction(
                c.producer,
                c.unit,
                "merge" if c.into is not None else "remove",
                c.into,
                ratio,
                c.reason,
                c.direction,
                c.kind,
                c.order,
                alone[k],
            )
        )

    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in pruned.named_parameters():
            p.copy_(current[name])
    trace = _trace(model, _first_batch(inputs, 2)) if gone else {}
    groups = {}
    for producer, g in gone.items():
        if not g:
            continue
        group = _group(modules, trace, producer)
        consumer = consumer_of[producer]
        keep = [u for u in range(units_of[producer]) if u not in g]
        groups[producer] = (group, consumer, keep)
        for name in group:
            replace_module(pruned, name, slice_outputs(pruned.get_submodule(name), keep))
        cons = pruned.get_submodule(consumer)
        replace_module(pruned, consumer, slice_inputs(cons, units_of[producer], keep))
    pruned.eval()

    fb = _first_batch(inputs, flop_batch)
    flops0, flops1 = _flops(model, fb), _flops(pruned, fb)
    mods1 = dict(pruned.named_modules())
    layers = []
    for producer, (group, consumer, keep) in groups.items():
        names = tuple(dict.fromkeys([*group, consumer]))
        p0 = sum(_nparams(modules[n]) for n in names)
        p1 = sum(_nparams(mods1[n]) for n in names)
        f0 = sum(flops0.get(n, 0) for n in names)
        f1 = sum(flops1.get(n, 0) for n in names)
        layers.append(
            LayerPrune(
                producer,
                consumer,
                names,
                units_of[producer],
                len(keep),
                tuple(sorted(a.unit for a in accepted if a.layer == producer and a.into is None)),
                tuple(
                    sorted(
                        (a.unit, a.into)
                        for a in accepted
                        if a.layer == producer and a.into is not None
                    )
                ),
                p0,
                p0 - p1,
                f0,
                f0 - f1,
            )
        )
    y1 = _call(pruned, held_out, output)
    metric, m0 = _metric(ref, labels)
    _, m1 = _metric(y1, labels)
    change = None
    if metric == "accuracy":
        change = m1 - m0
    elif metric == "loss":
        change = (m1 - m0) / m0 if m0 else math.inf * (m1 - m0)
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    report = PruneReport(
        layers=tuple(layers),
        actions=tuple(accepted),
        skipped=tuple(skipped),
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in pruned.parameters()),
        flops_before=flops0.get("__total__", 0),
        flops_after=flops1.get("__total__", 0),
        output_change=_rel(y1, ref),
        metric=metric,
        metric_before=m0,
        metric_after=m1,
        metric_change=change,
        tolerance=tolerance,
        shapes=shapes,
    )
    return pruned, report


def _edit(c: _Candidate, cons: nn.Module, a: torch.Tensor, units: int):
    """A function applying the candidate's action to a full-width parameter dict in place."""
    qn, bn = f"{c.consumer}.weight", f"{c.consumer}.bias"
    cj = _cols(cons, units, c.unit)
    if c.into is not None:
        ci = _cols(cons, units, c.into)
        ai, aj = a[:, c.into].reshape(-1), a[:, c.unit].reshape(-1)
        ratio = float(aj @ ai) / float(ai @ ai) if float(ai @ ai) > 0 else 0.0

        def edit(p):
            q = p[qn].clone()
            q[:, ci] = q[:, ci] + ratio * q[:, cj]
            q[:, cj] = 0.0
            p[qn] = q

        edit.ratio = ratio
        return edit
    mean = a[:, c.unit].mean(0)  # (block,)
    fold = cons.bias is not None and (
        isinstance(cons, nn.Linear) or all(int(x) == 0 for x in cons.padding)
    )

    def edit(p):
        q = p[qn].clone()
        if fold:
            w = q[:, cj]
            shift = w @ mean if isinstance(cons, nn.Linear) else w.sum((-1, -2)) * mean[0]
            p[bn] = p[bn] + shift
        q[:, cj] = 0.0
        p[qn] = q

    return edit


def load_pruned(path, family=None, builder=None) -> tuple[nn.Module, dict]:
    """Load a pruned (or ordinary) checkpoint: ``dd.checkpoints.load`` narrows the built
    model to the sidecar's ``pruned.shapes`` and loads the state strictly."""

    return checkpoints.load(path, family=family, builder=builder)


def save_pruned(pruned: nn.Module, report: PruneReport, path, meta: Mapping | None = None) -> Path:
    """Write the pruned model with :func:`dd.checkpoints.save`; the sidecar's ``pruned``
    entry holds the new shapes, widths per layer and the report summary."""

    meta = dict(meta or {})
    meta["pruned"] = {
        "shapes": {k: list(v) for k, v in report.shapes.items()},
        "widths": {lp.layer: lp.width_after for lp in report.layers},
        "report": report.summary(),
    }
    return checkpoints.save(pruned, path, meta)


# ------------------------------------------------------------------- one checkpoint
def layer_fractions(model: nn.Module, pruned: nn.Module, report: PruneReport) -> list[dict]:
    """Per module with parameters of its own: parameters before/after and the fraction
    removed; producer layers also carry their widths and the removed/merged units."""
    by_layer = {lp.layer: lp for lp in report.layers}
    after = dict(pruned.named_modules())
    rows = []
    for name, m in model.named_modules():
        n0 = _nparams(m)
        if not n0:
            continue
        n1 = _nparams(after[name]) if name in after else 0
        row = {
            "layer": name or "_root",
            "params_before": n0,
            "params_after": n1,
            "fraction": (n0 - n1) / n0,
        }
        lp = by_layer.get(name)
        if lp is not None:
            row.update(
                width_before=lp.width_before,
                width_after=lp.width_after,
                removed=list(lp.removed),
                merged=[list(x) for x in lp.merged],
            )
        rows.append(row)
    return rows


def prune_checkpoint(
    checkpoint,
    family: str,
    *,
    size: str | None = None,
    probe: int = 256,
    seed: int = 0,
    tolerance: float = 1e-3,
    metric_tolerance: float = 0.005,
    score_tol: float | None = None,
):
    """Load ``checkpoint`` (any loader path, pruned ones too) and :func:`prune` it.

    Detection and reads use ``probe`` seeded training inputs of the family's task; every
    action is verified on the task's held-out inputs and labels (the family's own probe,
    without labels, for a family without a task). Returns ``(model, pruned, report, meta)``.
    """

    fam = zoo.get_family(family)
    model, meta = load_model(checkpoint, fam.name, size)  # rejects NaN/inf weights
    gen = torch.Generator().manual_seed(seed)
    if fam.task is not None:
        task = fam.task()
        idx = torch.randperm(len(task.x_train), generator=gen)[:probe]
        inputs, held_out, labels = task.x_train[idx], task.x_test, task.y_test
    else:
        inputs = held_out = fam.probe(probe, seed=seed)
        labels = None
    pruned, report = prune(
        model,
        inputs=inputs,
        held_out=held_out,
        labels=labels,
        output=fam.output,
        likelihood=fam.likelihood,
        tolerance=tolerance,
        metric_tolerance=metric_tolerance,
        seed=seed,
        detect_options=({"dead_unit": {"score_tol": score_tol}} if score_tol is not None else None),
    )
    return model, pruned, report, meta


def removable_record(model, pruned, report: PruneReport, **labels) -> dict:
    """The JSON record of one checkpoint's removable parameters (``removable`` command)."""
    return {
        **labels,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "fraction": report.removed_fraction,
        "units_removed": sum(len(lp.removed) for lp in report.layers),
        "units_merged": sum(len(lp.merged) for lp in report.layers),
        "output_change": report.output_change,
        "metric": report.metric,
        "metric_before": report.metric_before,
        "metric_after": report.metric_after,
        "metric_change": report.metric_change,
        "layers": layer_fractions(model, pruned, report),
    }
