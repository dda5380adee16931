"""Families declared in a sweep config: checkpoints a user brings, with their own builder,
layout, probe data, likelihood, output and layer patterns (no zoo family needed).

A declared family is a config entry (``families.NAME`` in the sweep config; the schema is
``workflow/schemas/config.schema.yaml``)::

    builder: hf                  # hf (Hugging Face directories), module:function, or a zoo name
    task: causal-lm              # hf only: base, causal-lm, sequence-classification,
                                 #          image-classification (which Auto class builds it)
    checkpoints: runs/{size}/checkpoint-{step}     # a pattern over {size} and {step}, or
    # checkpoints: {hf_cache: ~/.cache/huggingface/hub, repo: ORG/NAME-{size},
    #               revision: "step{step}"}        # a local Hugging Face cache, by revision
    probe: {path: probe.txt, kind: text, length: 32, n: 64}
    likelihood: categorical      # gaussian or categorical
    output: logits               # the model output's attribute read (logits,
                                 # last_hidden_state, ...), or "tensor"
    layers: ["gpt_neox.layers.*.mlp.*"]            # globs over module names, or auto

Nothing here downloads: Hugging Face files are read with ``local_files_only``; weights go
through ``dd.checkpoints.load_state`` (safetensors, or ``torch.load(weights_only=True)``).
``module:function`` builders come from the user's own config, never from a file.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from dead_directions import detectors, zoo
from dead_directions.io import checkpoints
from dead_directions.io.layout import Layout, LayoutError, parse_layout

BUILDERS = ("hf",)
TASKS = {
    "base": "AutoModel",
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}
PROBE_KINDS = ("text", "tensor", "images", "datasets")
LIKELIHOODS = ("gaussian", "categorical")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TENSOR_OUTPUT = "tensor"


class DeclarationError(ValueError):
    """A declared family's config entry that cannot work; the message names the key."""

    def __init__(self, family: str, key: str, message: str):
        super().__init__(f"config: families.{family}.{key}: {message}")


@dataclass(frozen=True)
class DeclaredFamily:
    """A model family declared in the sweep config (see the module docstring).

    Offers what the sweep's jobs need of a family: :meth:`load` (a checkpoint into a float64
    model), :meth:`probe` (the probe inputs), :attr:`likelihood`, :attr:`output` (a callable
    taking the model's output to the tensor the likelihood reads, or None) and
    :meth:`select_layers`.
    """

    name: str
    builder: str
    layout: Layout
    sizes: tuple[str, ...]
    likelihood: str = "gaussian"
    task: str = "base"
    output_name: str | None = None
    probe_path: str | None = None
    probe_kind: str = "tensor"
    probe_length: int = 32
    probe_n: int | None = None
    tokenizer: str | None = None
    layer_patterns: tuple[str, ...] | None = None
    extra: Mapping = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, spec: Mapping) -> DeclaredFamily:
        """The declared family ``name`` from its config entry; ``DeclarationError`` names the
        key of a value that cannot work (the schema has checked types already)."""
        builder = spec.get("builder")
        if not isinstance(builder, str) or not builder:
            raise DeclarationError(name, "builder", "required for a declared family")
        if builder not in BUILDERS:
            try:
                checkpoints.get_builder(builder)  # the user's own config: may import
            except ValueError as err:
                raise DeclarationError(name, "builder", str(err)) from None
        task = spec.get("task", "base")
        if task not in TASKS:
            raise DeclarationError(name, "task", f"{task!r} is not one of {', '.join(TASKS)}")
        # one checkpoint read by hand (`dead-directions read`) needs no layout
        layout = _layout(name, spec["checkpoints"]) if "checkpoints" in spec else Layout()
        likelihood = spec.get("likelihood", "gaussian")
        if likelihood not in LIKELIHOODS:
            raise DeclarationError(
                name, "likelihood", f"{likelihood!r} is not one of {LIKELIHOODS}"
            )
        probe = dict(spec.get("probe") or {})
        kind = probe.get("kind", "tensor")
        if kind not in PROBE_KINDS:
            raise DeclarationError(name, "probe.kind", f"{kind!r} is not one of {PROBE_KINDS}")
        path = probe.get("path")
        if path is None:
            raise DeclarationError(name, "probe.path", "required: the probe data file or folder")
        if not Path(os.path.expanduser(path)).exists():
            raise DeclarationError(name, "probe.path", f"{path} does not exist")
        layers = spec.get("layers", "auto")
        output = spec.get("output")
        if output is None and builder == "hf":
            output = "logits" if likelihood == "categorical" else "last_hidden_state"
        return cls(
            name=name,
            builder=builder,
            layout=layout,
            sizes=tuple(str(s) for s in spec.get("sizes", ())),
            likelihood=likelihood,
            task=task,
            output_name=None if output in (None, TENSOR_OUTPUT) else str(output),
            probe_path=str(path),
            probe_kind=kind,
            probe_length=int(probe.get("length", 32)),
            probe_n=probe.get("n"),
            tokenizer=probe.get("tokenizer"),
            layer_patterns=None if layers == "auto" else tuple(layers),
        )

    # -------------------------------------------------------------------- checkpoints
    def checkpoint(self, size: str, step: int) -> Path:
        """The checkpoint path of ``(size, step)`` (which need not exist)."""
        return self.layout.path(size, step)

    def steps_on_disk(self, size: str) -> list[int]:
        """The steps of ``size`` whose checkpoint exists, ascending."""
        return self.layout.steps_on_disk(size)

    def load(self, path, size: str) -> tuple[nn.Module, dict]:
        """``(float64 model in eval mode, meta)`` of the checkpoint at ``path``.

        ``builder: hf``: the task's Auto class loads the folder (eager attention, no
        download, no remote code, safetensors or ``weights_only`` files: transformers' own
        loader, which also maps renamed and tied weights); otherwise
        ``dd.checkpoints.load(path, builder=..., size=size)``. Raises ``CheckpointError``
        naming the file.
        """
        path = Path(path)
        if not path.exists():
            raise checkpoints.CheckpointError(path, "no such file or directory.")
        if self.builder != "hf":
            model, meta = checkpoints.load(path, builder=self.builder, size=size)
            meta.setdefault("family", self.name)
            return model, meta
        model = self._load_hf(path)
        return model.eval(), {"family": self.name, "size": size, "path": str(path), "format": "hf"}

    def _load_hf(self, directory: Path) -> nn.Module:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers  # lazy: transformers is heavy and only Hugging Face models need it

        if not (directory / "config.json").is_file():
            raise checkpoints.CheckpointError(
                directory, "no config.json: not a Hugging Face folder."
            )
        auto = getattr(transformers, TASKS[self.task])
        try:
            return auto.from_pretrained(
                str(directory),
                local_files_only=True,
                trust_remote_code=False,
                attn_implementation="eager",
                dtype=torch.float64,
            )
        except (OSError, ValueError, KeyError) as err:
            raise checkpoints.CheckpointError(
                directory, f"{TASKS[self.task]} cannot load it ({err})."
            ) from None

    # ------------------------------------------------------------------------ outputs
    @property
    def output(self) -> Callable | None:
        """The model output → the tensor the likelihood reads (None: the output itself)."""
        if self.output_name is None:
            return None
        return OutputField(self.output_name)

    def select_layers(self, model: nn.Module) -> list[str]:
        """The sweep layers of ``model``: ``dd.detectors.layers(model)`` (auto), or those
        matching a pattern; ``DeclarationError`` for a pattern that matches none."""

        names = detectors.layers(model)
        if self.layer_patterns is None:
            return names
        chosen = []
        for pattern in self.layer_patterns:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise DeclarationError(
                    self.name,
                    "layers",
                    f"{pattern!r} matches none of the model's layers ({', '.join(names[:12])}"
                    f"{', …' if len(names) > 12 else ''})",
                )
            chosen += [n for n in hits if n not in chosen]
        return [n for n in names if n in chosen]

    # -------------------------------------------------------------------------- probe
    def probe(self, n: int | None = None, seed: int = 0, tokenizer_from=None):
        """The probe inputs: a tensor, or a dict of tensors (text: ``input_ids`` and
        ``attention_mask`` of fixed length ``probe.length``). ``n`` (default ``probe.n``,
        else all) keeps the first ``n`` examples; ``seed`` is unused (the data is given).
        ``tokenizer_from``: a checkpoint directory holding the tokenizer (text probes
        without ``probe.tokenizer``)."""
        n = n if n is not None else self.probe_n
        path = Path(os.path.expanduser(str(self.probe_path)))
        if self.probe_kind == "text":
            inputs = self._text_probe(path, tokenizer_from)
        elif self.probe_kind == "tensor":
            inputs = _tensor_probe(path)
        elif self.probe_kind == "images":
            inputs = _image_probe(path)
        else:
            inputs = _datasets_probe(path)
        return _first(inputs, n)

    def _text_probe(self, path: Path, tokenizer_from) -> dict[str, torch.Tensor]:
        source = self.tokenizer or tokenizer_from
        if source is None:
            raise DeclarationError(
                self.name, "probe.tokenizer", "a text probe needs a tokenizer (a folder)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import (
            AutoTokenizer,
        )  # lazy: transformers is heavy and only Hugging Face models need it

        try:
            tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        except (OSError, ValueError) as err:
            raise DeclarationError(
                self.name, "probe.tokenizer", f"no tokenizer in {source} ({err})"
            ) from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise DeclarationError(self.name, "probe.path", f"{path} holds no text lines")
        enc = tok(
            lines,
            padding="max_length",
            truncation=True,
            max_length=self.probe_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def check(fam: DeclaredFamily, size: str, step: int) -> list[str]:
    """Check a declared family on its checkpoint ``(size, step)`` before a sweep runs: the
    checkpoint loads, the probe loads and the model takes it, the output field exists, and
    every layer pattern matches. Returns the selected layers; raises
    :class:`DeclarationError` naming the key at fault (or ``CheckpointError``)."""
    path = fam.checkpoint(size, step)
    model, _ = fam.load(path, size)
    try:
        inputs = _first(fam.probe(tokenizer_from=path), 2)
    except DeclarationError:
        raise
    except Exception as err:  # any failure to read the probe data is the probe's fault
        raise DeclarationError(fam.name, "probe", f"cannot read {fam.probe_path} ({err})") from None
    try:
        with torch.no_grad():
            out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    except Exception as err:  # the model cannot take these inputs
        raise DeclarationError(
            fam.name,
            "probe",
            f"the model cannot take {fam.probe_path} ({type(err).__name__}: {err})",
        ) from None
    if fam.output is not None:
        try:
            fam.output(out)
        except ValueError as err:
            raise DeclarationError(fam.name, "output", str(err)) from None
    elif not isinstance(out, torch.Tensor):
        raise DeclarationError(
            fam.name, "output", f"the model returns a {type(out).__name__}: name a field of it"
        )
    return fam.select_layers(model)


class OutputField:
    """Takes one field of a model's output (``out.logits``, ``out["last_hidden_state"]``)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, out):
        if isinstance(out, Mapping) and self.name in out:
            return out[self.name]
        if hasattr(out, self.name):
            value = getattr(out, self.name)
            if value is not None:
                return value
        raise ValueError(
            f"output {self.name!r}: the model's output ({type(out).__name__}) has no such "
            "tensor; set the family's `output` to one it returns (e.g. logits, "
            "last_hidden_state) or `tensor`."
        )

    def __repr__(self) -> str:
        return f"OutputField({self.name!r})"


def _layout(name: str, value) -> Layout:
    try:
        return parse_layout(value)
    except LayoutError as err:
        raise DeclarationError(name, err.key, err.message) from None


def _first(inputs, n: int | None):
    if n is None:
        return inputs
    if isinstance(inputs, Mapping):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def _tensor_probe(path: Path):
    if path.suffix == ".safetensors":
        tensors = load_file(str(path))
        return tensors["input"] if set(tensors) == {"input"} else tensors
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor | Mapping):
        raise ValueError(f"probe data {path}: holds a {type(obj).__name__}, not tensors.")
    return obj


def _image_probe(path: Path) -> torch.Tensor:
    """A folder of image files (RGB, pixel / 255, ``(N, 3, H, W)`` float64), or one array
    file taken as stored: float pixels already scaled and laid out as the model takes them.
    An integer array is raw pixels — their scale and layout are the user's to choose, so
    it is refused rather than guessed."""
    if path.is_file():
        images = _tensor_probe(path)
        if isinstance(images, torch.Tensor) and not images.is_floating_point():
            raise ValueError(
                f"probe data {path}: an image array of {images.dtype} {tuple(images.shape)} "
                "(raw pixels). An array file is taken as stored: save float pixels, scaled "
                "and laid out as the model takes them (e.g. x / 255 as N×C×H×W), or give "
                "a folder of image files (read as RGB, pixel / 255, N×3×H×W)."
            )
        return images
    from PIL import Image  # lazy: Pillow only for image-folder probes

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"probe data {path}: no images ({', '.join(IMAGE_SUFFIXES)}).")
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255.0 for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"probe data {path}: images of different sizes {sorted(shapes)}.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _datasets_probe(path: Path) -> dict[str, torch.Tensor]:
    try:
        import datasets  # lazy: optional (the `bench` extra / datasets probes)
    except ImportError:
        raise ValueError(
            "probe.kind datasets needs the `datasets` package (pip install datasets)."
        ) from None
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        data = data[sorted(data)[0]]
    # the whole split as a batch: a column of equal-length rows is one tensor (a column of a
    # dataset is a lazy `Column` in datasets >= 4, never a tensor)
    batch = data.with_format("torch")[:]
    ragged = [
        k for k, v in batch.items() if isinstance(v, list) and v and isinstance(v[0], torch.Tensor)
    ]
    if ragged:
        raise ValueError(
            f"probe data {path}: columns {ragged} have rows of different lengths; pad them to "
            "one length (with an attention_mask) before save_to_disk."
        )
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"probe data {path}: no numeric columns to feed the model (columns "
            f"{data.column_names})."
        )
    return tensors


def is_declared(spec: Mapping) -> bool:
    """Whether a family's config entry declares its own builder (not a zoo family)."""
    return "builder" in spec


def resolve(name: str, spec: Mapping | None):
    """The family of a sweep job: the declared family when ``spec`` declares a builder,
    else the zoo family ``name``."""
    if spec and is_declared(spec):
        return DeclaredFamily.from_config(name, spec)

    return zoo.get_family(name)


def declared_steps(spec: Mapping, size: str, name: str = "family") -> Sequence[int]:
    """The steps of a declared family's size: the config's, else those found on disk."""
    fam = DeclaredFamily.from_config(name, spec)
    return list(spec.get("steps") or fam.steps_on_disk(size))
