"""Command-line interface: ``dead-directions <command>``."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time

from tabulate import tabulate

from dead_directions.nn.constructed import read_cells

# Subcommands live beside the concept they expose: each module named here defines
# ``add_parser(subparsers)`` which registers its command and sets ``func``.
COMMAND_MODULES = [
    "dead_directions.cli",
    "dead_directions.cli.compare",
    "dead_directions.cli.sweep",
]
COMMAND_MODULES += ["dead_directions.cli.recovery"]  # detector recovery rates
COMMAND_MODULES += ["dead_directions.cli.prune"]  # prune read-confirmed dead/duplicate units
COMMAND_MODULES += ["dead_directions.cli.zoo"]  # train: the model zoo
COMMAND_MODULES += ["dead_directions.cli.timing"]  # a sweep's time split across rules


def fmt(x, digits: int = 3) -> str:
    """A number for a table: ``—`` for None, ``∞``/``nan``, floats to ``digits`` places,
    anything else as ``str``."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def cmd_constructed(args) -> int:
    """Read every constructed cell and print predicted vs measured kind and order."""

    rows, failures = [], 0
    for cell in read_cells(n_inputs=args.inputs, seed=args.seed):
        start = time.perf_counter()
        r = cell.read()
        seconds = time.perf_counter() - start
        ok = r.matches_prediction
        failures += not ok
        rows.append(
            [
                cell.name,
                cell.direction.predicted_kind,
                fmt(cell.direction.predicted_order, 0),
                r.kind,
                fmt(r.order),
                fmt(r.spread, 4),
                fmt(r.correctability, 3),
                f"{r.magnitude:.1e}",
                f"{seconds:.2f}",
                "ok" if ok else "MISMATCH",
            ]
        )
    headers = ["cell", "pred kind", "pred k", "kind", "k̂", "spread", "ρ", "g/g_ref", "s", ""]
    print(tabulate(rows, headers=headers, tablefmt=args.format))
    print(f"\n{len(rows) - failures}/{len(rows)} cells match their closed form.")
    return 1 if failures else 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "constructed",
        help="read every constructed model with a known answer; print predicted vs measured",
    )
    p.add_argument("--inputs", type=int, default=512, help="Gaussian probe inputs per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="github", help="tabulate table format")
    p.set_defaults(func=cmd_constructed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dead-directions",
        description="Read dead directions (singular structure) at frozen checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"dead-directions {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
