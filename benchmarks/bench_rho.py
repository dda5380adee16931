"""ρ's two distributions and the threshold between them (issue 16, acceptance 7).

Exact gauges (ReLU rescaling, the z² equal-weight rotation, the attention Q/K orbit) and
genuine singularities (tanh and GELU node death, a tanh duplicate pair split apart) of
``dd.constructed.width_cells`` at widths 4, 16, 64, 256, each direction with 1e-10 relative
dense noise over every parameter. For each: ρ on the read's correction space (entries u
moves by > 1e-8 of its largest) and, for comparison, ρ with the correction over every
entry u touches (``support_fraction=0``: with the noise, every parameter), which is what
made wide genuine singularities read as gauges. Prints both distributions, the gap and
the chosen ``rho_gauge``.

Then the support magnitude (``RhoFit.support_magnitude``: g(θ; u) against the largest
directional Fisher of a unit vector in ρ's correction space; a tangent to an orbit has 0):
the exact gauges above against units near their node-death locus
(``dd.constructed.near_locus_cells``, tanh and GELU, distances 1e-3 … 1e-8, read along
their own weights), whose ρ is ≈ 0 as for a gauge. Prints both distributions and the
threshold (``RateOptions.near_dead``).

    python benchmarks/bench_rho.py [--widths 4 16 64 256] [--attention-max 64]

The attention orbit at width 256 (131 072 correction parameters, CGLS) takes ~150 s:
``--attention-max 256`` includes it.
"""

import argparse
import math
import time

import dead_directions as dd

GAUGES = ("relu-rescale", "z^2-rotation", "attention-qk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--attention-max", type=int, default=64)
    parser.add_argument("--noise", type=float, default=1e-10)
    args = parser.parse_args()
    rho_gauge = dd.ReadOptions().rho_gauge
    every = dd.ReadOptions(support_fraction=0.0)
    gauges, genuine = [], []
    tangents = []
    print("| width | cell | truth | ρ (correction space) | kind | ρ (every entry) | kind | s |")
    print("|---|---|---|---|---|---|---|---|")
    for width in args.widths:
        kinds = [k for k in dd.constructed.WIDTH_CELL_KINDS]
        if width > args.attention_max:
            kinds.remove("attention-qk")
        for cell in dd.constructed.width_cells(width, noise=args.noise, kinds=tuple(kinds)):
            start = time.perf_counter()
            r = cell.read()
            wide = cell.read(options=every) if "attention" not in cell.name else None
            seconds = time.perf_counter() - start
            truth = cell.direction.predicted_kind
            name = cell.name.rsplit("-w", 1)[0]
            (gauges if name in GAUGES else genuine).append(r.correctability)
            if name in GAUGES:
                tangents.append(r.support_magnitude)
            wide_rho = f"{wide.correctability:.2e}" if wide else "—"
            wide_kind = wide.kind if wide else "—"
            print(
                f"| {width} | {name} | {truth} | {r.correctability:.2e} | {r.kind} | "
                f"{wide_rho} | {wide_kind} | {seconds:.1f} |"
            )
    top = max(gauges)
    bottom = min(genuine)
    print()
    print(f"exact gauges:  n = {len(gauges)}, ρ ∈ [{min(gauges):.1e}, {top:.1e}]")
    print(f"genuine:       n = {len(genuine)}, ρ ∈ [{bottom:.1e}, {max(genuine):.1e}]")
    print(
        f"gap: {math.log10(bottom / top):.1f} decades; rho_gauge = {rho_gauge:g} "
        f"({math.log10(rho_gauge / top):.1f} decades above the largest gauge, "
        f"{math.log10(bottom / rho_gauge):.1f} below the smallest genuine)"
    )
    print()
    print("| width | cell | distance δ | ρ | support magnitude | kind | k̂ |")
    print("|---|---|---|---|---|---|---|")
    near = []
    for width in args.widths:
        for distance in (1e-3, 1e-4, 1e-6, 1e-8):
            for cell in dd.constructed.near_locus_cells(width, distance):
                r = cell.read()
                near.append(r.support_magnitude)
                name = cell.name.rsplit("-w", 1)[0]
                print(
                    f"| {width} | {name} | {distance:g} | {r.correctability:.1e} | "
                    f"{r.support_magnitude:.2e} | {r.kind} | {r.order:.3f} |"
                )
    limit = dd.ReadOptions().rate.near_dead
    print()
    print(f"exact gauges' support magnitudes: n = {len(tangents)}, ≤ {max(tangents):.1e}")
    print(f"near-locus node deaths:           n = {len(near)}, ≥ {min(near):.1e}")
    print(
        f"near_dead = {limit:g} ({math.log10(limit / max(tangents)):.1f} decades "
        f"above the largest gauge, {math.log10(min(near) / limit):.1f} below the smallest "
        "near-locus)"
    )


if __name__ == "__main__":
    main()
