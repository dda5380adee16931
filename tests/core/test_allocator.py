"""The read's allocator setting: freed activation memory stays in the process."""

import platform
import subprocess
import sys

import pytest

import dead_directions.core.read  # noqa: F401  (the module, for its chunk rule)

read_module = sys.modules["dead_directions.core.read"]

FAULTS = """
import resource, sys, torch
if sys.argv[1] == "retain":
    from dead_directions.core.allocator import retain_freed_memory
    assert retain_freed_memory()
x = torch.empty(1 << 20, dtype=torch.float64)  # 8 MiB: above glibc's default mmap threshold
x.fill_(1.0)
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.empty(1 << 20, dtype=torch.float64)
    x.fill_(1.0)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _minor_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retained_memory_is_not_faulted_in_again():
    # 10 × 8 MiB written afresh: 2048 pages of 4 KiB each time glibc gave the block back
    # (measured: 8 of 10 times by default; retained, at most the one heap growth).
    assert _minor_faults("default") >= 5 * 2048
    assert _minor_faults("retain") <= 2048 + 64


def test_chunk_rule_keeps_a_given_budget_and_raises_the_default():
    per_pair = 9 << 20
    assert read_module._chunk_for(per_pair, 160, 64 << 20) == 7
    assert read_module._chunk_for(per_pair, 160, 64 << 20, min_pairs=24) == 24
    assert read_module._chunk_for(per_pair, 10, 64 << 20, min_pairs=24) == 10
    # Never above the cap per call, whatever the floor.
    huge = 100 << 20
    assert read_module._chunk_for(huge, 160, 64 << 20, min_pairs=24) == 5
    assert read_module._chunk_for(huge, 160, 1 << 20, min_pairs=0) == 1
