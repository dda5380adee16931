"""The Snakemake sweep on the tiny config: end to end, resume, extend, bad inputs, concurrency."""

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from safetensors.torch import load_file, save_file

from dead_directions.analysis import aggregate
from dead_directions.io import artefacts, store

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
TINY = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
CELLS = [store.CellKey("mlp", "h4", step, layer) for step in (0, 30) for layer in ("fc1", "fc2")]
VOLATILE = [v.name for v in store.PROVENANCE_VARIABLES] + ["seconds"]
DATA = [v.name for v in store.LABEL_VARIABLES + store.DATA_VARIABLES if v.name != "seconds"]


def snakemake(workdir: Path, config: dict, *extra: str, timeout: int = 900, log: str = "run"):
    """Run the sweep in ``workdir`` with ``config``; output goes to ``workdir/{log}.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / f"{log}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = workdir / f"{log}.log"
    with open(out, "w") as fh:
        proc = subprocess.run(
            _command(workdir, cfg, extra),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            timeout=timeout,
        )
    return proc.returncode, out.read_text()


def _command(workdir: Path, cfg: Path, extra) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(cfg),
        "--cores",
        "2",
        "--workflow-profile",
        str(ROOT / "workflow" / "profiles" / "default"),
        *extra,
    ]


def jobs_run(text: str) -> set[tuple]:
    """(rule, wildcards) of every job a Snakemake log says it ran."""
    out, rule = set(), None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line.strip())
        if m:
            rule = m.group(1)
            out.add((rule, ""))
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and rule:
            out.discard((rule, ""))
            out.add((rule, m.group(1)))
            rule = None
    return out


def stores_equal(a: Path, b: Path) -> None:
    """Same cells, same values (provenance and timings aside)."""
    x = store.open(a, chunks=None).load().drop_vars(VOLATILE)
    y = store.open(b, chunks=None).load().drop_vars(VOLATILE)
    xr.testing.assert_identical(x, y)


def data_chunks(path: Path) -> dict:
    """Chunk bytes of every data (not provenance) array, per completed cell label."""
    out = {}
    for key, index in store.done_cells(path).items():
        files = {}
        for name in DATA:
            base = path / name / "c" / str(index)
            found = sorted(p for p in [base, *base.rglob("*")] if p.is_file())
            files[name] = b"".join(p.read_bytes() for p in found)
        out[key] = files
    return out


@contextlib.contextmanager
def _exclusive(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny sweep, run once per test session (shared by pytest-xdist workers)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id:
        base = tmp_path_factory.getbasetemp().parent / f"tiny-sweep-{run_id}"
        base.mkdir(exist_ok=True)
    else:
        base = tmp_path_factory.mktemp("tiny-sweep")
    workdir = base / "run"
    with _exclusive(base / "lock"):
        if not (workdir / "done.json").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            started = time.perf_counter()
            rc, text = snakemake(workdir, TINY)
            seconds = time.perf_counter() - started
            (workdir / "done.json").write_text(json.dumps({"rc": rc, "seconds": seconds}))
    info = json.loads((workdir / "done.json").read_text())
    assert info["rc"] == 0, (workdir / "run.log").read_text()[-4000:]
    return workdir


def kill_during_measure(work: Path, config: dict, settle: float, timeout: float = 900) -> None:
    """Start the sweep of ``config`` in ``work`` and SIGKILL its whole process group
    ``settle`` seconds after the first measure job started (inside its read); the log is
    ``work/killed.log``."""
    cfg = work / "killed.yaml"
    cfg.write_text(yaml.safe_dump(config))
    with open(work / "killed.log", "w") as fh:
        proc = subprocess.Popen(
            _command(work, cfg, ()),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not list((work / "logs" / "measure").rglob("*.log")):
            assert proc.poll() is None, (work / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(settle)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)  # copy2: modification times preserved
    return dst


# --------------------------------------------------------------------------------------


def test_schema_violations_fail_before_any_job_naming_the_key(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["families"]["mlp"]["colour"] = "red"
    rc, text = snakemake(tmp_path / "a", bad, "-n")
    assert rc != 0 and "colour" in text and "Additional properties" in text
    bad = {**TINY, "threads": 0}
    rc, text = snakemake(tmp_path / "b", bad, "-n")
    assert rc != 0 and "threads" in text and "minimum" in text
    bad = json.loads(json.dumps(TINY))
    bad["families"]["mlp"]["steps"] = [0, 20]
    rc, text = snakemake(tmp_path / "c", bad, "-n")
    assert rc != 0 and "families.mlp.steps: steps [20] are not saved by training" in text
    assert not (tmp_path / "c" / "results").exists()


def test_tiny_sweep_end_to_end(tiny_run):
    path = tiny_run / "results" / "store.zarr"
    assert sorted(store.done_cells(path)) == sorted(CELLS)
    ds = store.open(path, chunks=None).load()
    assert ds.sizes == {"family": 1, "size": 1, "step": 2, "layer": 2, "direction": 8, "radius": 13}
    layout = store.layout(path)
    assert layout.max_directions == 8 and len(layout.radii) == 13
    probe, digest = artefacts.load_probe(tiny_run / "results" / "probe" / "mlp.safetensors")
    assert probe.shape[0] == 64
    for key in CELLS:
        cell = store.cell_dataset(path, key)
        found = artefacts.load_directions(
            tiny_run / "results" / "directions" / f"{key.path}.safetensors"
        )
        assert [d.name for d in found] == list(cell["label"].values)
        assert 1 <= len(found) <= 8
        assert np.isfinite(cell["fisher"].values).all()
        kinds = {"regular", "singular", "gauge", "undetermined", "unresolved"}
        assert set(cell["kind"].values) <= kinds
        assert cell["device"].item() == "cpu" and cell["dtype"].item() == "float64"
        assert cell["probe_hash"].item() == digest and cell["git_commit"].item()
        checkpoint = tiny_run / cell["checkpoint"].item()  # relative to the workdir
        assert cell["checkpoint_hash"].item() == store.file_hash(checkpoint)
        for rule in ("detect", "measure"):
            assert (tiny_run / "logs" / rule / f"{key.path}.log").stat().st_size > 0
            bench = tiny_run / "benchmarks" / "out" / rule / f"{key.path}.tsv"
            assert float(bench.read_text().splitlines()[1].split("\t")[0]) > 0
    summary = pd.read_csv(tiny_run / "results" / "summary" / "cells.csv")
    pd.testing.assert_frame_equal(
        summary, aggregate.aggregate(path, "threads"), check_dtype=False, check_exact=False
    )
    regular = pd.read_csv(
        tiny_run / "results" / "tables" / "mlp" / "n_regular.csv", index_col=[0, 1]
    )
    for key in CELLS:
        n = int((store.cell_dataset(path, key)["kind"] == "regular").sum())
        assert regular.loc[(key.layer, key.step), key.size] == n
    for name in ("dead_dimension", "order_heatmap", "direction_counts", "rate_curves"):
        png = tiny_run / "results" / "figures" / "mlp" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
    report = (tiny_run / "results" / "report.md").read_text()
    assert f"{len(CELLS)} cells" in report and "## mlp" in report
    # removable parameters per (size, step), and their step × size table
    pruned = pd.read_csv(tiny_run / "results" / "tables" / "prune" / "mlp.csv", dtype={"size": str})
    records = json.loads((tiny_run / "results" / "prune" / "mlp" / "h4.json").read_text())
    assert [rec["step"] for rec in records] == [0, 30]
    for step, rec in zip((0, 30), records, strict=True):
        assert rec["fraction"] == 1 - rec["params_after"] / rec["params_before"]
        assert rec["params_before"] == 4 * 4 + 4 + 2 * 4 + 2  # mlp h4: 4 → 4 → 2
        row = pruned[(pruned["step"] == step) & (pruned["layer"] == "all")]
        assert float(row["fraction"].item()) == pytest.approx(rec["fraction"], abs=1e-15)
    png = tiny_run / "results" / "figures" / "mlp" / "prune_removable.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "removable parameters" in report
    assert "data:image/png;base64," in (tiny_run / "results" / "report.html").read_text()


def test_sigkill_during_measure_then_rerun_completes_with_the_same_store(tiny_run, tmp_path):
    work = _copy(tiny_run, tmp_path / "resume")
    # As if the sweep had run up to detect: measure and everything after it is to do.
    for sub in (
        *("store.zarr", "store.zarr.ledger", "store.init.json", "summary", "tables"),
        *("figures", "report.md", "report.html"),
    ):
        target = work / "results" / sub
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.rmtree(work / "logs" / "measure")
    kill_during_measure(work, TINY, settle=1.5)
    path = work / "results" / "store.zarr"
    done = store.done_cells(path)
    assert len(done) < len(CELLS)  # killed before the end: the rest is not counted done
    rc, text = snakemake(work, TINY, log="rerun")
    assert rc == 0, text[-4000:]
    assert sorted(store.done_cells(path)) == sorted(CELLS)
    assert sorted(store.registry(path).values()) == list(range(len(CELLS)))  # no duplicates
    stores_equal(path, tiny_run / "results" / "store.zarr")
    ran = {rule for rule, _ in jobs_run(text)}
    assert "train" not in ran and "detect" not in ran  # only what was not done


def test_extending_the_sweep_runs_only_new_jobs_and_keeps_old_cells(tiny_run, tmp_path):
    work = _copy(tiny_run, tmp_path / "extend")
    path = work / "results" / "store.zarr"
    chunks_before = data_chunks(path)
    files_before = {
        str(p.relative_to(path)): p.read_bytes()
        for p in path.rglob("*")
        if p.is_file() and p.name != "zarr.json"
    }
    markers_before = {k: store.marker_path(path, k).read_bytes() for k in CELLS}
    bigger = json.loads(json.dumps(TINY))
    bigger["families"]["mlp"]["steps"] = [0, 10, 30]
    bigger["families"]["mlp"]["sizes"] = ["h4", "h8"]
    rc, text = snakemake(work, bigger, log="extend")
    assert rc == 0, text[-4000:]
    new_cells = [
        ("h4", "0000010"),
        *(("h8", s) for s in ("0000000", "0000010", "0000030")),
    ]
    want = {("train", "family=mlp, size=h8"), ("layers", "family=mlp, size=h8")}
    for size, step in new_cells:
        for layer in ("fc1", "fc2"):
            w = f"family=mlp, size={size}, step={step}, layer={layer}"
            want |= {("detect", w), ("measure", w)}
    want |= {("aggregate", ""), ("tables", "family=mlp"), ("figures", "family=mlp")}
    # removable: one job per size over its steps (h4 reruns: a step was added)
    want |= {("removable", "family=mlp, size=h4"), ("removable", "family=mlp, size=h8")}
    want |= {("prune_tables", "family=mlp"), ("report", ""), ("all", "")}
    assert jobs_run(text) == want
    after = data_chunks(path)
    assert {k: after[k] for k in chunks_before} == chunks_before
    files_after = {
        str(p.relative_to(path)): p.read_bytes()
        for p in path.rglob("*")
        if p.is_file() and p.name != "zarr.json"
    }
    assert {k: files_after[k] for k in files_before} == files_before  # nothing rewritten
    assert {k: store.marker_path(path, k).read_bytes() for k in CELLS} == markers_before
    assert len(store.done_cells(path)) == len(CELLS) + 2 * len(new_cells)
    summary = pd.read_csv(work / "results" / "summary" / "cells.csv", dtype={"size": str})
    assert set(summary["size"]) == {"h4", "h8"} and set(summary["step"]) == {0, 10, 30}
    rc, text = snakemake(work, bigger, "-n", log="again")
    assert rc == 0 and "Nothing to be done" in text


def test_bad_checkpoints_fail_their_own_jobs_naming_the_cause(tiny_run, tmp_path):
    work = tmp_path / "bad"
    ckpts = work / "given"
    ckpts.mkdir(parents=True)
    trained = tiny_run / "results" / "checkpoints" / "mlp" / "h4"
    good = ckpts / "good.safetensors"
    shutil.copy(trained / "step0000030.safetensors", good)
    shutil.copy(trained / "step0000030.json", ckpts / "good.json")
    (ckpts / "corrupt.safetensors").write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    state = load_file(str(good))
    state["fc2.weight"] = state["fc2.weight"].clone()
    state["fc2.weight"][0, 0] = torch.nan
    save_file(state, str(ckpts / "nan.safetensors"))
    shutil.copy(trained / "step0000030.json", ckpts / "nan.json")
    given = {0: good, 10: ckpts / "missing.safetensors", 20: ckpts / "corrupt.safetensors"}
    given[30] = ckpts / "nan.safetensors"
    config = json.loads(json.dumps(TINY))
    mlp = config["families"]["mlp"]
    mlp.pop("train")
    mlp["steps"] = [0, 10, 20, 30]
    mlp["layers"] = ["fc2"]
    mlp["checkpoints"] = {"h4": {str(k): str(v) for k, v in given.items()}}
    rc, text = snakemake(work, config, "--keep-going", log="bad")
    assert rc != 0

    def logs(step):
        cell = f"mlp/h4/step{step:07d}/fc2.log"
        return "".join(
            p.read_text()
            for rule in ("detect", "measure")
            if (p := work / "logs" / rule / cell).exists()
        )

    assert "missing.safetensors" in logs(10) and "does not exist" in logs(10)
    assert "corrupt.safetensors" in logs(20)
    assert "NaN" in logs(30) and "fc2.weight" in logs(30)
    path = work / "results" / "store.zarr"
    assert list(store.done_cells(path)) == [store.CellKey("mlp", "h4", 0, "fc2")]
    assert store.cell_dataset(path, store.CellKey("mlp", "h4", 0, "fc2")).sizes["direction"] > 0


def test_four_measure_jobs_at_once_write_what_the_workflow_wrote(tiny_run, tmp_path):
    reference = tiny_run / "results" / "store.zarr"
    path = tmp_path / "store.zarr"
    layout = store.layout(reference)
    store.init(path, max_directions=layout.max_directions, radii=layout.radii)
    results = tiny_run / "results"
    procs = []
    for key in reversed(CELLS):
        cmd = [
            str(BIN / "dead-directions"),
            "measure",
            *("--family", key.family, "--size", key.size, "--step", str(key.step)),
            *("--layer", key.layer, "--store", str(path), "--threads", "1"),
            "--checkpoint",
            str(results / "checkpoints" / "mlp" / "h4" / f"step{key.step:07d}.safetensors"),
            *("--probe", str(results / "probe" / "mlp.safetensors"), "--device", "cpu"),
            *("--directions", str(results / "directions" / f"{key.path}.safetensors")),
        ]
        procs.append(
            subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert sorted(store.done_cells(path)) == sorted(CELLS)
    stores_equal(path, reference)
    assert data_chunks(path) == data_chunks(reference)  # byte for byte, cell by cell


def test_lint_and_formatting_are_clean():
    lint = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--lint"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_read_one_checkpoint_prints_a_table_and_writes_a_store(tiny_run, tmp_path):
    checkpoint = tiny_run / "results" / "checkpoints" / "mlp" / "h4" / "step0000030.safetensors"
    out = subprocess.run(
        [
            str(BIN / "dead-directions"),
            "read",
            str(checkpoint),
            *("--family", "mlp", "--layers", "fc2", "--detectors", "random", "kfac"),
            *("--max-per-layer", "2", "--probe-n", "64", "--threads", "1"),
            *("--store", str(tmp_path / "one.zarr"), "--max-directions", "8"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| fc2")]
    assert len(rows) == 4 and "4 directions in 1 layers" in out.stdout
    key = store.CellKey("mlp", "h4", 30, "fc2")  # size and step from the sidecar
    cell = store.cell_dataset(tmp_path / "one.zarr", key)
    assert sorted(cell["detector"].values) == ["kfac", "kfac", "random", "random"]
    reference = store.cell_dataset(tiny_run / "results" / "store.zarr", key)
    assert sorted(cell["label"].values) == sorted(reference["label"].values)


# --------------------------------------------------------------- untrusted config, guards
def _no_job_ran(workdir: Path) -> bool:
    return not (workdir / "results" / "checkpoints").exists() and not (workdir / "logs").exists()


def test_config_strings_never_reach_a_shell(tmp_path):
    pwned = tmp_path / "pwned"
    cases = {}
    bad = json.loads(json.dumps(TINY))
    bad["families"]["mlp"]["layers"] = ["fc1", f"$(touch {pwned})"]
    cases["layers"] = bad
    bad = json.loads(json.dumps(TINY))
    bad["dask"] = {"kind": "threads", "memory": f"auto'$(touch {pwned})'"}
    cases["memory"] = bad
    bad = json.loads(json.dumps(TINY))
    bad["families"]["mlp"].pop("train")
    bad["families"]["mlp"]["checkpoints"] = {
        "h4": {"0": f"ckpt$(touch {pwned})", "30": "ckpt.safetensors"}
    }
    cases["checkpoints"] = bad
    cases["results"] = {**TINY, "results": f"results;touch {pwned}"}
    cases["store"] = {**TINY, "store": f"store`touch {pwned}`.zarr"}
    for name, config in cases.items():
        work = tmp_path / name
        rc, text = snakemake(work, config)
        assert rc != 0, text[-3000:]
        assert "Error validating config file" in text and name in text, text[-3000:]
        assert not pwned.exists(), name
        assert _no_job_ran(work) and not (work / "results").exists(), name


def test_paths_reach_the_shell_quoted(tmp_path):
    config = {**TINY, "results": "my results", "store": "my store.zarr"}
    rc, text = snakemake(tmp_path / "quoted", config, "-n", "-p")
    assert rc == 0, text[-3000:]
    assert "--manifest 'my results/checkpoints/mlp/h4/manifest.json'" in text
    assert "'0=my results/checkpoints/mlp/h4/step0000000.safetensors'" in text
    assert '--store \'my store.zarr\' --dask \'{"kind": "threads"' in text


def test_a_store_deleted_mid_run_is_rebuilt_by_the_same_command(tiny_run, tmp_path):
    work = _copy(tiny_run, tmp_path / "deleted")
    results = work / "results"
    path = results / "store.zarr"
    # as if the sweep had run up to detect; then the store is deleted while it measures
    for sub in ("store.zarr", "store.zarr.ledger", "store.init.json", "summary", "tables"):
        target = results / sub
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for sub in ("figures", "report.md", "report.html"):
        target = results / sub
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    cfg = work / "first.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    done = results / "store.zarr.ledger" / "done"
    with open(work / "first.log", "w") as fh:
        proc = subprocess.Popen(
            _command(work, cfg, ()), stdout=fh, stderr=subprocess.STDOUT, env=ENV
        )
        deadline = time.monotonic() + 600
        while not list(done.rglob("*.json")):
            assert proc.poll() is None, (work / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shutil.rmtree(path)
        proc.wait(timeout=600)
    rc, text = snakemake(work, TINY, log="rerun")
    assert rc == 0, text[-4000:]
    assert sorted(store.done_cells(path)) == sorted(CELLS)
    stores_equal(path, tiny_run / "results" / "store.zarr")
    ds = store.open(path, chunks=None).load()
    assert (ds["n_directions"].values > 0).all()  # no empty cell counted done
    assert f"{len(CELLS)} cells" in (results / "report.md").read_text()
    # deleted after the sweep finished: the same command rebuilds it too
    shutil.rmtree(path)
    rc, text = snakemake(work, TINY, log="again")
    assert rc == 0, text[-4000:]
    assert "store results/store.zarr is gone" in text
    assert {rule for rule, _ in jobs_run(text)} >= {"init_store", "measure", "aggregate"}
    assert sorted(store.done_cells(path)) == sorted(CELLS)
    stores_equal(path, tiny_run / "results" / "store.zarr")
    rc, text = snakemake(work, TINY, "-n", log="nothing")
    assert rc == 0 and "Nothing to be done" in text


def test_a_second_sweep_with_another_config_is_refused_while_one_runs(tiny_run, tmp_path):
    work = _copy(tiny_run, tmp_path / "two")
    results = work / "results"
    for sub in ("store.zarr", "store.zarr.ledger", "store.init.json", "summary", "tables"):
        target = results / sub
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    cfg = work / "same.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    procs, logs = [], []
    for i in range(2):  # two runs of the same config on one folder
        logs.append(work / f"same{i}.log")
        with open(logs[-1], "w") as fh:
            procs.append(
                subprocess.Popen(
                    _command(work, cfg, ()), stdout=fh, stderr=subprocess.STDOUT, env=ENV
                )
            )
    locks = results / ".sweep-lock"
    deadline = time.monotonic() + 300
    while not any(f"pid {p.pid}" in f.read_text() for f in locks.glob("*.lock") for p in procs):
        assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    other = {**TINY, "seed": 1}
    rc, text = snakemake(work, other, log="other")
    assert rc != 0
    assert f"results folder {results.resolve()} is in use by a running sweep" in text
    assert any(f"pid {p.pid}" in text for p in procs)
    assert not jobs_run(text)
    codes = [p.wait(timeout=600) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n----\n".join(t[-3000:] for t in texts)
    stores_equal(results / "store.zarr", tiny_run / "results" / "store.zarr")
    # the one that came second waited, planned again once the first had ended, and found
    # everything done: each cell was measured once
    waited = [t for t in texts if "a sweep of this config is running" in t]
    assert len(waited) == 1, "\n----\n".join(t[-3000:] for t in texts)
    assert "Nothing to be done" in waited[0]
    measured = [job for t in texts for job in jobs_run(t) if job[0] == "measure"]
    assert len(measured) == len(CELLS)
    # once they have ended, the other config may use the folder
    rc, text = snakemake(work, other, "-n", log="after")
    assert rc == 0, text[-3000:]


def test_a_changed_store_layout_is_refused_and_reverting_it_recomputes_nothing(tiny_run, tmp_path):
    work = _copy(tiny_run, tmp_path / "layout")
    changed = json.loads(json.dumps(TINY))
    changed["store_layout"]["n_radii"] = 15
    rc, text = snakemake(work, changed, log="changed")
    assert rc != 0 and "config: store_layout: the store results/store.zarr was created" in text
    assert not jobs_run(text)
    changed["store_layout"]["max_directions"] = 16
    changed["store_layout"]["n_radii"] = 13
    rc, text = snakemake(work, changed, log="changed2")
    assert rc != 0 and "max_directions = 16" in text and not jobs_run(text)
    rc, text = snakemake(work, TINY, "-n", log="reverted")
    assert rc == 0 and "Nothing to be done" in text, text[-3000:]


def test_config_values_that_would_fail_late_fail_before_any_job(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["store_layout"]["r_min"] = 2.0
    rc, text = snakemake(tmp_path / "radii", bad)
    assert rc != 0 and "config: store_layout.r_min: 2.0 must be below" in text
    assert _no_job_ran(tmp_path / "radii")
    bad = json.loads(json.dumps(TINY))
    bad["families"]["mlp"]["rate_curves"] = "h8:30"
    rc, text = snakemake(tmp_path / "curves", bad)
    assert rc != 0 and "families.mlp.rate_curves: h8:30 is not a swept checkpoint" in text
    assert _no_job_ran(tmp_path / "curves")
    if not torch.cuda.is_available():
        rc, text = snakemake(tmp_path / "cuda", {**TINY, "device": "cuda"})
        assert rc != 0 and "config: device: cuda asked for, but this machine has 0" in text
        assert _no_job_ran(tmp_path / "cuda")


def test_read_refuses_a_family_the_sidecar_contradicts(tiny_run):
    checkpoint = tiny_run / "results" / "checkpoints" / "mlp" / "h4" / "step0000030.safetensors"
    out = subprocess.run(
        [str(BIN / "dead-directions"), "read", str(checkpoint), "--family", "mlp-z2"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "sidecar says family 'mlp'" in out.stderr and "--override-family" in out.stderr


def test_per_checkpoint_jobs_write_the_store_per_layer_jobs_write(tiny_run, tmp_path):
    work = _copy(tiny_run, tmp_path / "by-checkpoint")
    results = work / "results"
    for sub in (
        *("store.zarr", "store.zarr.ledger", "store.init.json", "summary", "tables"),
        *("figures", "report.md", "report.html", "directions"),
    ):
        target = results / sub
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    config = {**TINY, "unit": "checkpoint"}
    rc, text = snakemake(work, config, log="by-checkpoint")
    assert rc == 0, text[-4000:]
    ran = jobs_run(text)
    assert {rule for rule, _ in ran} >= {"measure_checkpoint", "aggregate"}
    assert not {rule for rule, _ in ran} & {"detect", "measure", "train"}
    assert sum(rule == "measure_checkpoint" for rule, _ in ran) == 2  # steps 0 and 30
    path = results / "store.zarr"
    assert sorted(store.done_cells(path)) == sorted(CELLS)
    stores_equal(path, tiny_run / "results" / "store.zarr")
    for key in CELLS:  # the directions each layer was read with, as a detect job saves them
        mine = artefacts.load_directions(
            results
            / "directions-by-checkpoint"
            / "mlp"
            / "h4"
            / f"step{key.step:07d}"
            / f"{key.layer}.safetensors"
        )
        theirs = artefacts.load_directions(
            tiny_run / "results" / "directions" / f"{key.path}.safetensors"
        )
        assert [d.name for d in mine] == [d.name for d in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert all(torch.equal(a.vector[k], b.vector[k]) for k in a.vector)
    rc, text = snakemake(work, config, "-n", log="again")
    assert rc == 0 and "Nothing to be done" in text
