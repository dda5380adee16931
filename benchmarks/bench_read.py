"""Cost of the read per (direction, radius) pair, in forward passes, naive vs the project's path.

For every Linear and LayerNorm layer of the default `transformer` and `vit` families (final
checkpoint architecture at the middle size, random-init weights are enough for timing), on
one probe batch: the time of one full forward pass (no grad), the time per pair of the naive
read (one `torch.func.jvp` of the whole network per (direction, radius), all parameters as
primals, so the prefix before the layer is recomputed every time), and the time per pair of
`dd.read_many` (vmapped over all pairs of the layer; includes the reference directions and
the classification, not ρ). Directions are random in the layer's weight and bias. Ratios
are measured in this one run, interleaved, minimum of repeats. Times are CPU seconds of
this process (``time.process_time``) with torch on ``--threads`` threads (default 1), so
other jobs on a shared machine perturb them far less than wall time. Usage:
python benchmarks/bench_read.py [--families transformer vit] [--dirs 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from torch.func import functional_call, jvp

import dead_directions as dd
import dead_directions.zoo  # noqa: F401  (registers dd.zoo)
from dead_directions.core.fisher import iter_batches


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def bench_family(name: str, n_dirs: int, n_radii: int, repeats: int) -> list[dict]:
    family = dd.zoo.get_family(name)
    size = family.sizes[len(family.sizes) // 2]
    model = family.build(size).eval()
    probe = family.probe()
    args, kwargs = next(iter_batches(probe))
    output = family.output or (lambda o: o)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    radii = np.logspace(-4, 0, n_radii)
    gen = torch.Generator().manual_seed(0)

    def forward():
        with torch.no_grad():
            output(model(*args, **kwargs))

    rows = []
    kinds = (torch.nn.Linear, torch.nn.LayerNorm)
    layers = [(n, type(m).__name__) for n, m in model.named_modules() if isinstance(m, kinds)]
    for layer, kind in layers:
        keys = [f"{layer}.weight", f"{layer}.bias"]
        dirs = [
            {k: torch.randn(params[k].shape, generator=gen, dtype=params[k].dtype) for k in keys}
            for _ in range(n_dirs)
        ]

        def project(dirs=dirs):
            dd.read_many(
                model,
                probe,
                dirs,
                likelihood=family.likelihood,
                output=family.output,
                radii=radii,
                options=dd.ReadOptions(correctability=False),
            )

        u = {k: torch.zeros_like(v) for k, v in params.items()}
        norm = torch.sqrt(sum((v * v).sum() for v in dirs[0].values()))
        u.update({k: v / norm for k, v in dirs[0].items()})

        def naive(u=u):
            with torch.no_grad():
                for t in radii:
                    point = {k: v + float(t) * u[k] for k, v in params.items()}
                    jvp(
                        lambda p: output(functional_call(model, {**buffers, **p}, args, kwargs)),
                        (point,),
                        (u,),
                    )

        project()  # warm-up
        t_fwd, t_naive, t_proj = [], [], []
        for _ in range(repeats):
            t_fwd.append(best_of(forward, 3))
            t_naive.append(best_of(naive, 1) / n_radii)
            t_proj.append(best_of(project, 1) / (n_dirs * n_radii))
        fwd = min(t_fwd)
        rows.append(
            {
                "family": name,
                "layer": layer,
                "kind": kind,
                "forward_s": fwd,
                "naive": min(t_naive) / fwd,
                "project": min(t_proj) / fwd,
            }
        )
        print(
            f"{name:12s} {layer:32s} forward {fwd * 1e3:7.2f} ms   naive {rows[-1]['naive']:5.2f}"
            f"   project {rows[-1]['project']:5.2f}  (forward passes per pair)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["transformer", "vit"])
    parser.add_argument("--dirs", type=int, default=8)
    parser.add_argument("--radii", type=int, default=17)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, float64, CPU; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for name in args.families:
        rows += bench_family(name, args.dirs, args.radii, args.repeats)
    print("\nforward passes per (direction, radius), CPU time, one run:")
    print(f"{'family':12s} {'layer':32s} {'naive':>7s} {'project':>8s} {'speed-up':>9s}")
    for r in rows:
        print(
            f"{r['family']:12s} {r['layer']:32s} {r['naive']:7.2f} {r['project']:8.2f} "
            f"{r['naive'] / r['project']:8.2f}x"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    groups = [(name, [r for r in rows if r["family"] == name]) for name in args.families]
    by_kind = [(kind, [r for r in rows if r["kind"] == kind]) for kind in ("Linear", "LayerNorm")]
    for label, part in [*groups, *by_kind, ("all", rows)]:
        if not part:
            continue
        naive = [r["naive"] for r in part]
        proj = [r["project"] for r in part]
        print(
            f"{label:12s} {'mean over ' + str(len(part)) + ' layers':32s} "
            f"{statistics.mean(naive):7.2f} {statistics.mean(proj):8.2f} "
            f"{statistics.mean(naive) / statistics.mean(proj):8.2f}x   max project {max(proj):.2f}"
        )


if __name__ == "__main__":
    main()
