"""Command: ``train`` (the model zoo)."""

from __future__ import annotations

import json
import time

from tabulate import tabulate

from dead_directions.io import checkpoints
from dead_directions.zoo import FAMILIES, get_family, train_zoo, trainable


def _parse_steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        steps = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ValueError(f"--steps: expected comma-separated integers, got {text!r}.") from None
    if not steps or min(steps) < 0:
        raise ValueError(f"--steps: expected non-negative integers, got {text!r}.")
    return steps


def cmd_train(args) -> int:
    """Train zoo checkpoints and print a table of the final metrics per run."""

    names = trainable() if args.family == "all" else [args.family]
    for name in names:
        get_family(name)
    sizes = [s for s in args.size.split(",") if s] if args.size else None
    started = time.perf_counter()
    paths = train_zoo(
        args.out,
        names,
        sizes,
        _parse_steps(args.steps),
        seed=args.seed,
        tiny=args.tiny,
        jobs=args.jobs,
    )
    rows = []
    last: dict[tuple[str, str], dict] = {}
    for p in paths:
        meta = json.loads(checkpoints.sidecar_path(p).read_text())
        last[(meta["family"], meta["size"])] = meta
    for (fam, size), m in last.items():
        rows.append(
            [
                fam,
                size,
                m["step"],
                m.get("train_loss"),
                m.get("test_loss"),
                m.get("train_accuracy"),
                m.get("test_accuracy"),
                m.get("seconds"),
            ]
        )
    headers = ["family", "size", "step", "train loss", "test loss", "train acc", "test acc", "s"]
    print(tabulate(rows, headers=headers, floatfmt=".4g"))
    print(f"\n{len(paths)} checkpoints in {time.perf_counter() - started:.1f} s under {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train zoo checkpoints (safetensors + JSON sidecars)")
    p.add_argument("--family", required=True, help=f"one of {', '.join(FAMILIES)}, or 'all'")
    p.add_argument("--size", default=None, help="size(s), comma-separated (default: all)")
    p.add_argument("--steps", default=None, help="checkpoint steps, e.g. 0,10,100 (default: log)")
    p.add_argument("--out", required=True, help="root directory of the checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the tiny recipe (tests, smoke runs)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (single-threaded each)")
    p.set_defaults(func=cmd_train)
