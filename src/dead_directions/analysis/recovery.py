"""Recovery rate: how many structurally predicted directions read as their prediction says.

Recovery is measured, not constructed (METHOD §5): a detector's base projection makes its
prediction true there (zeroing a flagged unit creates the node death it predicts), so every
direction is scored by its read at the checkpoint, and a direction with a base also by its
read at the base, counted only where the base lies within ``base_tol`` of the checkpoint
(relative to the norm of the tensors it moves); farther bases are off-locus. On the zoo,
which units are dead comes from what training planted (``dd.zoo.dead_unit_indices``, the
sidecar's ``dead_units`` counts), not from the detector.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from dead_directions import zoo
from dead_directions.core.direction import BASE_TOL, ORDER_TOLERANCE
from dead_directions.core.read import matches_prediction, read_many, split_probe
from dead_directions.detectors import detect
from dead_directions.io import checkpoints
from dead_directions.io.checkpoints import iter_checkpoints

STRUCTURAL = (
    "layernorm_kernel",
    "norm_input_scale",
    "softmax_shift",
    "dead_unit",
    "duplicate_units",
    "relu_rescale",
    "attention_qk",
)


@dataclass(frozen=True)
class Outcome:
    """One predicted direction and its reads.

    ``kind``/``order``/``magnitude``/``correctability`` are the read where the prediction
    is made (at the base for a direction with one); ``checkpoint_kind``/``checkpoint_order``
    the read at the checkpoint itself. ``matched``: the read at the checkpoint matches the
    prediction (kind equal; |k̂ − k| ≤ ``order_tol`` for finite k) — recovery at the
    checkpoint. ``base_distance``: the base's distance from the checkpoint relative to the
    norm of the tensors it moves (NaN without a base); ``matched_base``: the base read
    matches (true by construction for a projection; counted as recovered only on the
    locus, :meth:`recovered_at_base`). ``planted``: for a ``dead_unit`` direction in a zoo
    MLP block, whether training planted that unit's death (None where nothing is known).
    """

    source: str
    name: str
    detector: str
    layer: str
    predicted_kind: str
    predicted_order: float | None
    kind: str
    order: float
    magnitude: float
    correctability: float
    matched: bool
    checkpoint_kind: str = ""
    checkpoint_order: float = math.nan
    base_distance: float = math.nan
    matched_base: bool | None = None
    planted: bool | None = None
    unit: int | None = None

    @property
    def has_base(self) -> bool:
        return not math.isnan(self.base_distance)

    def off_locus(self, base_tol: float = BASE_TOL) -> bool:
        """A base farther than ``base_tol`` from the checkpoint."""
        return self.has_base and not self.base_distance <= base_tol

    def recovered_at_base(self, base_tol: float = BASE_TOL) -> bool:
        """The base read matches and the base lies within ``base_tol`` of the checkpoint."""
        return self.has_base and bool(self.matched_base) and not self.off_locus(base_tol)


def matches(read, order_tol: float = ORDER_TOLERANCE, at_checkpoint: bool = False) -> bool:
    """``read`` (or, with ``at_checkpoint``, its read at the checkpoint) against its
    prediction (``dd.core.read.matches_prediction`` with tolerance ``order_tol``)."""
    kind = read.checkpoint_kind if at_checkpoint else read.kind
    order = read.checkpoint_order if at_checkpoint else read.order
    return matches_prediction(kind, order, read.predicted_kind, read.predicted_order, order_tol)


def _block(layer: str) -> str | None:
    """The zoo MLP block of a ``dead_unit`` direction's producer ``…fc1`` (``"."`` at the
    root), the key of ``dd.zoo.dead_unit_indices``."""
    if layer == "fc1":
        return "."
    return layer[: -len(".fc1")] if layer.endswith(".fc1") else None


def recovery(
    model: nn.Module,
    inputs,
    *,
    likelihood="gaussian",
    output: Callable | None = None,
    detectors: Sequence[str] = STRUCTURAL,
    max_per_layer: int | None = None,
    seed: int = 0,
    source: str = "",
    order_tol: float = ORDER_TOLERANCE,
    read_options=None,
    planted: Mapping[str, Sequence[int]] | None = None,
) -> list[Outcome]:
    """Detect with ``detectors`` on the fit part of ``inputs`` (:func:`~dead_directions.
    read.split_probe`), read every direction that carries a prediction (gauges confirmed
    on the held-out part) at the checkpoint and, where it has one, at its base; compare.

    ``planted``: MLP block → the units whose death was planted (``dd.zoo.
    dead_unit_indices``); sets ``Outcome.planted`` of the ``dead_unit`` directions there."""

    fit, heldout = split_probe(inputs)
    dirs = [
        d
        for d in detect(
            model,
            fit,
            detectors=list(detectors),
            max_per_layer=max_per_layer,
            seed=seed,
            output=output,
            likelihood=likelihood,
        )
        if d.predicted_kind is not None
    ]
    if not dirs:
        return []
    reads = read_many(
        model,
        fit,
        dirs,
        likelihood=likelihood,
        output=output,
        seed=seed,
        options=read_options,
        heldout=heldout,
    )
    out = []
    for d, r in zip(dirs, reads, strict=True):
        known = None
        block = _block(d.layer) if d.detector == "dead_unit" else None
        if planted is not None and block in planted and "unit" in d.meta:
            known = int(d.meta["unit"]) in set(planted[block])
        out.append(
            Outcome(
                source=source,
                name=r.name,
                detector=r.detector,
                layer=r.layer,
                predicted_kind=r.predicted_kind,
                predicted_order=r.predicted_order,
                kind=r.kind,
                order=r.order,
                magnitude=r.magnitude,
                correctability=r.correctability,
                matched=matches(r, order_tol, at_checkpoint=bool(r.checkpoint_kind)),
                checkpoint_kind=r.checkpoint_kind,
                checkpoint_order=r.checkpoint_order,
                base_distance=r.base_distance,
                matched_base=matches(r, order_tol) if r.has_base else None,
                planted=known,
                unit=int(d.meta["unit"]) if block is not None and "unit" in d.meta else None,
            )
        )
    return out


@dataclass(frozen=True)
class Rates:
    """Recovery counts of one detector: ``predicted`` directions, ``recovered`` at the
    checkpoint; of the ``based`` ones (with a base projection), ``recovered_base`` (base
    read matches, base within ``base_tol``) and ``off_locus`` (base farther)."""

    predicted: int = 0
    recovered: int = 0
    based: int = 0
    recovered_base: int = 0
    off_locus: int = 0


def rates(outcomes: Iterable[Outcome], base_tol: float = BASE_TOL) -> dict[str, Rates]:
    """Detector → :class:`Rates`; key ``'all'`` for the total."""
    out: dict[str, list[int]] = {}
    for o in outcomes:
        for key in (o.detector, "all"):
            row = out.setdefault(key, [0, 0, 0, 0, 0])
            row[0] += 1
            row[1] += int(o.matched)
            row[2] += int(o.has_base)
            row[3] += int(o.recovered_at_base(base_tol))
            row[4] += int(o.off_locus(base_tol))
    return {k: Rates(*v) for k, v in out.items()}


@dataclass(frozen=True)
class Planted:
    """Ground truth of one zoo MLP block at one checkpoint: the units training planted dead
    (``dd.zoo.dead_unit_indices``; their count is the sidecar's ``dead_units``) against
    those the ``dead_unit`` detector flagged (up to its cap)."""

    source: str
    block: str
    planted: tuple[int, ...]
    flagged: tuple[int, ...]
    sidecar: int | None

    @property
    def found(self) -> int:
        return len(set(self.planted) & set(self.flagged))


def final_checkpoint(root, family: str, size: str) -> Path | None:
    """The highest-step checkpoint of (family, size) under ``root``, or None."""

    found = [(step, path) for _, step, path in iter_checkpoints(root, family, size)]
    return max(found)[1] if found else None


def zoo_recovery(
    root,
    families: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
    *,
    probe: int | None = None,
    train: bool = False,
    tiny: bool = False,
    seed: int = 0,
    max_per_layer: int | None = None,
    order_tol: float = ORDER_TOLERANCE,
    log: Callable[[str], None] | None = None,
    truth: list[Planted] | None = None,
) -> list[Outcome]:
    """Recovery over the final checkpoints of the zoo under ``root``.

    ``families`` default: every trainable family; ``sizes`` default: each family's. A
    missing (family, size) is trained first when ``train`` (``tiny`` recipe if asked),
    else skipped. ``probe``: probe inputs per model (default: the family's own number).
    ``truth``: a list that receives one :class:`Planted` per MLP block and checkpoint (the
    planted dead units against the flagged ones). A checkpoint whose planted count
    disagrees with its sidecar's ``dead_units`` raises ``ValueError``.
    """

    names = list(families) if families is not None else zoo.trainable()
    outcomes: list[Outcome] = []
    for name in names:
        fam = zoo.get_family(name)
        for size in sizes if sizes is not None else fam.sizes:
            if size not in fam.sizes:
                continue
            path = final_checkpoint(root, name, size)
            if path is None and train:
                fam.train(size, None, str(root), seed=seed, tiny=tiny)
                path = final_checkpoint(root, name, size)
            if path is None:
                if log:
                    log(f"{name}/{size}: no checkpoint under {root}; skipped")
                continue
            started = time.perf_counter()
            model, meta = checkpoints.load(path, family=name)
            planted = zoo.dead_unit_indices(model)
            sidecar = meta.get("dead_units")
            for block, units in planted.items():
                if sidecar is not None and sidecar.get(block, len(units)) != len(units):
                    raise ValueError(
                        f"{path}: {len(units)} dead units in {block} by dd.zoo.dead_units's "
                        f"rule, but its sidecar records {sidecar[block]}; retrain the zoo."
                    )
            source = f"{name}/{size}/{path.stem}"
            found = recovery(
                model,
                fam.probe(probe),
                likelihood=fam.likelihood,
                output=fam.output,
                max_per_layer=max_per_layer,
                seed=seed,
                source=source,
                order_tol=order_tol,
                planted=planted,
            )
            outcomes.extend(found)
            if truth is not None:
                for block, units in planted.items():
                    flagged = sorted(
                        o.unit
                        for o in found
                        if o.detector == "dead_unit" and _block(o.layer) == block
                    )
                    truth.append(
                        Planted(
                            source,
                            block,
                            tuple(units),
                            tuple(flagged),
                            None if sidecar is None else sidecar.get(block),
                        )
                    )
            if log:
                ok = sum(o.matched for o in found)
                based = [o for o in found if o.has_base]
                at_base = sum(o.recovered_at_base() for o in based)
                log(
                    f"{name}/{size} {path.stem}: {ok}/{len(found)} predictions recovered at "
                    f"the checkpoint, {at_base}/{len(based)} at a base within {BASE_TOL:g} "
                    f"({time.perf_counter() - started:.1f} s)"
                )
    return outcomes


__all__ = [
    "STRUCTURAL",
    "Outcome",
    "Planted",
    "Rates",
    "matches",
    "rates",
    "recovery",
    "zoo_recovery",
]
