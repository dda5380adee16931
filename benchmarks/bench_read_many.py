"""`dd.read_many` over 32 directions vs 32 `dd.read` calls: same numbers, wall-time ratio.

Usage: python benchmarks/bench_read_many.py   (CPU, float64; ratios from one run)
"""

from __future__ import annotations

import time

import numpy as np
import torch

import dead_directions as dd
from dead_directions.nn.constructed import MLP


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    model = MLP(16, 64, 8, "tanh", gen)
    inputs = torch.randn(256, 16, generator=gen, dtype=torch.float64)
    directions = [
        {"fc1.weight": torch.randn(64, 16, generator=gen, dtype=torch.float64)} for _ in range(32)
    ]
    dd.read_many(model, inputs, directions[:2])  # warm-up
    many_t, single_t = [], []
    for _ in range(3):
        start = time.perf_counter()
        many = dd.read_many(model, inputs, directions)
        many_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        singles = [dd.read(model, inputs, d) for d in directions]
        single_t.append(time.perf_counter() - start)
    worst = max(
        float(np.max(np.abs(a.fisher - b.fisher) / np.abs(b.fisher)))
        for a, b in zip(many, singles, strict=True)
    )
    print(f"32 × read: {min(single_t):.3f} s   read_many(32): {min(many_t):.3f} s")
    print(f"speed-up {min(single_t) / min(many_t):.1f}x; max relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
