"""Where a declared family's checkpoints lie: a path pattern over ``{size}`` and ``{step}``,
or a local Hugging Face hub cache whose revisions are named by step.

Standard library only: the workflow loads this file when it is parsed, to find the steps on
disk without importing the package (and torch).
"""

from __future__ import annotations

import glob
import os
import re
import string
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
