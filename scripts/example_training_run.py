"""Write a small training run laid out as users' runs are, for the declared-family examples
(config/declared-*.yaml) and their tests: a tiny GPT-NeoX (the Pythia architecture, eager
attention) at two sizes, trained a few steps on a few sentences, saved

* as the Hugging Face Trainer lays checkpoints out: ``OUT/runs/{size}/checkpoint-{step}/``
  (``config.json``, ``model.safetensors``, the tokenizer);
* as a local Hugging Face hub cache whose revisions name steps, as Pythia's do:
  ``OUT/hub/models--toy--neox-{size}/snapshots/<commit>/`` with ``refs/step{step}``;

plus the probe text ``OUT/probe.txt`` (one example a line), and, for a ``module:function``
builder, safetensors state dicts of the zoo's tanh MLP at ``OUT/state/{size}/w-{step}`` with
its probe inputs ``OUT/mlp-probe.safetensors``. Nothing is downloaded.

Usage: ``python scripts/example_training_run.py OUT [--layout trainer|cache|state|all]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

TEXT = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the bird sang in the tree",
    "a fish swam in the sea",
    "the sun rose over the hill",
    "a child read a small book",
    "the wind blew across the field",
    "a man walked to the town",
]
SIZES = {"s1": 16, "s2": 24}  # hidden width per size
STEPS = (2, 4)
LENGTH = 8  # tokens per probe example


def tokenizer():
    """A word-level tokenizer of TEXT (with [PAD] and [UNK]), as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in TEXT for w in line.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def neox(hidden: int, vocab: int):
    """A one-block GPT-NeoX causal LM of width ``hidden`` (seeded by it)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    torch.manual_seed(hidden)
    return GPTNeoXForCausalLM(config)


def write_neox_runs(out: Path, layouts: set[str]) -> None:
    """Train each size a few AdamW steps on TEXT; save the STEPS in the chosen layouts."""
    tok = tokenizer()
    enc = tok(TEXT, padding="max_length", max_length=LENGTH, return_tensors="pt")
    for size, hidden in SIZES.items():
        model = neox(hidden, len(tok))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(1, max(STEPS) + 1):
            loss = model(**enc, labels=enc["input_ids"]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step not in STEPS:
                continue
            folders = []
            if "trainer" in layouts:
                folders.append(out / "runs" / size / f"checkpoint-{step}")
            if "cache" in layouts:
                repo = out / "hub" / f"models--toy--neox-{size}"
                commit = f"{size}{step:038d}"
                (repo / "refs").mkdir(parents=True, exist_ok=True)
                (repo / "refs" / f"step{step}").write_text(commit)
                folders.append(repo / "snapshots" / commit)
            for folder in folders:
                model.save_pretrained(folder)
                tok.save_pretrained(folder)
    (out / "probe.txt").write_text("\n".join(TEXT) + "\n")


def write_state_dicts(out: Path) -> None:
    """The zoo's tanh MLP h4 at two seeds as safetensors state dicts, and its probe."""
    from safetensors.torch import save_file

    from dead_directions import zoo
    from dead_directions.io import checkpoints

    for step in (0, 5):
        checkpoints.save(
            zoo.build_mlp("h4", seed=step), out / "state" / "h4" / f"w-{step}.safetensors"
        )
    save_file({"input": zoo.get_family("mlp").probe(n=64)}, str(out / "mlp-probe.safetensors"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layout", choices=["trainer", "cache", "state", "all"], default="all")
    args = parser.parse_args(argv)
    chosen = {"trainer", "cache", "state"} if args.layout == "all" else {args.layout}
    args.out.mkdir(parents=True, exist_ok=True)
    if chosen & {"trainer", "cache"}:
        write_neox_runs(args.out, chosen)
    if "state" in chosen:
        write_state_dicts(args.out)
    print(f"example training run written under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
