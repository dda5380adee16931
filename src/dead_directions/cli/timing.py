"""Command: ``timing`` (a sweep's wall time and its split across rules)."""

from __future__ import annotations

from dead_directions.analysis.timing import format_table, read_benchmarks, summarise


def cmd_timing(args) -> int:
    """Print the sweep's wall time and its split across rules."""
    print(format_table(summarise(read_benchmarks(args.benchmarks)), args.format))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "timing", help="a sweep's wall time and its split across rules (benchmark files)"
    )
    p.add_argument(
        "benchmarks",
        nargs="?",
        default="benchmarks/out",
        help="the workflow's benchmark folder (default: benchmarks/out)",
    )
    p.add_argument("--format", default="github", help="tabulate table format")
    p.set_defaults(func=cmd_timing)
