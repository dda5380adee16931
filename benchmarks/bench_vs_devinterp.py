"""Reading every detector direction of a checkpoint vs one devinterp LLC estimate: wall time.

For final checkpoints of the default zoo (mlp h16 at step 3000, cnn c8 at step 600; add
e.g. ``--runs transformer:d32:2400`` if affordable) and the family's probe data (256
held-out inputs, with their targets for devinterp), time

* reading: ``dd.detect`` + ``dd.read`` of every detector direction of every layer, as the
  sweep does it (``sweep.detect_cell`` / ``sweep.measure_cell`` per layer, the default
  config's ``max_per_layer`` and the store's ``max_directions`` cap), float64 on CPU;
* devinterp 2.0.1's ``llc`` at its defaults (4 chains × 200 draws, batch 32, no
  localization; lr = 1e-3 since 2.0.1 has no default) at the checkpoint on the same probe
  data, nβ = n/log n, through the dataset adapter of ``dead_directions.analysis.llc_compare``
  (uncalibrated: a timing baseline; an estimate above d/2, drifting or diverging is
  printed as failed);

and print both times, their ratio and both outputs (per-detector counts by kind and
order; LLC mean ± std over chains). Checkpoints are trained by the zoo into a temporary
directory unless ``--checkpoints ROOT`` holds them (``{ROOT}/{family}/{size}/step*.safetensors``).
Both paths are warmed up once (first-call overheads out of the times); one thread.

devinterp is an optional benchmark dependency:

    .venv/bin/pip install --no-deps devinterp==2.0.1 && .venv/bin/pip install datasets

Usage: python benchmarks/bench_vs_devinterp.py [--runs mlp:h16:3000 cnn:c8:600]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

import dead_directions as dd
from dead_directions import detectors, zoo
from dead_directions.analysis.llc_compare import llc_on_data, machine
from dead_directions.cli.sweep import detect_cell, measure_cell
from dead_directions.io.artefacts import sweep_layer
from dead_directions.zoo.loading import load_model

MAX_PER_LAYER = 4  # config/config.yaml: every default family's max_per_layer
MAX_DIRECTIONS = 32  # config/config.yaml: store_layout.max_directions
#: devinterp 2.0.1's defaults (4 chains × 200 draws, batch 32, no localization, no
#: burn-in) with lr = 1e-3 (2.0.1 has no default lr). Uncalibrated: a timing baseline;
#: its estimate carries the diagnostics of ``llc_compare.diagnose`` (λ̂ > d/2, drift,
#: divergence) and is printed as failed when they flag it.
DEFAULT_SETTING = dict(lr=1e-3)


def probe_with_targets(fam, seed: int = 0):
    """The family's probe inputs (``fam.probe``) and the held-out targets that go with them."""
    task = fam.task()
    order = torch.randperm(len(task.x_test), generator=torch.Generator().manual_seed(seed))
    x = fam.probe(seed=seed)
    idx = order[: len(x)]
    if not torch.equal(task.x_test[idx], x):
        raise ValueError(f"{fam.name}: the probe is not the seeded held-out inputs any more.")
    return x, task.y_test[idx]


def read_all(model, fam, x, seed: int = 0):
    """Detect and read every direction of every layer, as the sweep does.

    Returns ``(reads, directions per layer, detect seconds, read seconds)``.
    """
    reads, found_all = [], {}
    detect_s = read_s = 0.0
    for layer in (sweep_layer(n) for n in detectors.layers(model)):
        started = time.perf_counter()
        found, _ = detect_cell(
            model, x, fam, layer, max_per_layer=MAX_PER_LAYER, limit=MAX_DIRECTIONS, seed=seed
        )
        detect_s += time.perf_counter() - started
        started = time.perf_counter()
        out, _, _, _ = measure_cell(
            model, x, found, fam, None, device=torch.device("cpu"), dtype=None, seed=seed
        )
        read_s += time.perf_counter() - started
        reads.extend(out)
        found_all[layer] = found
    return reads, found_all, detect_s, read_s


def read_without_rho(model, fam, x, found_all, seed: int = 0) -> float:
    """Seconds to read the same directions with the correctability ρ (METHOD §3) off."""
    options = dd.ReadOptions(correctability=False)
    started = time.perf_counter()
    for found in found_all.values():
        if found:
            dd.read_many(
                model,
                x,
                found,
                likelihood=fam.likelihood,
                output=fam.output,
                seed=seed,
                options=options,
            )
    return time.perf_counter() - started


def summary(reads) -> str:
    """Per detector: counts by kind, and the measured orders of the singular reads."""
    lines = []
    by_detector: dict[str, list] = {}
    for r in reads:
        by_detector.setdefault(r.detector, []).append(r)
    for name, rs in sorted(by_detector.items()):
        kinds = Counter(r.kind for r in rs)
        orders = Counter(f"{r.order:.1f}" for r in rs if r.kind == "singular")
        lines.append(
            f"    {name:<24} {len(rs):3d}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            + (f"; singular k̂ {dict(sorted(orders.items()))}" if orders else "")
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="*", default=["mlp:h16:3000", "cnn:c8:600"])
    p.add_argument("--checkpoints", default=None, help="checkpoint root (default: train)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"Machine: {machine()}.\n")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.checkpoints or tmp)
        for spec in args.runs:
            name, size, step = spec.split(":")
            step = int(step)
            fam = zoo.get_family(name)
            path = root / name / size / f"step{step:07d}.safetensors"
            if not path.exists():
                started = time.perf_counter()
                zoo.train(name, size, [step], root, seed=args.seed)
                seconds = time.perf_counter() - started
                print(f"{name}/{size}: trained to step {step} in {seconds:.1f} s")
            model, meta = load_model(path, name, size)
            x, y = probe_with_targets(fam, args.seed)
            n = len(x)
            # Warm-up: one direction read, one short chain (first-call overheads).
            first = detectors.layers(model)[0]
            found, _ = detect_cell(model, x, fam, sweep_layer(first), max_per_layer=1, limit=1)
            measure_cell(model, x, found, fam, None, device=torch.device("cpu"), dtype=None)
            llc_on_data(model, x, y, fam.likelihood, dict(lr=1e-3, num_chains=1, num_draws=5))

            reads, found_all, detect_s, measure_s = read_all(model, fam, x, args.seed)
            read_s = detect_s + measure_s
            no_rho_s = read_without_rho(model, fam, x, found_all, args.seed)
            est = llc_on_data(model, x, y, fam.likelihood, DEFAULT_SETTING, seed=args.seed)
            ratio = est.seconds / read_s
            results.append((spec, len(reads), read_s, est, ratio, detect_s + no_rho_s))
            print(
                f"{name}/{size} step {step} ({sum(p.numel() for p in model.parameters())} "
                f"parameters, probe n = {n}):\n"
                f"  read: {len(reads)} detector directions in "
                f"{len(detectors.layers(model))} layers, {read_s:.2f} s (detect "
                f"{detect_s:.2f} s, read {measure_s:.2f} s; the read with ρ off: "
                f"{no_rho_s:.2f} s)\n{summary(reads)}\n"
                f"  devinterp llc (defaults {DEFAULT_SETTING}, 4 chains × 200 draws, "
                f"nβ = n/log n = {n / math.log(n):.1f}): λ̂ = {est.cell()}, "
                f"{est.seconds:.2f} s\n"
                f"  ratio devinterp / read = {ratio:.1f}x\n",
                flush=True,
            )
    print("summary: run, directions, detect + read s, devinterp s, ratio (ratio with ρ off)")
    for spec, count, read_s, est, ratio, no_rho in results:
        verdict = "≥ 10x" if ratio >= 10 else "BELOW 10x"
        print(
            f"  {spec}: {count}, {read_s:.2f}, {est.seconds:.2f}, {ratio:.1f}x ({verdict}) "
            f"({est.seconds / no_rho:.1f}x)"
        )


if __name__ == "__main__":
    main()
