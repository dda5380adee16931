"""`dead-directions timing`: per-rule sums and the sweep's wall time from benchmark files."""

import os
import subprocess
import sys

import pytest

from dead_directions.analysis import timing

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, seconds, cpu, end):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t1\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    os.utime(path, (end, end))


def test_rules_sums_and_wall_time(tmp_path):
    # measure jobs: [100, 110] and [105, 125]; detect [90, 100]; aggregate.tsv [125, 130]
    _bench(tmp_path / "measure" / "mlp" / "a.tsv", 10.0, 4.0, 1_000_110)
    _bench(tmp_path / "measure" / "mlp" / "b.tsv", 20.0, 6.5, 1_000_125)
    _bench(tmp_path / "detect" / "mlp" / "a.tsv", 10.0, 9.0, 1_000_100)
    _bench(tmp_path / "aggregate.tsv", 5.0, "NA", 1_000_130)
    t = timing.summarise(timing.read_benchmarks(tmp_path))
    assert [r.rule for r in t.rules] == ["measure", "detect", "aggregate"]
    measure = t.rules[0]
    assert (measure.jobs, measure.seconds, measure.cpu_seconds, measure.max_seconds) == (
        2,
        30.0,
        10.5,
        20.0,
    )
    assert measure.mean_seconds == 15.0
    assert t.job_seconds == 45.0 and t.cpu_seconds == 19.5
    assert t.wall_seconds == pytest.approx(40.0)  # 1_000_090 → 1_000_130
    text = timing.format_table(t)
    assert "| measure" in text and "66.7%" in text and "Sweep wall time: 40 s" in text


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        timing.read_benchmarks(tmp_path / "missing")
    with pytest.raises(ValueError, match="no benchmark files"):
        timing.read_benchmarks(tmp_path)
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a Snakemake benchmark file"):
        timing.read_benchmarks(tmp_path)


def test_cli_prints_the_split(tmp_path):
    _bench(tmp_path / "train" / "mlp" / "h4.tsv", 3.0, 2.0, 1_000_003)
    out = subprocess.run(
        [sys.executable, "-m", "dead_directions.cli", "timing", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| train" in out and "Sweep wall time: 3 s" in out
