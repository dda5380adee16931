"""Command: ``compare-llc`` (closed form vs structured and blind assembly vs devinterp)."""

from __future__ import annotations

import math

import torch
from tabulate import tabulate

from dead_directions import zoo
from dead_directions.analysis.llc_compare import (
    BATCH,
    CELL_HEADERS,
    DEVINTERP_HEADERS,
    N_DATA,
    TITLE,
    ZOO_FAMILY,
    ZOO_SIZES,
    ZOO_STEP,
    calibration_note,
    compare,
    compare_zoo,
    default_cells,
    machine,
    summary_line,
    zoo_checkpoints,
    zoo_notes,
)


def cmd_compare(args) -> int:
    """Closed form vs structured / blind assembly vs calibrated devinterp, with times."""

    torch.set_num_threads(args.threads)
    sizes = [s for s in (args.zoo or "").split(",") if s and s != "none"]
    devinterp = not args.no_devinterp
    lines = []
    if not args.no_cells:
        cells = default_cells(not args.small, args.cells)
        headers = CELL_HEADERS + (DEVINTERP_HEADERS if devinterp else [])
        rows = compare(cells, devinterp=devinterp, seed=args.seed, cache=args.cache)
        lines += [
            tabulate(rows, headers=headers, tablefmt=args.format, disable_numparse=True),
            "",
            summary_line(rows),
            "",
        ]
    lines.append(f"Machine: {machine()}.")
    lines.append("")
    if devinterp:
        lines.append(
            f"devinterp on the cells: n = {N_DATA} samples drawn from the true model, "
            f"nβ = n/log n = {N_DATA / math.log(N_DATA):.1f}, batch {BATCH}, chains start at "
            "the deepest true point. " + calibration_note()
        )
        lines.append("")
    if sizes:
        checkpoints = zoo_checkpoints(sizes, root=args.checkpoints, seed=args.seed)
        n_train = len(zoo.get_family(ZOO_FAMILY).task().x_train)
        rows = compare_zoo(checkpoints, devinterp=devinterp, seed=args.seed, cache=args.cache)
        headers = ["checkpoint", "d", "dim Z ≥", "max abs(f − f*)", "tight"]
        headers += ["bound (d − dim Z)/2", "reads r/s/g/u", "blind λ (m)"]
        headers += ["blind vs bound", "read s"]
        if devinterp:
            headers += ["devinterp calibrated λ̂ ± sd", "lr, γ", "s"]
        lines += [
            f"## Final checkpoints of the default `{ZOO_FAMILY}` family",
            "",
            tabulate(rows, headers=headers, tablefmt=args.format, disable_numparse=True),
            "",
        ]
        notes = zoo_notes(n_train)
        for note in notes if devinterp else notes[:-1]:
            lines += [note, ""]
    text = "\n".join(lines).rstrip() + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(f"{TITLE}\n\n{text}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare-llc",
        help="closed-form (λ, m) vs structured and blind assembly vs calibrated devinterp "
        "(assembly cells and the final mlp checkpoints)",
    )
    p.add_argument("--small", action="store_true", help="only RRR cells with M, N, H ≤ 2")
    p.add_argument("--cells", default=None, help="only cells whose name contains this")
    p.add_argument("--no-cells", action="store_true", help="skip the assembly cells")
    p.add_argument(
        "--zoo",
        default=",".join(ZOO_SIZES),
        help=f"sizes of the `{ZOO_FAMILY}` family whose step-{ZOO_STEP} checkpoints get rows "
        "('none' to skip)",
    )
    p.add_argument(
        "--checkpoints",
        default=None,
        help="checkpoint root to take (or train) them from (default: train in a temp dir)",
    )
    p.add_argument("--no-devinterp", action="store_true", help="closed form vs assembly only")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache",
        default=None,
        help="folder for the devinterp estimates (JSON per row, keyed by name, seed and "
        "the calibration settings): reruns and parallel runs over --cells reuse them",
    )
    p.add_argument("--format", default="github", help="tabulate table format")
    p.add_argument("--out", default=None, help="also write the table (and machine) here")
    p.set_defaults(func=cmd_compare)
