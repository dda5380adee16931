"""Aggregation, tables, figures and report over a synthetic store: the numbers, checked."""

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import keys, reads_for, write

from dead_directions import aggregate, report
from dead_directions.direction import KINDS

CELLS = keys(families=("mlp",), sizes=("s", "m"), steps=(0, 10, 20), layers=("fc1", "fc2"))


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    path = tmp_path_factory.mktemp("agg") / "s.zarr"
    write(path, CELLS)
    return path, aggregate.aggregate(path, "threads")


def _expected(reads):
    finite = [r.order for r in reads if math.isfinite(r.order)]
    predicted = [r for r in reads if r.matches_prediction is not None]
    return {
        "n_directions": len(reads),
        **{f"n_{k}": sum(r.kind == k for r in reads) for k in KINDS},
        "n_dead": sum(r.kind in ("singular", "gauge") for r in reads),
        "order_min": min(finite, default=math.nan),
        "order_median": float(np.median(finite)) if finite else math.nan,
        "order_q25": float(np.quantile(finite, 0.25)) if finite else math.nan,
        "order_max": max(finite, default=math.nan),
        "n_predicted": len(predicted),
        "n_recovered": sum(bool(r.matches_prediction) for r in predicted),
        "lam_sum": sum(r.lam for r in reads if r.kind != "unresolved"),
    }


def _check(row, want):
    for name, value in want.items():
        got = row[name]
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got), name
        else:
            assert got == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_per_cell_metrics_equal_a_direct_count(summary):
    _, frame = summary
    assert list(frame.columns) == list(aggregate.COLUMNS)
    assert len(frame) == len(CELLS) + 2 * 3  # one pooled row per checkpoint
    for key in CELLS:
        row = frame[
            (frame["size"] == key.size)
            & (frame["step"] == key.step)
            & (frame["layer"] == key.layer)
        ].iloc[0]
        _check(row, _expected(reads_for(key)))


def test_pooled_metrics_pool_the_layers_of_a_checkpoint(summary):
    _, frame = summary
    for size in ("s", "m"):
        for step in (0, 10, 20):
            reads = [r for k in CELLS if (k.size, k.step) == (size, step) for r in reads_for(k)]
            row = frame[
                (frame["size"] == size) & (frame["step"] == step) & (frame["layer"] == "all")
            ].iloc[0]
            want = _expected(reads)
            _check(row, want)
            assert row["recovery"] == pytest.approx(want["n_recovered"] / want["n_predicted"])


def test_a_local_cluster_gives_the_same_numbers(summary):
    path, frame = summary
    other = aggregate.aggregate(path, {"kind": "local", "n_workers": 2, "processes": False})
    pd.testing.assert_frame_equal(other, frame)


def test_tables_have_steps_as_rows_and_sizes_as_columns(summary, tmp_path):
    _, frame = summary
    written = aggregate.write_tables(frame, tmp_path)
    assert len(written) == len(aggregate.METRICS) + 1
    dead = pd.read_csv(tmp_path / "mlp" / "n_dead.csv", index_col=[0, 1])
    assert list(dead.columns) == ["m", "s"]  # no zoo order for synthetic sizes: natural
    assert list(dead.loc["all"].index) == [0, 10, 20]
    for key in CELLS:
        want = sum(r.kind in ("singular", "gauge") for r in reads_for(key))
        assert dead.loc[(key.layer, key.step), key.size] == want
    text = (tmp_path / "mlp.md").read_text()
    assert "| step \\ size   | m" in text and "## recovery" in text
    pooled = aggregate.table(frame, "mlp", "n_dead")
    assert aggregate.markdown(pooled, "n_dead").count("\n") == 4  # header, rule, 3 steps


def test_figures_and_report_are_written(summary, tmp_path):
    path, frame = summary
    pngs = report.figures(frame, path, "mlp", tmp_path / "fig", checkpoint=("m", 10))
    assert [p.name for p in pngs] == [f"{n}.png" for n in report.FIGURES]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    md, html = report.write_report(frame, {"mlp": tmp_path / "fig"}, tmp_path / "report.md")
    text = md.read_text()
    assert text.count("![") == 3 and "## mlp" in text
    n_dirs = sum(len(reads_for(k)) for k in CELLS)
    assert f"{len(CELLS)} cells" in text and f"{n_dirs} directions read" in text
    assert html.read_text().count("data:image/png;base64,") == 3


def test_lambda_table_per_checkpoint_from_the_stored_orders(summary, tmp_path):
    """λ per checkpoint (step × size) = Σ 1/(2k) of the orders stored in the zarr store
    (gauges k = ∞ → 0, unresolved NaN left out) = ``dd.assemble`` of them; the Markdown
    table says so and states its assumptions."""
    import dead_directions as dd
    from dead_directions import store

    path, frame = summary
    ds = store.open(path)
    aggregate.write_tables(frame, tmp_path)
    csv = pd.read_csv(tmp_path / "mlp" / "lam_sum.csv", index_col=[0, 1])
    text = (tmp_path / "mlp.md").read_text()
    section = text.split("## lam_sum: ")[1].split("\n## ")[0]
    assert section.startswith("λ per checkpoint, assembled over the read directions")
    for phrase in (
        "independent",
        "gauges (k̂ = ∞) contribute 0",
        "unresolved reads are left out",
        "lower bound",
        "only the read directions count",
    ):
        assert phrase in section, phrase
    table_rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in section.splitlines()
        if line.startswith("|") and line.split("|")[1].strip().isdigit()
    }
    assert sorted(table_rows, key=int) == ["0", "10", "20"]
    for size_index, size in enumerate(("m", "s")):
        for step in (0, 10, 20):
            cell = ds.sel(family="mlp", size=size, step=step)
            orders = cell["order"].values[cell["label"].values != ""]
            want = sum(0.0 if np.isinf(k) else 1 / (2 * k) for k in orders if not np.isnan(k))
            pairs = [(f"u{i}", k) for i, k in enumerate(orders) if not np.isnan(k)]
            assert dd.assemble(pairs).lam_measured == pytest.approx(want, rel=1e-12)
            assert csv.loc[("all", step), size] == pytest.approx(want, rel=1e-12)
            assert table_rows[str(step)][size_index] == f"{want:.2f}"
