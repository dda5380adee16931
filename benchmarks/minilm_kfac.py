"""K-FAC directions of all-MiniLM-L6-v2, their kinds per layer (issue 16, acceptance 5).

The probe's fit part (the first 3/4 of the shipped sentences) goes to the detectors and to
the read's curves and ρ; the last quarter is held out, and every gauge verdict must hold
there (METHOD §3 rule 1). Layers whose fan-in exceeds the fit part's tokens have a
data-induced kernel: K-FAC's bottom eigenvectors are flat on the probe but not off it,
and read `undetermined`. Prints a Markdown table: layer, fan-in, kinds, seconds — a row
per layer as soon as it is read (detect and read one layer at a time).

    python benchmarks/minilm_kfac.py [--n 8] [--per-layer 4]
"""

import argparse
import os
import time
from collections import Counter

import torch

import dead_directions as dd
from dead_directions.zoo import minilm

KINDS = ("regular", "singular", "gauge", "undetermined", "unresolved")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="probe sentences")
    parser.add_argument("--per-layer", type=int, default=4, help="kfac directions per layer")
    parser.add_argument("--layers", nargs="*", default=None, help="module names (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    started = time.perf_counter()
    model = minilm.load()
    inputs = minilm.probe(n=args.n)
    fit, held = dd.split_probe(inputs)
    tokens = int(fit["attention_mask"].sum())
    held_tokens = int(held["attention_mask"].sum())
    kw = dict(output=minilm.last_hidden_state)
    modules = dict(model.named_modules())
    names = args.layers or [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
    print(
        f"all-MiniLM-L6-v2, {args.n} sentences: fit {tokens} tokens, held out {held_tokens}; "
        f"kfac, {args.per_layer} directions per layer, {len(names)} layers (a row per layer "
        "as it is read)\n",
        flush=True,
    )
    print("| layer | fan-in | " + " | ".join(KINDS) + " | s |")
    print("|---|---|" + "---|" * (len(KINDS) + 1), flush=True)
    total = Counter()
    n_reads = 0
    for name in names:
        layer_started = time.perf_counter()
        dirs = dd.detect(
            model, fit, detectors=["kfac"], max_per_layer=args.per_layer, layers=[name], **kw
        )
        reads = dd.read_many(model, fit, dirs, heldout=held, **kw) if dirs else []
        counts = Counter(r.kind for r in reads)
        total += counts
        n_reads += len(reads)
        fan_in = getattr(modules.get(name), "in_features", "")
        print(
            f"| {name} | {fan_in} | "
            + " | ".join(str(counts[k]) for k in KINDS)
            + f" | {time.perf_counter() - layer_started:.0f} |",
            flush=True,
        )
    print("| all | | " + " | ".join(str(total[k]) for k in KINDS) + " | |")
    print(f"\n{n_reads} kfac directions in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
