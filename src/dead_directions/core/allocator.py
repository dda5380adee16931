"""Process-level memory allocator settings for reading on CPU (glibc ``malloc``).

The read allocates and frees the same few activation tensors (megabytes each) once per
vmapped chunk of (direction, radius) pairs. glibc hands blocks above its mmap threshold
straight back to the kernel on ``free`` and trims the heap top above its trim threshold,
so every chunk page-faults its activations in again: about a third of the CPU time of a
read of the zoo's vit (benchmarks/bench_read.py). Keeping freed memory in the process
removes that. The setting is process-wide and only ever raises the thresholds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed mmap threshold on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30

_retained: bool | None = None


def retain_freed_memory() -> bool:
    """Keep freed blocks up to 32 MiB, and up to 1 GiB of free heap top, in the process.

    Returns ``True`` when glibc accepted the settings (once per process; later calls
    return the first result), ``False`` on other C libraries, where nothing changes.
    """
    global _retained
    if _retained is None:
        _retained = _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and _mallopt(
            _M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES
        )
    return _retained


def _mallopt(option: int, value: int) -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(ctypes.c_int(option), ctypes.c_int(value)))
    except (OSError, AttributeError):
        return False
