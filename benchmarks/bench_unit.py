"""The sweep's unit of work: per-layer jobs (a detect and a measure job per layer) against
per-checkpoint jobs (one job per checkpoint reads every layer), on the same checkpoints, in
one run on one machine.

1. Runs the sweep of ``--config`` (default the default sweep) up to its checkpoints, probe
   data, layer lists and pruning records (Snakemake ``--until``; training included,
   untimed) in a fresh folder, or in the ``--keep`` folder's ``trained`` when it is there.
2. Copies that folder without the store and everything made from it, and times the same
   command from there with ``unit: layer`` and with ``unit: checkpoint`` (one after the
   other: both redo exactly the reading, aggregation, tables, figures and report).
3. Prints both wall times, their ratio, the per-job seconds from Snakemake's benchmark files,
   and whether the two stores are equal (every data variable, NaN-aware).

Usage: ``python benchmarks/bench_unit.py [--config config/config.yaml] [--cores 2]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What both timed runs start from: the checkpoints and what is made from them alone.
UNTIL = ("train", "probe", "layers", "removable")
DERIVED = (
    "store.zarr",
    "store.zarr.ledger",
    "store.init.json",
    "summary",
    "tables",
    "figures",
    "report.md",
    "report.html",
    "directions",
    "directions-by-checkpoint",
)


def run(workdir: Path, config: dict, cores: int, until=()) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "bench.yaml"
    cfg.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(BIN / "snakemake"),
            *("--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)),
            *("--configfile", str(cfg), "--cores", str(cores)),
            *("--workflow-profile", str(ROOT / "workflow" / "profiles" / "default")),
            *(("--until", *until) if until else ()),
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
    return seconds


def job_seconds(workdir: Path, rule: str) -> list[float]:
    out = []
    for tsv in (workdir / "benchmarks" / "out" / rule).rglob("*.tsv"):
        out.append(float(tsv.read_text().splitlines()[1].split("\t")[0]))
    return out


def strip(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)
    for sub in DERIVED:
        target = dst / "results" / sub
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    shutil.rmtree(dst / "benchmarks", ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-unit-"))
    trained = base / "trained"
    print(f"1. {args.config} up to its checkpoints (training included) in {trained}")
    run(trained, {**config, "unit": "layer"}, args.cores, until=UNTIL)
    walls = {}
    for unit in ("layer", "checkpoint"):
        work = base / unit
        strip(trained, work)
        walls[unit] = run(work, {**config, "unit": unit}, args.cores)
        jobs = {
            rule: job_seconds(work, rule) for rule in ("detect", "measure", "measure_checkpoint")
        }
        summary = ", ".join(
            f"{rule} {len(s)} jobs, {sum(s):.1f} s" for rule, s in jobs.items() if s
        )
        print(f"2. unit: {unit:10s} wall {walls[unit]:7.1f} s  ({summary})")
    from dead_directions.io import store

    volatile = [v.name for v in store.PROVENANCE_VARIABLES] + ["seconds"]
    a = store.open(base / "layer" / "results" / "store.zarr", chunks=None).load()
    b = store.open(base / "checkpoint" / "results" / "store.zarr", chunks=None).load()
    try:
        import xarray as xr

        xr.testing.assert_identical(a.drop_vars(volatile), b.drop_vars(volatile))
        equal = "equal"
    except AssertionError as err:
        equal = f"DIFFERENT: {str(err)[:300]}"
    print(f"3. per-checkpoint / per-layer wall time: {walls['checkpoint'] / walls['layer']:.2f}")
    print(f"   stores (every data variable, NaN-aware): {equal}")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
