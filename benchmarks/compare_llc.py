"""Closed-form vs assembled (from reads) vs devinterp's SGLD LLC: assembly cells, mlp zoo.

Runs ``dead-directions compare-llc`` and writes the table, with the machine it ran on, to
``docs/compare_llc.md``. devinterp is an optional benchmark dependency:

    .venv/bin/pip install --no-deps devinterp==2.0.1 && .venv/bin/pip install datasets

(``--no-deps``: its requirements would otherwise be free to replace torch 2.13.0.)
Default: the non-RRR cells and every RRR cell with M, N, H ≤ 2 (23 rows, about 6 minutes
on 2 CPU cores; ``--all`` for every assembly cell, 69 rows), then the step-3000
checkpoints of the default ``mlp`` family at h4, h8, h16 (trained by the zoo in a temporary
directory unless ``--checkpoints ROOT`` holds them; ``--zoo none`` skips them). Not part of
the test suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dead_directions.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "docs" / "compare_llc.md"
    sys.exit(main(["compare-llc", "--out", str(out), *sys.argv[1:]]))
