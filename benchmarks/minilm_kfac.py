"""K-FAC directions of all-MiniLM-L6-v2, their kinds per layer (issue 16, acceptance 5).

The probe's fit part (the first 3/4 of the shipped sentences) goes to the detectors and to
the read's curves and ρ; the last quarter is held out, and every gauge verdict must hold
there (METHOD §3 rule 1). Layers whose fan-in exceeds the fit part's tokens have a
data-induced kernel: K-FAC's bottom eigenvectors are flat on the probe but not off it,
and read `undetermined`. Prints a Markdown table: layer, fan-in, kinds.

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
    dirs = dd.detect(
        model, fit, detectors=["kfac"], max_per_layer=args.per_layer, layers=args.layers, **kw
    )
    reads = dd.read_many(model, fit, dirs, heldout=held, **kw)
    modules = dict(model.named_modules())
    by_layer: dict[str, Counter] = {}
    for r in reads:
        by_layer.setdefault(r.layer, Counter())[r.kind] += 1
    print(
        f"all-MiniLM-L6-v2, {args.n} sentences: fit {tokens} tokens, held out {held_tokens}; "
        f"{len(reads)} kfac directions ({args.per_layer} per layer) in "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print("| layer | fan-in | " + " | ".join(KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    total = Counter()
    for layer, counts in by_layer.items():
        total += counts
        fan_in = getattr(modules.get(layer), "in_features", "")
        print(f"| {layer} | {fan_in} | " + " | ".join(str(counts[k]) for k in KINDS) + " |")
    print("| all | | " + " | ".join(str(total[k]) for k in KINDS) + " |")


if __name__ == "__main__":
    main()
