"""Where a declared family's checkpoints lie: a path pattern over ``{size}`` and ``{step}``,
or a local Hugging Face hub cache whose revisions are named by step.

Standard library only: the workflow loads this file when it is parsed, to find the steps on
disk without importing the package (and torch).
"""

from __future__ import annotations

import glob
import json
import os
import re
import string
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path


def pattern_fields(pattern: str) -> set[str]:
    """The ``{fields}`` of a format pattern."""
    return {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}


@dataclass(frozen=True)
class Layout:
    """Where a declared family's checkpoints lie.

    ``pattern``: a path over ``{size}`` and ``{step}`` (a file, or a directory such as the
    Hugging Face Trainer's ``checkpoint-{step}``). Or ``hf_cache`` (the hub cache folder),
    ``repo`` (``ORG/NAME``, may hold ``{size}``) and ``revision`` (over ``{step}``, default
    ``step{step}``): the snapshot a ``refs/{revision}`` file names, as the Hugging Face hub
    lays out revisions (e.g. Pythia's ``step{step}`` branches).
    """

    pattern: str | None = None
    hf_cache: str | None = None
    repo: str | None = None
    revision: str = "step{step}"

    def path(self, size: str, step: int) -> Path:
        """The checkpoint of ``(size, step)`` (which need not exist)."""
        if self.pattern is not None:
            return Path(os.path.expanduser(self.pattern.format(size=size, step=int(step))))
        repo_dir = self._repo_dir(size)
        ref = repo_dir / "refs" / self.revision.format(step=int(step))
        try:
            commit = ref.read_text().strip()
        except OSError:
            return repo_dir / "snapshots" / f"(no ref {ref.name})"
        return repo_dir / "snapshots" / commit

    def _repo_dir(self, size: str) -> Path:
        repo = str(self.repo).format(size=size)
        return Path(os.path.expanduser(str(self.hf_cache))) / ("models--" + repo.replace("/", "--"))

    def steps_on_disk(self, size: str) -> list[int]:
        """The steps whose checkpoint exists for ``size``, ascending."""
        if self.pattern is not None:
            pattern = os.path.expanduser(self.pattern)
            glob_parts, regex_parts = [], []
            for literal, name, _, _ in string.Formatter().parse(pattern):
                glob_parts.append(glob.escape(literal))
                regex_parts.append(re.escape(literal))
                if name == "size":
                    glob_parts.append(glob.escape(size))
                    regex_parts.append(re.escape(size))
                elif name == "step":
                    glob_parts.append("*")
                    regex_parts.append(r"(\d+)")
            regex = re.compile("".join(regex_parts) + r"\Z")
            steps = set()
            for found in glob.glob("".join(glob_parts)):
                m = regex.match(found)
                # every {step} of the pattern must name the same step
                if m is not None and len(set(m.groups())) == 1:
                    steps.add(int(m.group(1)))
            return sorted(steps)
        refs = self._repo_dir(size) / "refs"
        regex = re.compile(re.escape(self.revision).replace(r"\{step\}", r"(\d+)") + r"\Z")
        steps = set()
        if refs.is_dir():
            for ref in refs.iterdir():
                m = regex.match(ref.name)
                if m and self.path(size, int(m.group(1))).exists():
                    steps.add(int(m.group(1)))
        return sorted(steps)


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable safetensors file (its header), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name}: {size} bytes, shorter than a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name}: its header claims {n} bytes, the file has {size - 8} after it"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as err:
        return f"{path.name}: unreadable safetensors header ({err})"
    if not isinstance(header, dict):
        return f"{path.name}: the safetensors header is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if ends and max(ends) > size - 8 - n:
        return f"{path.name}: truncated ({size - 8 - n} data bytes, the header needs {max(ends)})"
    return None


def _torch_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable torch state dict (zip archive), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        return f"{path.name}: not a torch zip archive ({err})"
    return f"{path.name}: corrupt member {bad}" if bad else None


def unreadable(path: str | os.PathLike) -> str | None:
    """Why the checkpoint at ``path`` cannot be read, or None when it looks readable.

    Cheap checks with the standard library only (the workflow runs them for every
    checkpoint when it is parsed): a safetensors file's header and data length, a torch
    file's zip archive, a Hugging Face folder's ``config.json`` and weights. A checkpoint
    that passes may still fail to load (a shape that does not fit the model); that fails
    its own job, naming the tensor."""
    path = Path(path)
    if path.is_dir():
        try:
            json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as err:
            return f"config.json unreadable ({err})"
        for index in HF_INDEX_FILES:
            if (path / index).is_file():
                try:
                    shards = set(json.loads((path / index).read_text())["weight_map"].values())
                except (OSError, ValueError, KeyError, AttributeError) as err:
                    return f"{index} unreadable ({err})"
                for shard in sorted(shards):
                    problem = unreadable(path / shard)
                    if problem:
                        return problem
                return None
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return unreadable(path / name)
        return f"no weights ({' or '.join(HF_WEIGHT_FILES + HF_INDEX_FILES)})"
    if not path.is_file():
        return "not on disk"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in TORCH_SUFFIXES:
        return _torch_problem(path)
    return None


class LayoutError(ValueError):
    """A checkpoint layout that cannot work; ``key`` is the config key under the family."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


def parse_layout(value) -> Layout:
    """The :class:`Layout` of a family's ``checkpoints`` config value: a pattern string, or a
    mapping ``{hf_cache, repo, revision}``. Raises :class:`LayoutError` naming the key."""
    if isinstance(value, str):
        fields = pattern_fields(value)
        if "step" not in fields:
            raise LayoutError(
                "checkpoints", f"the pattern {value!r} has no {{step}} (e.g. checkpoint-{{step}})"
            )
        unknown = fields - {"size", "step"}
        if unknown:
            raise LayoutError("checkpoints", f"unknown fields {sorted(unknown)} in {value!r}")
        return Layout(pattern=value)
    if isinstance(value, dict) and "hf_cache" in value:
        repo = value.get("repo")
        if not repo:
            raise LayoutError("checkpoints.repo", "required with hf_cache (ORG/NAME)")
        revision = value.get("revision", "step{step}")
        if "step" not in pattern_fields(revision):
            raise LayoutError("checkpoints.revision", f"{revision!r} has no {{step}}")
        return Layout(hf_cache=str(value["hf_cache"]), repo=str(repo), revision=str(revision))
    raise LayoutError(
        "checkpoints",
        "a declared family needs a pattern over {size} and {step}, or {hf_cache, repo, revision}",
    )
