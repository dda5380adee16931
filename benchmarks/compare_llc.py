"""Closed form vs structured / blind assembly vs calibrated devinterp LLC: cells, mlp zoo.

Runs ``dead-directions compare-llc`` and writes the table, with the machine it ran on, to
``docs/compare_llc.md``. devinterp is an optional benchmark dependency:

    .venv/bin/pip install --no-deps devinterp==2.0.1 && .venv/bin/pip install datasets

(``--no-deps``: its requirements would otherwise be free to replace torch 2.13.0.)
Default: every assembly cell (84 rows: the non-RRR cells, devinterp's normal-crossing
and monomial-sum cases, every RRR cell with M, N, H ≤ 3; ``--small`` keeps RRR with
M, N, H ≤ 2), then the step-3000 checkpoints of the default ``mlp`` family at h4, h8, h16
(trained by the zoo in a temporary directory unless ``--checkpoints ROOT`` holds them;
``--zoo none`` skips them). devinterp is calibrated per row (``llc_compare.calibrated_llc``),
about 30–90 s a row on one core; ``--cache DIR`` stores each estimate, so runs restricted
with ``--cells`` can fill it side by side and a final whole run reads it back. Not part of
the test suite (``tests/analysis/test_llc_compare.py`` checks the written tables' structured and
blind columns against the code).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dead_directions.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "docs" / "compare_llc.md"
    sys.exit(main(["compare-llc", "--out", str(out), *sys.argv[1:]]))
