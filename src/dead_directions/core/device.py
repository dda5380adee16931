"""The torch device and dtype of a read: names to torch objects, with named errors."""

from __future__ import annotations

import torch

# The package's default dtype on the CPU: every model, direction and read is float64
# unless a caller asks otherwise (float32 only on CUDA, checked against float64).
DTYPE = torch.float64

DTYPES = ("auto", "float64", "float32")


def resolve_device(device: str = "auto"):
    """The torch device for ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.

    Raises ``ValueError`` for a device name torch does not know or a CUDA device this
    machine does not have.
    """

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: not a device name ({err}).") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise ValueError(
                f"--device {device}: this machine has {count} CUDA device(s); use auto (CUDA "
                "when present, else CPU) or cpu."
            )
    return chosen


def torch_dtype(name: str):
    """``None`` for ``"auto"`` (the device decides), else the torch dtype."""

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}.")
    return None if name == "auto" else getattr(torch, name)
