"""Command: ``recovery`` (per-detector recovery at the checkpoint and at the base)."""

from __future__ import annotations

import math
import sys

from tabulate import tabulate

from dead_directions.analysis.recovery import Planted, Rates, rates, zoo_recovery
from dead_directions.cli import fmt
from dead_directions.core.direction import BASE_TOL, ORDER_TOLERANCE


def _rate(ok: int, n: int) -> str:
    return f"{ok}/{n} ({100 * ok / n:.0f} %)" if n else "—"


def cmd_recovery(args) -> int:
    """Per-detector recovery over the zoo's final checkpoints: at the checkpoint, and at the
    base where the base lies within ``--base-tol``; the planted dead units against the
    flagged ones."""

    if not (args.base_tol >= 0 and math.isfinite(args.base_tol)):
        print(f"--base-tol must be a finite number ≥ 0, got {args.base_tol}", file=sys.stderr)
        return 2
    families = None if args.family in (None, "all") else args.family.split(",")
    sizes = args.size.split(",") if args.size else None
    truth: list[Planted] = []
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
        truth=truth,
    )
    table = rates(outcomes, args.base_tol)
    rows = [
        [
            det,
            r.predicted,
            _rate(r.recovered, r.predicted),
            r.based,
            _rate(r.recovered_base, r.based),
            r.off_locus,
        ]
        for det, r in sorted(table.items(), key=lambda kv: (kv[0] == "all", kv[0]))
    ]
    print(
        tabulate(
            rows,
            headers=[
                "detector",
                "predicted",
                "recovered at the checkpoint",
                "with a base",
                f"recovered at the base (≤ {args.base_tol:g})",
                "off-locus bases",
            ],
            tablefmt=args.format,
        )
    )
    if truth:
        print("\nplanted dead units (dd.zoo.dead_unit_indices; the sidecar's dead_units):")
        print(
            tabulate(
                [
                    [
                        t.source,
                        t.block,
                        len(t.planted),
                        "—" if t.sidecar is None else t.sidecar,
                        len(t.flagged),
                        t.found,
                    ]
                    for t in truth
                ],
                headers=["checkpoint", "block", "planted", "sidecar", "flagged", "both"],
                tablefmt=args.format,
            )
        )
    misses = [o for o in outcomes if not o.matched]
    if misses:
        print(f"\n{len(misses)} not recovered at the checkpoint:")
        print(
            tabulate(
                [
                    [
                        o.source,
                        o.name,
                        o.predicted_kind,
                        fmt(o.predicted_order),
                        o.checkpoint_kind,
                        fmt(o.checkpoint_order),
                        f"{o.kind} {fmt(o.order)}" if o.has_base else "—",
                        f"{o.base_distance:.1e}" if o.has_base else "—",
                        "—" if o.planted is None else ("yes" if o.planted else "no"),
                        f"{o.magnitude:.1e}",
                        fmt(o.correctability),
                    ]
                    for o in misses
                ],
                headers=[
                    "checkpoint",
                    "direction",
                    "pred",
                    "pred k",
                    "kind",
                    "k̂",
                    "at base",
                    "base dist",
                    "planted",
                    "g/g_ref",
                    "ρ",
                ],
                tablefmt=args.format,
            )
        )
    total = table.get("all", Rates())
    if not total.predicted:
        print("no predicted directions (no checkpoints found?)", file=sys.stderr)
        return 1
    rate = total.recovered / total.predicted
    if args.min_rate is not None and rate < args.min_rate:
        print(
            f"recovery at the checkpoint {rate:.3f} below --min-rate {args.min_rate}",
            file=sys.stderr,
        )
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
    p.add_argument("--order-tol", type=float, default=ORDER_TOLERANCE, help="|k̂ − k| tolerance")
    p.add_argument(
        "--base-tol",
        type=float,
        default=BASE_TOL,
        help="a base read counts only where the base lies within this distance of the "
        "checkpoint, relative to the norm of the tensors it moves (default %(default)g)",
    )
    p.add_argument(
        "--min-rate", type=float, default=None, help="exit 1 below this rate (at the checkpoint)"
    )
    p.add_argument("--format", default="github", help="tabulate table format")
    p.set_defaults(func=cmd_recovery)
