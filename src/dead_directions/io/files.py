"""Writing files so that readers never see half of one, and the one JSON encoding of
non-finite numbers that every file of the package uses."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Strict JSON has no NaN or infinity: they are written as these strings, which ``float``
# reads back (``from_json`` restores them).
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_json(value: Any) -> Any:
    """A strict-JSON copy of ``value``: non-finite floats as ``"nan"``/``"inf"``/``"-inf"``,
    mappings with string keys, tuples and sets as lists, paths as strings, numpy/torch
    scalars as Python numbers; anything else as its ``str``."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [to_json(v) for v in items]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):
        return to_json(value.item())
    return str(value)


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json` for numbers: ``"nan"``/``"inf"``/``"-inf"`` become
    floats again, in mappings and lists too."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, Mapping):
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`to_json` (strict: no NaN literals)."""
    return json.dumps(to_json(value), allow_nan=False, **kwargs)


def loads(text: str) -> Any:
    """``json.loads`` followed by :func:`from_json`."""
    return from_json(json.loads(text))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(tmp)`` on a temporary file beside it, then rename it
    into place: readers see the old file or the whole new one, never a part. Parent folders
    are created; the temporary file is removed when ``write`` raises. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`), synced to disk before
    the rename so that a crash leaves the old file or the new one."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)
