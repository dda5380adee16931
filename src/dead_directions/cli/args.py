"""Argument values shared by several commands."""

from __future__ import annotations

from pathlib import Path


def step_path(item: str, option: str, *, step_required: bool = True) -> tuple[int | None, Path]:
    """``STEP=PATH`` (or, unless ``step_required``, a bare ``PATH``) as ``(step, path)``.

    ``option`` names the argument in the error. Raises ``ValueError`` when the step is not
    a non-negative integer or the path is empty (``step_required``)."""
    step, sep, path = item.partition("=")
    if sep and step.isdigit() and path:
        return int(step), Path(path)
    if step_required:
        raise ValueError(f"{option}: expected STEP=PATH, got {item!r}.")
    return None, Path(item)
