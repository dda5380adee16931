"""Recovery rate: how many structurally predicted directions read as their prediction says."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate
from torch import nn

from dead_directions import zoo
from dead_directions.core.read import read_many, split_probe
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
    """One predicted direction and its read: ``matched`` is ``Read.matches_prediction``
    with the order tolerance ``order_tol`` (kind equal; |k̂ − k| ≤ tol for finite k)."""

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


def matches(read, order_tol: float) -> bool:
    if read.kind != read.predicted_kind:
        return False
    k = read.predicted_order
    if k is None or math.isinf(k):
        return True
    return abs(read.order - k) <= order_tol


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
    order_tol: float = 0.1,
    read_options=None,
) -> list[Outcome]:
    """Detect with ``detectors`` on the fit part of ``inputs`` (:func:`~dead_directions.
    read.split_probe`), read every direction that carries a prediction (gauges confirmed
    on the held-out part), compare."""

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
    return [
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
            matched=matches(r, order_tol),
        )
        for r in reads
    ]


def rates(outcomes: Iterable[Outcome]) -> dict[str, tuple[int, int]]:
    """Detector → (matched, predicted); key ``'all'`` for the total."""
    out: dict[str, list[int]] = {}
    for o in outcomes:
        for key in (o.detector, "all"):
            out.setdefault(key, [0, 0])
            out[key][0] += int(o.matched)
            out[key][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


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
    order_tol: float = 0.1,
    log: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Recovery over the final checkpoints of the zoo under ``root``.

    ``families`` default: every trainable family; ``sizes`` default: each family's. A
    missing (family, size) is trained first when ``train`` (``tiny`` recipe if asked),
    else skipped. ``probe``: probe inputs per model (default: the family's own number).
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
            model, _ = checkpoints.load(path, family=name)
            found = recovery(
                model,
                fam.probe(probe),
                likelihood=fam.likelihood,
                output=fam.output,
                max_per_layer=max_per_layer,
                seed=seed,
                source=f"{name}/{size}/{path.stem}",
                order_tol=order_tol,
            )
            outcomes.extend(found)
            if log:
                ok = sum(o.matched for o in found)
                log(
                    f"{name}/{size} {path.stem}: {ok}/{len(found)} predictions recovered "
                    f"({time.perf_counter() - started:.1f} s)"
                )
    return outcomes


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def cmd_recovery(args) -> int:
    """Per-detector recovery rates over the zoo's final checkpoints."""

    families = None if args.family in (None, "all") else args.family.split(",")
    sizes = args.size.split(",") if args.size else None
    outcomes = zoo_recovery(
        args.root,
        families,
        sizes,
        probe=args.probe,
        train=args.train,
        tiny=args.tiny,
        seed=args.seed,
        max_per_layer=args.max_per_layer,
        order_tol=args.order_tol,
        log=lambda line: print(line, file=sys.stderr),
    )
    table = rates(outcomes)
    rows = [
        [det, ok, n, f"{ok / n:.3f}" if n else "—"]
        for det, (ok, n) in sorted(table.items(), key=lambda kv: (kv[0] == "all", kv[0]))
    ]
    print(
        tabulate(rows, headers=["detector", "recovered", "predicted", "rate"], tablefmt=args.format)
    )
    misses = [o for o in outcomes if not o.matched]
    if misses:
        print(f"\n{len(misses)} mismatches:")
        print(
            tabulate(
                [
                    [
                        o.source,
                        o.name,
                        o.predicted_kind,
                        _fmt(o.predicted_order),
                        o.kind,
                        _fmt(o.order),
                        f"{o.magnitude:.1e}",
                        _fmt(o.correctability),
                    ]
                    for o in misses
                ],
                headers=["checkpoint", "direction", "pred", "pred k", "kind", "k̂", "g/g_ref", "ρ"],
                tablefmt=args.format,
            )
        )
    ok, n = table.get("all", (0, 0))
    if not n:
        print("no predicted directions (no checkpoints found?)", file=sys.stderr)
        return 1
    rate = ok / n
    if args.min_rate is not None and rate < args.min_rate:
        print(f"recovery {rate:.3f} below --min-rate {args.min_rate}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "recovery", help="per-detector recovery rates on the zoo's final checkpoints"
    )
    p.add_argument("--root", required=True, help="checkpoint root ({root}/{family}/{size}/...)")
    p.add_argument("--family", default="all", help="family name(s), comma-separated, or all")
    p.add_argument("--size", default=None, help="size(s), comma-separated (default: all)")
    p.add_argument("--probe", type=int, default=None, help="probe inputs (default: family's)")
    p.add_argument("--train", action="store_true", help="train missing (family, size) first")
    p.add_argument("--tiny", action="store_true", help="with --train: the tiny recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-per-layer", type=int, default=None)
    p.add_argument("--order-tol", type=float, default=0.1, help="|k̂ − k| tolerance")
    p.add_argument("--min-rate", type=float, default=None, help="exit 1 below this rate")
    p.add_argument("--format", default="github", help="tabulate table format")
    p.set_defaults(func=cmd_recovery)


__all__ = ["STRUCTURAL", "Outcome", "matches", "rates", "recovery", "zoo_recovery"]
