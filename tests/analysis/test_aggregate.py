"""Aggregation, tables, figures and report over a synthetic store: the numbers, checked."""

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import dead_for, keys, reads_for, write

from dead_directions.analysis import aggregate, report
from dead_directions.core.direction import KINDS

CELLS = keys(families=("mlp",), sizes=("s", "m"), steps=(0, 10, 20), layers=("fc1", "fc2"))


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    path = tmp_path_factory.mktemp("agg") / "s.zarr"
    write(path, CELLS, dead=True)
    return path, aggregate.aggregate(path, "threads")


def _matches(kind, order, r):
    return kind == r.predicted_kind and (
        math.isinf(r.predicted_order) or abs(order - r.predicted_order) <= 0.05
    )


def _expected(reads, base_tol=1e-3):
    finite = [r.order for r in reads if math.isfinite(r.order)]
    predicted = [r for r in reads if r.predicted_kind is not None]
    based = [r for r in predicted if math.isfinite(r.base_distance)]
    return {
        "n_directions": len(reads),
        **{f"n_{k}": sum(r.kind == k for r in reads) for k in KINDS},
        "n_dead": sum(r.kind in ("singular", "gauge") for r in reads),
        "order_min": min(finite, default=math.nan),
        "order_median": float(np.median(finite)) if finite else math.nan,
        "order_q25": float(np.quantile(finite, 0.25)) if finite else math.nan,
        "order_max": max(finite, default=math.nan),
        "n_predicted": len(predicted),
        # recovery at the checkpoint: the read there (the twin read for a based direction)
        "n_recovered": sum(_matches(r.checkpoint_kind, r.checkpoint_order, r) for r in predicted),
        "n_based": len(based),
        # at the base: only where the base is within base_tol (1e-3 itself counts)
        "n_recovered_base": sum(
            _matches(r.kind, r.order, r) and r.base_distance <= base_tol for r in based
        ),
        "n_off_locus": sum(r.base_distance > base_tol for r in based),
    }


def _dead(cells):
    dead = [dead_for(k) for k in cells]
    total, params = sum(d.dead for d in dead), sum(d.n_params for d in dead)
    return {"dead_dim": total, "layer_params": params, "dead_fraction": total / params}


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
        _check(row, _dead([key]))


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
            _check(row, _dead([k for k in CELLS if (k.size, k.step) == (size, step)]))
            assert row["recovery"] == pytest.approx(want["n_recovered"] / want["n_predicted"])
            if want["n_based"]:
                assert row["recovery_base"] == pytest.approx(
                    want["n_recovered_base"] / want["n_based"]
                )


def test_recovery_at_the_base_depends_on_base_tol(summary):
    """The same store at base_tol 1e-2: every base (1e-4 … 1e-2 away) is on the locus."""
    path, frame = summary
    wide = aggregate.aggregate(path, "threads", base_tol=1e-2)
    pooled = wide[wide["layer"] == "all"]
    reads = [r for k in CELLS for r in reads_for(k)]
    loose, strict = _expected(reads, 1e-2), _expected(reads, 1e-3)
    assert int(pooled["n_off_locus"].sum()) == loose["n_off_locus"] == 0
    assert int(pooled["n_recovered_base"].sum()) == loose["n_recovered_base"]
    narrow = frame[frame["layer"] == "all"]
    assert int(narrow["n_off_locus"].sum()) == strict["n_off_locus"] > 0
    assert int(narrow["n_recovered_base"].sum()) == strict["n_recovered_base"]
    assert strict["n_recovered_base"] < loose["n_recovered_base"]
    assert set(wide["base_tol"]) == {1e-2} and set(frame["base_tol"]) == {1e-3}
    with pytest.raises(ValueError, match="base_tol"):
        aggregate.aggregate(path, "threads", base_tol=-1.0)


def test_a_local_cluster_gives_the_same_numbers(summary):
    path, frame = summary
    other = aggregate.aggregate(path, {"kind": "local", "n_workers": 2, "processes": False})
    pd.testing.assert_frame_equal(other, frame)


def test_tables_have_steps_as_rows_and_sizes_as_columns(summary, tmp_path):
    _, frame = summary
    written = aggregate.write_tables(frame, "mlp", *aggregate.table_paths(tmp_path, "mlp"))
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
    pngs = report.figures(
        frame, path, "mlp", report.figure_paths(tmp_path / "fig"), checkpoint=("m", 10)
    )
    assert [p.name for p in pngs] == [f"{n}.png" for n in report.FIGURES]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    md, html = report.write_report(frame, {"mlp": tmp_path / "fig"}, tmp_path / "report.md")
    text = md.read_text()
    assert text.count("![") == 4 and "## mlp" in text
    n_dirs = sum(len(reads_for(k)) for k in CELLS)
    assert f"{len(CELLS)} cells" in text and f"{n_dirs} detector directions read" in text
    assert html.read_text().count("data:image/png;base64,") == 4
    # The report opens with the dead-dimension figure and its headline table.
    first = text.index("![")
    assert "dead_dimension.png" in text[first : text.index("\n", first)]
    assert text.index("## Dead dimension") < first < text.index("**mlp: dead_fraction**")
    assert text.index("**mlp: dead_fraction**") < text.index("## mlp")
    assert "lam_sum" not in text and "λ =" not in text and "Σ 1/(2k̂)" not in text


def test_dead_dimension_table_from_the_stored_counts(summary, tmp_path):
    """The headline table (dead dimension / parameters, step × size, all layers pooled)
    equals Σ dead_dim / Σ layer_params of the store's cells, and states how it is counted;
    no λ is tabulated."""
    from dead_directions.io import store

    path, frame = summary
    ds = store.open(path)
    aggregate.write_tables(frame, "mlp", *aggregate.table_paths(tmp_path, "mlp"))
    assert not (tmp_path / "mlp" / "lam_sum.csv").exists()
    csv = pd.read_csv(tmp_path / "mlp" / "dead_fraction.csv", index_col=[0, 1])
    text = (tmp_path / "mlp.md").read_text()
    headline = text.split("## dead_fraction")[1].split("## n_dead")[0]
    assert "lam_sum" not in text and "λ" not in headline
    section = text.split("## dead_fraction: ")[1].split("\n## ")[0]
    assert "K-FAC" in section and "1e-10" in section and "probe" in section
    table_rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in section.splitlines()
        if line.startswith("|") and line.split("|")[1].strip().isdigit()
    }
    for size_index, size in enumerate(("m", "s")):
        for step in (0, 10, 20):
            cell = ds.sel(family="mlp", size=size, step=step)
            want = float(cell["dead_dim"].sum()) / float(cell["layer_params"].sum())
            assert csv.loc[("all", step), size] == pytest.approx(want, rel=1e-12)
            assert table_rows[str(step)][size_index] == f"{100 * want:.1f} %"
            for layer in ("fc1", "fc2"):
                key = store.CellKey("mlp", size, step, layer)
                assert int(cell["dead_dim"].sel(layer=layer)) == dead_for(key).dead
                assert str(cell["dead_dim_method"].sel(layer=layer).values) == "exact"


def test_a_store_without_the_dead_dimension_arrays_is_named(tmp_path):
    """A store created before the dead dimension existed: writing to it names the problem."""
    import shutil

    from synthetic import PROVENANCE

    from dead_directions.io import store

    path = tmp_path / "old.zarr"
    write(path, CELLS[:1])
    shutil.rmtree(path / "dead_dim")
    with pytest.raises(ValueError, match="older version"):
        store.write_cell(path, CELLS[1], reads_for(CELLS[1]), PROVENANCE)
