"""What held-out confirmation of gauges costs the read (issue 16, acceptance 7, in part).

Every constructed cell (``dd.constructed.read_cells``) read twice, interleaved, three times over:
the default read (curves and ρ on the fit three quarters of the probe, every gauge
confirmed on the held-out quarter) and the same fit part read with nothing held out
(``heldout_fraction=0``). The difference is the confirmation's cost; a gauge costs a
second read on the held-out inputs, so it scales with the share of gauges (6 of 22 here).

    python benchmarks/bench_heldout_cost.py
"""

import time

import torch

import dead_directions as dd


def main() -> None:
    torch.set_num_threads(1)
    cells = dd.constructed.read_cells()
    off = dd.ReadOptions(heldout_fraction=0)
    total = {"confirmed": 0.0, "not confirmed": 0.0}
    reps = 3
    gauges = 0
    for _ in range(reps):
        gauges = 0
        for c in cells:
            fit, _ = dd.split_probe(c.inputs)
            start = time.perf_counter()
            gauges += c.read().kind == "gauge"
            total["confirmed"] += time.perf_counter() - start
            start = time.perf_counter()
            dd.read(c.model, fit, c.direction, likelihood=c.likelihood, options=off)
            total["not confirmed"] += time.perf_counter() - start
    with_s, without_s = total["confirmed"] / reps, total["not confirmed"] / reps
    print(
        f"{len(cells)} cells ({gauges} gauges), one thread, mean of {reps} passes: "
        f"{with_s:.2f} s with held-out confirmation, {without_s:.2f} s without "
        f"({with_s / without_s:.1f}×)"
    )


if __name__ == "__main__":
    main()
