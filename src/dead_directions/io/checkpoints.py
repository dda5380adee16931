"""Checkpoints: save/load safetensors, torch state dicts and HF directories; external families."""

from __future__ import annotations

import importlib
import json
import os
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dead_directions.io import files
from dead_directions.nn.surgery import narrow_to_shapes

SIDECAR_SUFFIX = ".json"
# Sidecar keys left out of the safetensors header so that two runs give identical bytes.
VOLATILE_KEYS = ("seconds",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its builder.

    ``path`` is the offending file or directory; ``tensor`` the mismatching tensor's name
    (None when the whole file is at fault).
    """

    def __init__(self, path, message: str, tensor: str | None = None):
        self.path = Path(path)
        self.tensor = tensor
        where = f"{self.path}" + (f", tensor {tensor!r}" if tensor else "")
        super().__init__(f"checkpoint {where}: {message}")


# ---------------------------------------------------------------------------------- save
def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a checkpoint file: same stem, ``.json``."""
    return Path(path).with_suffix(SIDECAR_SUFFIX)


def dumps(meta: Mapping) -> str:
    """Canonical JSON of a metadata mapping (sorted keys; non-finite numbers as
    :func:`dead_directions.io.files.to_json` writes them)."""
    return files.dumps(dict(meta), sort_keys=True, indent=2)


def save(model: nn.Module | Mapping[str, torch.Tensor], path, meta: Mapping | None = None) -> Path:
    """Write ``model``'s state dict as safetensors at ``path`` plus a JSON sidecar.

    ``meta`` (JSON-serialisable) goes to the sidecar ``path.with_suffix('.json')`` and,
    without the volatile keys (``seconds``), into the safetensors header under
    ``"dead_directions"``; the tensor file is therefore byte-identical for identical
    weights and metadata. Both files are written atomically. Returns ``path``.
    """

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save: checkpoint path must end in .safetensors, got {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    meta = dict(meta or {})
    header_meta = {k: v for k, v in meta.items() if k not in VOLATILE_KEYS}
    # One header key only: safetensors writes its metadata map in hash order, so two keys
    # would make the bytes differ between processes.
    header = {"dead_directions": dumps(header_meta)}
    files.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    text = dumps(meta) + "\n"
    files.write_text_atomic(sidecar_path(path), text)
    return path


# ---------------------------------------------------------------------------------- read
def read_meta(path) -> dict:
    """A checkpoint's metadata: its JSON sidecar, else its safetensors header, else ``{}``."""
    path = Path(path)
    side = sidecar_path(path)
    if path.suffix != SIDECAR_SUFFIX and side.is_file():
        try:
            return files.loads(side.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(side, f"the JSON sidecar is unreadable ({err}).") from err
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(path, f"not a readable safetensors file ({err}).") from err
        if "dead_directions" in header:
            try:
                return files.loads(header["dead_directions"])
            except ValueError:
                return {}
    return {}


def _hf_weight_files(directory: Path) -> list[Path]:
    for index_name in HF_INDEX_FILES:
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as err:
                raise CheckpointError(index, f"unreadable shard index ({err}).") from err
            return [directory / s for s in shards]
    for name in HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(
        directory,
        f"a Hugging Face directory needs one of {', '.join(HF_WEIGHT_FILES + HF_INDEX_FILES)}.",
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:

    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, OSError, ...: all mean an unusable file
        raise CheckpointError(path, f"not a readable safetensors file ({err}).") from err


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError ...
        raise CheckpointError(
            path, f"not a loadable torch state dict (weights_only=True) ({err})."
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict.")
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(path, f"holds a {type(v).__name__}, not a tensor.", str(k))
    return dict(obj)


def load_state(path) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint: safetensors, torch state dict, or HF directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file or directory.")
    if path.is_dir():
        state: dict[str, torch.Tensor] = {}
        for f in _hf_weight_files(path):
            if not f.is_file():
                raise CheckpointError(f, "shard named in the index is missing.")
            state.update(load_state(f))
        return state
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _load_torch(path)
    # Unknown suffix: try safetensors first (no code can run), then a weights-only state dict.
    try:
        return _load_safetensors(path)
    except CheckpointError:
        return _load_torch(path)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path, label: str) -> nn.Module:
    """Copy ``state`` into ``model`` (strict), casting floating tensors to the model's dtype.

    Raises :class:`CheckpointError` naming ``path`` and the first tensor that is missing,
    unknown to the model (non-persistent buffers excepted), or of the wrong shape. Non-finite
    values are loaded as they are (``dd.read`` rejects them).
    """
    own = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    for name in state:
        if name not in own and name not in buffers:
            raise CheckpointError(
                path, f"is not a parameter or buffer of {label} (unknown tensor name).", name
            )
    for name, target in own.items():
        if name not in state:
            raise CheckpointError(path, f"{label} needs it but the checkpoint lacks it.", name)
        got = state[name]
        if tuple(got.shape) != tuple(target.shape):
            raise CheckpointError(
                path,
                f"shape {tuple(got.shape)} in the checkpoint, {label} expects "
                f"{tuple(target.shape)}.",
                name,
            )
        if got.is_floating_point() != target.is_floating_point():
            raise CheckpointError(
                path, f"dtype {got.dtype} in the checkpoint, {label} expects {target.dtype}.", name
            )
    converted = {
        name: state[name].to(dtype=target.dtype, device=target.device)
        for name, target in own.items()
    }
    model.load_state_dict(converted, strict=True)
    return model


# ------------------------------------------------------------------------------- builders
Builder = Callable[[str], nn.Module]
BUILDERS: dict[str, Builder] = {}
# Model families a checkpoint may name: objects with ``name``, ``sizes`` and
# ``build(size)`` (the zoo's families). The zoo registers its own when it is imported (and
# the package imports the zoo), so this I/O layer never imports the zoo above it.
FAMILIES: dict[str, Any] = {}


def register_family(family: Any) -> Any:
    """Register ``family`` (``name``, ``sizes``, ``build(size)``) for :func:`load` and
    :func:`get_builder`; returns it."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Any:
    """The registered family ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}.") from None


def register_builder(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``fn(size) -> nn.Module`` under ``name`` for :func:`load`."""

    def deco(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return deco


def get_builder(name: str | Builder, *, allow_import: bool = True) -> Builder:
    """A builder by name: registered builders, zoo family names, or ``"module:function"``.

    ``"module:function"`` imports ``module`` and takes its attribute ``function`` (no
    evaluation of strings); a callable is returned as it is. ``allow_import=False`` refuses
    ``"module:function"``: use it for names read from a file (a checkpoint's sidecar or
    header), which are untrusted and may only name registered builders and zoo families.
    Raises ``ValueError`` for an unknown name, a refused import, or a non-callable target.
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise ValueError(f"builder must be a name or a callable, got {type(name).__name__}.")
    if name in BUILDERS:
        return BUILDERS[name]
    if name in FAMILIES:
        return FAMILIES[name].build
    known = sorted({*BUILDERS, *FAMILIES})
    if ":" in name and not allow_import:
        raise ValueError(
            f"builder {name!r} comes from a file and names a Python import; builders read "
            f"from checkpoint metadata may only be one of {', '.join(known)}. Pass the "
            "builder yourself (family=/builder= or --family) if you trust it."
        )
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"builder {name!r}: cannot import it ({err}).") from err
        if not callable(fn):
            raise ValueError(f"builder {name!r} is not callable.")
        return fn
    raise ValueError(
        f"unknown builder {name!r}; use one of {', '.join(known)} or 'module:function'."
    )


@register_builder("hf")
def build_hf(directory: str) -> nn.Module:
    """A Hugging Face model from ``directory``'s config (float64, eager attention, no weights)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import (
        AutoConfig,
        AutoModel,
    )  # lazy: transformers is heavy and only Hugging Face models need it

    config = AutoConfig.from_pretrained(
        str(directory), attn_implementation="eager", local_files_only=True
    )
    return AutoModel.from_config(config, dtype=torch.float64).eval()


def load(
    path,
    family=None,
    builder: str | Builder | None = None,
    *,
    size: str | None = None,
    override_family: bool = False,
) -> tuple[nn.Module, dict]:
    """Load a checkpoint into a freshly built float64 model: ``(model in eval mode, meta)``.

    ``path``: a ``.safetensors`` file, a torch state dict (``.pt``/``.pth``/``.bin``, read
    with ``weights_only=True``), or a Hugging Face directory (``config.json`` + weights).
    The model comes from ``builder(size)`` (a name for :func:`get_builder` or a callable),
    else ``family.build(size)`` (a zoo family, its name, or a builder name), else the
    sidecar's ``family``; a Hugging Face directory with none of these is built from its own
    config. ``size`` defaults to the sidecar's. ``meta`` is the sidecar (or header) plus
    ``path``/``format``. A pruned checkpoint (sidecar ``pruned.shapes``, written by
    ``dead-directions prune``) loads the same way: the built model is narrowed to the saved
    shapes first.

    The file's metadata is untrusted: a family named there resolves only against registered
    builders and zoo families (never ``"module:function"``, which would import code), and a
    ``family`` given here that contradicts the sidecar's is refused unless
    ``override_family=True`` (reading with another family's architecture or activation gives
    numbers of a different model).

    Errors: :class:`CheckpointError` naming the file and the mismatching tensor or field.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file or directory.")
    meta = dict(read_meta(path)) if path.is_file() else {}
    fmt = "hf" if path.is_dir() else ("safetensors" if path.suffix == ".safetensors" else "torch")
    size = size if size is not None else meta.get("size")
    if size is not None and not isinstance(size, str):
        size = str(size)
    from_file = False
    if builder is None and family is None:
        family = meta.get("family")
        from_file = family is not None
        if family is None and not path.is_dir():
            raise CheckpointError(
                path, "no family or builder given and no sidecar naming the family."
            )
        if from_file and not isinstance(family, str):
            raise CheckpointError(path, f"the sidecar's family is not a name: {family!r}.")
    elif isinstance(family, str) and builder is None and not override_family:
        recorded = meta.get("family")
        if isinstance(recorded, str) and recorded and recorded != family:
            raise CheckpointError(
                path,
                f"its sidecar says family {recorded!r}, but family {family!r} was asked for; "
                "read it as its own family, or pass override_family=True "
                "(--override-family) if you mean to load these weights into another "
                "family's architecture.",
            )
    if builder is not None:
        build = get_builder(builder)
        label = getattr(builder, "__name__", str(builder))
    elif isinstance(family, str) and family not in FAMILIES:
        try:
            build = get_builder(family, allow_import=not from_file)
        except ValueError as err:
            raise CheckpointError(path, str(err)) from None
        label = f"builder {family!r}"
    elif family is not None:
        fam = get_family(family) if isinstance(family, str) else family
        build, label = fam.build, f"family {fam.name!r}"
        size = size if size is not None else (fam.sizes[0] if len(fam.sizes) == 1 else None)
    else:
        build, label, size = build_hf, "its Hugging Face config", str(path)
    if size is None:
        raise CheckpointError(path, f"no size given for {label} and none in the sidecar.")
    if from_file and build is build_hf:
        # the hf builder reads a directory named by its size: a sidecar may not point it
        # at another directory
        raise CheckpointError(
            path, "the sidecar names the 'hf' builder; give builder='hf' and the directory."
        )
    state = load_state(path)
    try:
        model = build(size)
    except (KeyError, ValueError) as err:
        raise CheckpointError(path, f"{label} cannot build size {size!r} ({err}).") from err
    label = f"{label} size {size!r}" if label != "its Hugging Face config" else label
    pruned = meta.get("pruned")
    shapes = pruned.get("shapes") if isinstance(pruned, Mapping) else None
    if shapes:
        # a pruned checkpoint (dead_directions.prune.save_pruned): narrow the built model's
        # Linear/Conv/BatchNorm modules to the saved shapes, then load strictly as usual
        if not isinstance(shapes, Mapping):
            raise CheckpointError(path, "the sidecar's pruned.shapes is not a mapping.")
        try:
            model = narrow_to_shapes(model, shapes)
        except ValueError as err:
            raise CheckpointError(path, f"cannot narrow {label} ({err}).") from err
        label = f"pruned {label}"
    load_into(model, state, path, label)
    meta.update(path=str(path), format=fmt)
    return model.eval(), meta


# ------------------------------------------------------------------------------ external
def _pattern_parts(pattern: str) -> tuple[str, re.Pattern]:
    """(glob, regex) for a path pattern over ``{size}`` and ``{step}`` (format specs allowed)."""
    glob, regex = [], []
    for literal, field, _spec, _conv in string.Formatter().parse(pattern):
        glob.append(literal.replace("[", "[[]"))
        regex.append(re.escape(literal))
        if field is None:
            continue
        if field not in ("size", "step"):
            raise ValueError(f"path pattern {pattern!r}: unknown field {{{field}}}.")
        glob.append("*")
        group = "size" if field == "size" else "step"
        if f"(?P<{group}>" in "".join(regex):
            regex.append(f"(?P={group})")
        else:
            regex.append(r"(?P<size>[^/]+)" if field == "size" else r"(?P<step>\d+)")
    return "".join(glob), re.compile("".join(regex) + r"\Z")


@dataclass(frozen=True)
class ExternalFamily:
    """Checkpoints the user brings: files or HF directories at ``pattern.format(size, step)``.

    ``builder`` names how to build the module for a size (see :func:`get_builder`);
    ``sizes``/``steps`` restrict what :meth:`checkpoints` enumerates (None: whatever matches
    on disk). ``likelihood`` and ``output`` are passed to the read.
    """

    name: str
    pattern: str
    builder: str
    sizes: tuple[str, ...] | None = None
    steps: tuple[int, ...] | None = None
    likelihood: str = "gaussian"
    output: Callable | None = None

    def path(self, size: str, step: int) -> Path:
        """The checkpoint path for ``(size, step)``."""
        return Path(self.pattern.format(size=size, step=int(step)))

    def checkpoints(self) -> list[tuple[str, int, Path]]:
        """``(size, step, path)`` for every checkpoint, sorted by size order then step.

        With ``sizes`` and ``steps`` given, every combination is listed (existing or not:
        loading a missing one raises); otherwise the pattern is globbed on disk.
        """
        has_size, has_step = "{size" in self.pattern, "{step" in self.pattern
        if (self.sizes is not None or not has_size) and (self.steps is not None or not has_step):
            sizes = self.sizes if self.sizes is not None else ("",)
            steps = self.steps if self.steps is not None else (0,)
            return [(s, int(t), self.path(s, t)) for s in sizes for t in steps]
        glob, regex = _pattern_parts(self.pattern)
        root = Path(glob).anchor or "."
        rel = glob[len(root) :] if Path(glob).is_absolute() else glob
        found: list[tuple[str, int, Path]] = []
        for p in Path(root).glob(rel):
            m = regex.match(str(p) if Path(glob).is_absolute() else os.path.relpath(p, root))
            if m is None:
                continue
            size = m.groupdict().get("size", "")
            step = int(m.groupdict().get("step") or 0)
            if self.sizes is not None and size not in self.sizes:
                continue
            if self.steps is not None and step not in self.steps:
                continue
            found.append((size, step, p))
        order = {s: i for i, s in enumerate(self.sizes or ())}
        return sorted(found, key=lambda r: (order.get(r[0], len(order)), r[0], r[1]))

    def load(self, size: str, step: int) -> tuple[nn.Module, dict]:
        """Load ``(size, step)`` with this family's builder; see :func:`load`."""
        path = self.path(size, step)
        model, meta = load(path, builder=self.builder, size=size)
        meta.setdefault("family", self.name)
        meta.setdefault("size", size)
        meta.setdefault("step", int(step))
        return model, meta


def external_family(entry: Mapping) -> ExternalFamily:
    """An :class:`ExternalFamily` from a config entry ``{name, pattern, builder, sizes?, steps?,
    likelihood?}``."""
    missing = [k for k in ("name", "pattern", "builder") if k not in entry]
    if missing:
        raise ValueError(f"external family entry lacks {', '.join(missing)}: {dict(entry)!r}.")
    unknown = set(entry) - {"name", "pattern", "builder", "sizes", "steps", "likelihood"}
    if unknown:
        raise ValueError(f"external family {entry['name']!r}: unknown keys {sorted(unknown)}.")
    _pattern_parts(str(entry["pattern"]))  # validates the fields
    sizes = entry.get("sizes")
    steps = entry.get("steps")
    return ExternalFamily(
        name=str(entry["name"]),
        pattern=str(entry["pattern"]),
        builder=str(entry["builder"]),
        sizes=tuple(str(s) for s in sizes) if sizes is not None else None,
        steps=tuple(int(s) for s in steps) if steps is not None else None,
        likelihood=str(entry.get("likelihood", "gaussian")),
    )


def iter_checkpoints(root, family: str, size: str | None = None) -> Iterator[tuple[str, int, Path]]:
    """``(size, step, path)`` of the zoo checkpoints under ``root/family`` in step order."""
    base = Path(root) / family
    sizes: Sequence[str] = [size] if size is not None else sorted(p.name for p in base.iterdir())
    for s in sizes:
        for p in sorted((base / s).glob("step*.safetensors")):
            yield s, int(p.stem[4:]), p
