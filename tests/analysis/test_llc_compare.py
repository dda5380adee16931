"""compare-llc: devinterp's chain diagnostics, and the tables in the docs are the code's."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dead_directions.analysis import llc_compare
from dead_directions.analysis.llc_compare import diagnose

ROOT = Path(__file__).resolve().parents[2]


def _result(trace, init=0.0):
    """A stand-in for devinterp's ``llc`` result: ``loss_trace`` (chain, step), ``init_loss``."""
    return xr.Dataset(
        {"loss_trace": (("chain", "step"), np.asarray(trace, float)), "init_loss": init}
    )


def test_diagnose_recomputes_devinterp_llc_and_flags_failures():
    gen = np.random.default_rng(0)
    nb = 10.0
    # Stationary: 4 chains of white noise around 0.2 above the init loss → λ̂ = nβ·0.2 = 2.
    steady = 0.2 + 0.01 * gen.standard_normal((4, 400))
    mean, std, drift, problems = diagnose(_result(steady), d=8, n_beta=nb)
    assert mean == pytest.approx(nb * steady.mean(axis=1).mean(), rel=1e-12)
    assert std == pytest.approx(nb * steady.mean(axis=1).std(), rel=1e-12)
    assert problems == () and abs(drift) < 0.05
    # The same noise on a ramp rising by 0.1 (nβ·0.1 = 1 over the draws): drifting.
    ramp = steady + np.linspace(0.0, 0.1, 400)[None]
    *_, problems = diagnose(_result(ramp), d=8, n_beta=nb)
    assert any(p.startswith("drifting trace") for p in problems)
    # Above d/2, below 0, diverged.
    assert diagnose(_result(steady), d=2, n_beta=nb)[3] == ("λ̂ > d/2 = 1",)
    assert diagnose(_result(steady, init=1.0), d=8, n_beta=nb)[3] == ("λ̂ < 0",)
    broken = steady.copy()
    broken[1, 50:] = np.inf
    assert diagnose(_result(broken), d=8, n_beta=nb)[3] == ("diverged",)


def test_a_failed_estimate_is_printed_as_failed():
    ok = llc_compare.LLCEstimate(1.0, 0.1, 2.0, "lr 0.001, γ 1")
    bad = llc_compare.LLCEstimate(49.4, 12.0, 2.0, "lr 0.001, γ 0", problems=("λ̂ > d/2 = 15",))
    assert ok.ok and ok.cell() == "1.000 ± 0.100"
    assert not bad.ok and bad.cell() == "failed: λ̂ > d/2 = 15 (49.400 ± 12.000)"


def _table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the assembly-cell table in compare-llc's Markdown output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| cell "))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cols[0]] = cols
    return rows


@pytest.fixture(scope="module")
def columns():
    """d, closed form, structured and blind (λ, m) with errors of every default cell."""
    return {c.name: llc_compare.assembly_columns(c) for c in llc_compare.default_cells()}


@pytest.mark.parametrize("doc", ["docs/compare_llc.md", "README.md"])
def test_printed_structured_and_blind_values_are_what_the_code_computes(doc, columns):
    """Every row of the assembly-cell table in the docs: d, closed form, structured and
    blind (λ, m) with their relative errors are regenerated here and must match the text
    exactly (the devinterp columns need devinterp and are not rerun in CI)."""
    text = (ROOT / doc).read_text()
    if doc == "README.md":
        text = text.split("<!-- compare-llc cells -->")[1].split("<!-- /compare-llc cells -->")[0]
    rows = _table_rows(text)
    assert set(rows) == set(columns), sorted(set(rows) ^ set(columns))
    for name, want in columns.items():
        assert rows[name][1:9] == want, name


def test_no_devinterp_estimate_above_d_half_without_a_failure_flag():
    """In the docs and the README every devinterp λ̂ of the comparison tables is at most
    d/2 of its row, or its entry starts with "failed"."""
    for doc in ("docs/compare_llc.md", "README.md"):
        for line in (ROOT / doc).read_text().splitlines():
            if not line.startswith("| ") or "±" not in line:
                continue
            cols = [c.strip() for c in line.strip().strip("|").split("|")]
            d_col = cols[1] if cols[1].isdigit() else None
            if d_col is None:
                continue
            for col in cols:
                if col.startswith("failed") or "(failed" in col:
                    continue
                for m in re.finditer(r"(-?\d+(?:\.\d+)?) ± \d", col):
                    if float(m.group(1)) > int(d_col) / 2:
                        pytest.fail(f"{doc}: {cols[0]}: {col} above d/2 = {int(d_col) / 2}")


@pytest.mark.skipif(
    not __import__("importlib.util").util.find_spec("devinterp"),
    reason="devinterp (bench extra) is not installed",
)
def test_devinterp_run_is_diagnosed():
    """A devinterp run with a far too large step size on a regular cell is flagged (its
    chains diverge or leave the d/2 bound), never tabulated as a result."""
    import copy

    import torch

    import dead_directions as dd

    cell = next(c for c in dd.constructed_assembly.assembly_cells() if c.name == "regular-linear")
    model = copy.deepcopy(cell.model)
    x, y = llc_compare._cell_data(cell, cell.point(), 256, 0)
    est = llc_compare.llc_on_data(
        model, x, y, "gaussian", dict(lr=0.5, num_chains=2, num_draws=50), seed=0
    )
    assert not est.ok and est.cell().startswith("failed")
    assert math.isnan(est.mean) or est.mean > 4 or "diverged" in est.problems
    for p, q in zip(model.parameters(), cell.model.parameters(), strict=True):
        assert torch.equal(p, q)  # devinterp moved a copy, not the model


def test_cached_estimates_round_trip(tmp_path):
    calls = []
    est = llc_compare.LLCEstimate(
        0.5, 0.1, 3.0, "lr 0.01, γ 1", 0.02, ("drifting trace (+0.30)",), ((0.01, 1.0, 0.5, ()),)
    )

    def compute():
        calls.append(1)
        return est

    first = llc_compare._cached(tmp_path, "cell", 0, compute)
    again = llc_compare._cached(tmp_path, "cell", 0, compute)
    other = llc_compare._cached(tmp_path, "cell", 1, compute)  # another seed: recomputed
    assert first == again == other == est and len(calls) == 2
    assert llc_compare._cached(None, "cell", 0, compute) == est and len(calls) == 3


def test_the_printed_counts_are_those_of_the_table():
    """The "Counted over the … cells" sentence of docs/compare_llc.md is ``summary_line`` of
    the table above it, and the README carries the same sentence."""
    doc = (ROOT / "docs/compare_llc.md").read_text()
    rows = list(_table_rows(doc).values())
    line = next(x for x in doc.splitlines() if x.startswith("Counted over the"))
    assert line == llc_compare.summary_line(rows)
    assert line in (ROOT / "README.md").read_text()
