"""Commands: ``prune``, ``removable`` and ``prune-tables``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tabulate import tabulate

from dead_directions.analysis.prune_tables import load_records, write_prune_tables
from dead_directions.cli.args import step_path
from dead_directions.io import files
from dead_directions.prune import prune_checkpoint, removable_record, save_pruned


def _prune_options(args) -> dict:
    return {
        "probe": args.probe,
        "seed": args.seed,
        "tolerance": args.tolerance,
        "metric_tolerance": args.metric_tolerance,
        "score_tol": args.score_tol,
    }


def cmd_prune(args) -> int:
    """Detect, read and prune one checkpoint; write the pruned checkpoint under ``--out``."""

    model, pruned, report, meta = prune_checkpoint(
        args.checkpoint, args.family, **_prune_options(args)
    )
    meta = {k: v for k, v in meta.items() if k not in ("path", "format", "pruned")}
    meta["source"] = str(args.checkpoint)
    out = Path(args.out) / Path(args.checkpoint).with_suffix(".safetensors").name
    save_pruned(pruned, report, out, meta)
    rows = [
        [r["layer"], f"{r['width_before']}→{r['width_after']}", r["params_saved"], r["flops_saved"]]
        for r in report.rows()
    ]
    print(tabulate(rows, headers=["layer", "width", "params saved", "FLOPs saved"]))
    print(
        f"\nparameters {report.params_before} → {report.params_after} "
        f"({100 * report.removed_fraction:.2f} % removed); FLOPs {report.flops_before} → "
        f"{report.flops_after}; output change {report.output_change:.2e}"
        + (
            f"; {report.metric} {report.metric_before:.6g} → {report.metric_after:.6g}"
            if report.metric
            else ""
        )
    )
    print(f"wrote {out}")
    return 0


def _checkpoint_items(items: Sequence[str]) -> list[tuple[int | None, Path]]:
    """``STEP=PATH`` or ``PATH`` items: ``(step or None, path)``; a missing file fails first."""
    out = [step_path(item, "checkpoints", step_required=False) for item in items]
    for _, path in out:
        if not path.exists():
            raise ValueError(f"checkpoint {path} does not exist.")
    return out


def cmd_removable(args) -> int:
    """The removable fraction of parameters per layer of checkpoints: a JSON list with one
    record per checkpoint at ``--out``. One process for all steps of a size (the workflow's
    job): the imports cost more than pruning a small model."""

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    records = []
    for step, path in _checkpoint_items(args.checkpoints):
        started = time.perf_counter()
        model, pruned, report, meta = prune_checkpoint(
            path, args.family, size=args.size, **_prune_options(args)
        )
        step = step if step is not None else meta.get("step")
        if step is None:
            raise ValueError(f"checkpoint {path}: no step in its sidecar; pass STEP={path}.")
        record = removable_record(
            model,
            pruned,
            report,
            family=args.family,
            size=args.size or str(meta.get("size", "")),
            step=int(step),
            checkpoint=str(path),
        )
        record["options"] = _prune_options(args)
        record["seconds"] = time.perf_counter() - started
        records.append(record)
        print(
            f"{args.family}/{record['size']}/step{record['step']}: "
            f"{100 * record['fraction']:.2f} % of {record['params_before']} parameters "
            f"removable ({record['units_removed']} units removed, {record['units_merged']} "
            f"merged) in {record['seconds']:.1f} s"
        )
    files.write_text_atomic(out, files.dumps(records, indent=1, sort_keys=True) + "\n")
    print(f"{len(records)} records -> {out}")
    return 0


def cmd_prune_tables(args) -> int:
    """Removable-parameter tables (CSV, Markdown) and figure of one family."""
    paths = write_prune_tables(
        load_records(args.records), args.family, args.csv, args.markdown, args.figure
    )
    print("\n".join(map(str, paths)))
    return 0


def _prune_args(p) -> None:
    p.add_argument("--probe", type=int, default=256, help="probe inputs for detect and read")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max relative output change")
    p.add_argument(
        "--metric-tolerance", type=float, default=0.005, help="max task-metric loss (held out)"
    )
    p.add_argument(
        "--score-tol",
        type=float,
        default=None,
        help="dead_unit weak-unit threshold (× the layer's median in·out norm); candidates only",
    )
    p.add_argument("--seed", type=int, default=0)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help="remove read-confirmed dead units and merge duplicates; write the result"
    )
    p.add_argument("checkpoint", help="checkpoint file (safetensors with sidecar)")
    p.add_argument("--family", required=True, help="zoo family name")
    p.add_argument("--out", required=True, help="output directory")
    _prune_args(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "removable", help="removable fraction of parameters per layer of checkpoints (JSON)"
    )
    p.add_argument(
        "checkpoints", nargs="+", help="STEP=PATH or PATH (step from the sidecar) per checkpoint"
    )
    p.add_argument("--family", required=True, help="zoo family name")
    p.add_argument("--size", default=None, help="size (default: the sidecar's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="JSON list of records to write")
    _prune_args(p)
    p.set_defaults(func=cmd_removable)

    p = sub.add_parser(
        "prune-tables", help="removable parameters across steps and sizes (CSV, Markdown, PNG)"
    )
    p.add_argument("records", nargs="+", help="JSON records from `dead-directions removable`")
    p.add_argument("--family", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--figure", required=True)
    p.set_defaults(func=cmd_prune_tables)
