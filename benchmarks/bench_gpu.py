"""One layer's read on a GPT-2-small-sized decoder on the GPU: time, FLOP/s vs peak, memory.

A decoder-only transformer of GPT-2 small's shape (12 layers, d = 768, 12 heads, vocab
50257, about 124M parameters; random weights), probe data 64 sequences × 128 tokens,
explicit softmax attention. Reads 32 random directions × 17 radii in one layer's MLP
weight with `dd.read_many`, in float32 (optionally TF32) and in float64, and prints the wall
time, the achieved FLOP/s (matmul FLOPs counted by torch's FlopCounterMode on a timed
repeat) as a fraction of the device's peak for the dtype, the peak memory and the
float32-vs-float64 order agreement. Then reads every constructed cell of the read issue
(`dd.constructed.read_cells()`, METHOD §4) on the same device in float32 and float64 and prints
each order and the largest |Δk| (acceptance: ≤ 0.05). `--tiny` shrinks the decoder for a
CPU smoke run.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dead_directions as dd

# Dense peak FLOP/s by (device-name fragment, dtype). H100/H200 SXM figures from NVIDIA's
# data sheets (FP64 and FP32 on the CUDA/tensor cores; TF32 dense tensor core).
PEAKS = {
    ("H100", "float64"): 67e12,
    ("H100", "float32"): 67e12,
    ("H100", "tf32"): 494.7e12,
    ("H200", "float64"): 67e12,
    ("H200", "float32"): 67e12,
    ("H200", "tf32"): 494.7e12,
}


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        h = self.ln1(x)

        def split(z):
            return z.reshape(b, s, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class Decoder(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, context: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def run(model, tokens, directions, dtype, chunk):
    start = time.perf_counter()
    reads = dd.read_many(
        model,
        tokens,
        directions,
        likelihood="categorical",
        dtype=dtype,
        radii=np.logspace(-4, 0, 17),
        chunk_size=chunk,
        options=dd.ReadOptions(correctability=False),
    )
    if tokens.is_cuda:
        torch.cuda.synchronize()
    return reads, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke-test sizes")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in float32")
    parser.add_argument("--chunk", type=int, default=None, help="pairs per vmapped call")
    parser.add_argument("--layer", default="blocks.6.fc1")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        vocab, dim, depth, heads, n_seq, seq, n_dirs = 97, 32, 2, 2, 4, 8, 4
        args.layer = "blocks.1.fc1"
    else:
        vocab, dim, depth, heads, n_seq, seq, n_dirs = 50257, 768, 12, 12, 64, 128, 32
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    model = Decoder(vocab, dim, depth, heads, 1024).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, vocab, (n_seq, seq), device=device)
    weight = f"{args.layer}.weight"
    shape = dict(model.named_parameters())[weight].shape
    gen = torch.Generator().manual_seed(1)
    directions = [{weight: torch.randn(shape, generator=gen).to(device)} for _ in range(n_dirs)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}; {n_params / 1e6:.1f}M parameters; probe {n_seq}×{seq} tokens")
    print(f"layer {weight} {tuple(shape)}; {n_dirs} directions × 17 radii")
    results = {}
    for label, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        run(model, tokens, directions[:1], dtype, args.chunk)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        reads, seconds = run(model, tokens, directions, dtype, args.chunk)
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
        with FlopCounterMode(display=False) as counter:
            run(model, tokens, directions, dtype, args.chunk)
        flops = counter.get_total_flops()
        key = "tf32" if (label == "float32" and args.tf32) else label
        peak = next((v for (frag, dt), v in PEAKS.items() if frag in name and dt == key), None)
        frac = flops / seconds / peak if peak else math.nan
        results[label] = reads
        print(
            f"{key:8s} wall {seconds:8.2f} s  {flops / seconds / 1e12:8.2f} TFLOP/s  "
            f"{frac:6.1%} of peak  peak memory {peak_mem:6.2f} GiB"
        )
    diffs = [
        abs(a.order - b.order)
        for a, b in zip(results["float32"], results["float64"], strict=True)
        if math.isfinite(a.order) and math.isfinite(b.order)
    ]
    same_kind = sum(
        a.kind == b.kind for a, b in zip(results["float32"], results["float64"], strict=True)
    )
    print(
        f"float32 vs float64: kinds agree {same_kind}/{n_dirs}; max |Δk| "
        f"{max(diffs) if diffs else math.nan:.2e} over {len(diffs)} finite orders"
    )
    cells_agreement(device)


def cells_agreement(device: torch.device, tolerance: float = 0.05) -> None:
    """Read every constructed cell in float32 and float64 on ``device``; print the orders."""
    print(f"\nconstructed cells on {device.type}, float32 vs float64 (|Δk| ≤ {tolerance}):")
    worst = 0.0
    for cell in dd.constructed.read_cells():
        single, double = (
            cell.read(dtype=dt, device=device) for dt in (torch.float32, torch.float64)
        )
        both = math.isfinite(single.order) and math.isfinite(double.order)
        delta = abs(single.order - double.order) if both else math.nan
        agree = single.kind == double.kind and (not both or delta <= tolerance)
        worst = max(worst, delta) if both else worst
        print(
            f"  {cell.name:28s} k32 {single.order:7.3f} k64 {double.order:7.3f} "
            f"{single.kind:>10s}/{double.kind:<10s} {'ok' if agree else 'DISAGREE'}"
        )
    print(f"largest |Δk| over the cells: {worst:.2e}")


if __name__ == "__main__":
    main()
