"""The sweep on a live single-node SLURM (scripts/local-slurm.sh), and dask on SLURM workers.

The module fixture starts the local SLURM (installing Debian's slurm-wlm and munge where
missing). Where it cannot (not root, no apt-get), the tests skip and say why; with CI set
they fail instead, so CI never passes without having run them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local-slurm.sh"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
LOCAL_PROFILE = ROOT / "workflow" / "profiles" / "default"
TINY = ROOT / "config" / "tiny.yaml"
BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/dead-directions-slurm"))
CANNOT = 3  # local-slurm.sh: cannot run on this machine (not root, no apt-get, install failed)
# Per-run provenance that differs between two runs of the same sweep: timings, host, the
# commit (others may commit while the test runs) and the checkpoint path. The checkpoint
# hash must agree (checkpoints are byte-identical across processes).
VOLATILE = {"seconds", "wall_seconds", "written_at", "host", "git_commit", "checkpoint"}


def _cannot(reason: str):
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI must run the SLURM tests, but the local SLURM cannot start: {reason}")
    pytest.skip(f"local SLURM cannot start here: {reason}")


def _script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # Twice the cores as SLURM CPUs: the tests' jobs mostly start up and wait, and the
    # tests may share the node (pytest -n 2).
    cpus = str(2 * (os.cpu_count() or 1))
    env = {**os.environ, "LOCAL_SLURM_DIR": str(STATE), "LOCAL_SLURM_CPUS": cpus}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@contextlib.contextmanager
def _holders_lock():
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "test-holders.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield STATE / "test-holders"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module")
def slurm():
    """The local SLURM, shared by every test process that holds it; stopped by the last.

    Several pytest workers (and sessions) may use it at once: each registers a holder file
    named by its pid; the last holder out stops SLURM if a test started it (a SLURM that was
    already running, e.g. for a demo, is left running).
    """
    if os.name != "posix" or os.geteuid() != 0:
        _cannot("the tests need root (slurmd launches job steps; apt-get installs SLURM)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        _cannot("SLURM is not installed and there is no apt-get to install it")
    me = str(os.getpid())
    with _holders_lock() as holders:
        holders.mkdir(exist_ok=True)
        was_running = _script("status").returncode == 0
        t0 = time.monotonic()
        started = _script("start")
        if started.returncode == CANNOT:
            _cannot((started.stderr.strip().splitlines() or ["local-slurm.sh: exit 3"])[-1])
        assert started.returncode == 0, f"local-slurm.sh start failed:\n{started.stderr}"
        if not was_running:
            (STATE / "test-started").write_text(f"{time.monotonic() - t0:.1f} s\n")
        (holders / me).touch()
    conf = str(STATE / "slurm.conf")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield {"conf": conf, "start_log": started.stderr}
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        with _holders_lock() as holders:
            (holders / me).unlink(missing_ok=True)
            others = [p for p in holders.iterdir() if p.name.isdigit() and _alive(int(p.name))]
            if not others and (STATE / "test-started").exists():
                stopped = _script("stop")
                (STATE / "test-started").unlink(missing_ok=True)
                assert stopped.returncode == 0, stopped.stderr


def _squeue(*args: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_local_slurm_runs_batch_jobs_and_job_steps(slurm, tmp_path):
    # Idempotent: a second start finds it running and returns at once.
    t0 = time.monotonic()
    again = _script("start")
    assert again.returncode == 0 and "already running" in again.stderr, again.stderr
    assert time.monotonic() - t0 < 10
    assert _script("status").returncode == 0
    out = tmp_path / "job.out"
    # The inner srun runs without SLURM_CONF, as Snakemake's job steps do.
    done = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            "--time=2",
            "--mem=100",
            f"--output={out}",
            "--wrap",
            "echo job=$SLURM_JOB_ID; env -u SLURM_CONF srun --ntasks=1 hostname",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    text = out.read_text()
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert f"job={job_id}" in text and host in text.splitlines(), text
    # squeue keeps finished jobs (MinJobAge): Snakemake's squeue status checks rely on it.
    states = dict(_squeue("--states=all", "-o", "%i|%T"))
    assert states.get(job_id) == "COMPLETED", states


def test_dask_sum_on_slurm_workers(slurm, tmp_path):
    import dask.array as da

    from dead_directions.analysis.cluster import make_client

    spec = {
        "kind": "slurm",
        "n_workers": 2,
        "cores": 1,
        "memory": "1GB",
        "walltime": "00:10:00",
        "log_directory": str(tmp_path / "logs"),
        "wait": 2,
        "timeout": 300,
    }
    rng = np.random.default_rng(0)
    values = rng.standard_normal((400, 300))
    with make_client(spec) as client:
        jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(jobs) == 2 and all(jobs.values()), jobs
        running = {row[0] for row in _squeue("-t", "R", "-o", "%i|%j")}
        assert set(jobs.values()) <= running, (jobs, running)
        x = da.from_array(values, chunks=(100, 100))
        total, column_means = client.compute([x.sum(), x.mean(axis=0)], sync=True)
        assert int(client.compute(da.arange(1_000_000, chunks=100_000).sum(), sync=True)) == (
            999_999 * 1_000_000 // 2
        )
    np.testing.assert_allclose(total, values.sum(), rtol=1e-12)
    np.testing.assert_allclose(column_means, values.mean(axis=0), rtol=1e-12)
    # Closing the client stops the workers: their SLURM jobs end.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = {row[0] for row in _squeue("-t", "PD,R,CG", "-o", "%i|%T")}
        if not live & set(jobs.values()):
            break
        time.sleep(1)
    assert not live & set(jobs.values()), live


# --------------------------------------------------------------------------------------
# The tiny sweep on SLURM
# --------------------------------------------------------------------------------------


def fit_profile(src: Path, dst: Path, cpus: int, threads: int = 1, mem_mb: int = 3000) -> dict:
    """The SLURM profile fitted to a small node: partitions and account left to the default,
    no GPUs, CPUs, threads and memory capped (so that jobs run side by side). Everything
    else (runtimes, groups, retries...) as is."""

    def fit(resources):
        if isinstance(resources, list):  # ["name=value", ...]
            resources = dict(item.split("=", 1) for item in resources)
        out = {}
        for name, value in (resources or {}).items():
            if name in {"slurm_partition", "slurm_account", "gpu_model", "gres"}:
                continue
            if name == "gpu":
                value = 0
            elif name in {"cpus_per_task", "cpus_per_gpu"}:
                value = min(int(value), cpus)
            elif name == "mem_mb":
                value = min(int(value), mem_mb)
            out[name] = value
        return out

    config = yaml.safe_load((src / "config.yaml").read_text())
    if "default-resources" in config:
        config["default-resources"] = fit(config["default-resources"])
    config["set-resources"] = {
        rule: fit(values) for rule, values in (config.get("set-resources") or {}).items()
    }
    config["set-threads"] = {
        rule: min(int(n), threads) for rule, n in (config.get("set-threads") or {}).items()
    }
    # `cores` bounds the threads of one job and the width of a group job.
    config["cores"] = min(int(config.get("cores", cpus)), cpus)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def _workdir(path: Path) -> Path:
    """A run directory with the repository's workflow and the tiny config as its default."""
    (path / "config").mkdir(parents=True)
    for name in ("Snakefile", "workflow"):
        (path / name).symlink_to(ROOT / name)
    shutil.copy(TINY, path / "config" / "config.yaml")
    return path


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _snakemake(*args: str, configs: tuple[Path, ...] = ()) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--nocolor",
        *args,
        "--configfile",
        str(TINY),
        *map(str, configs),
    ]


def _store_dataset(path: Path):
    from dead_directions.io import store

    ds = store.open(path, chunks=None).load()
    return ds.drop_vars([n for n in ds.data_vars if n in VOLATILE])


def _tables(results: Path) -> dict[str, bytes]:
    root = results / "tables"
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _running_measure_jobs(workdir: Path) -> list[str]:
    """SLURM jobs of `measure` running from ``workdir``."""
    rows = _squeue("-t", "R", "-o", "%i|%k|%Z")
    return [job for job, comment, wd in rows if "measure" in comment and wd == str(workdir)]


@contextlib.contextmanager
def _background(args: list[str], cwd: Path, log: Path):
    """A Snakemake run in the background; stopped (with its SLURM jobs) if left running."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, cwd=cwd, env=_env(), stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # Snakemake cancels its SLURM jobs on SIGTERM
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text()[-n:] if path.exists() else f"({path} missing)"


@pytest.mark.slow
@pytest.mark.skipif(
    not (TINY.exists() and (PROFILE / "config.yaml").exists()),
    reason="the workflow (config/tiny.yaml, workflow/profiles/slurm) has not landed yet",
)
def test_tiny_sweep_on_slurm_equals_local_and_survives_scancel(slurm, tmp_path):
    """The tiny sweep through the SLURM profile: one `measure` job is cancelled mid-run
    (scancel), a rerun completes it, and the store and tables equal a local run's. Then the
    tables are aggregated again on dask workers in SLURM jobs (config `dask.kind: slurm`)."""
    import xarray as xr

    from dead_directions.io import store

    cpus = os.cpu_count() or 2
    profile = tmp_path / "profile"
    fit_profile(PROFILE, profile, cpus)
    local = _workdir(tmp_path / "local")
    remote = _workdir(tmp_path / "slurm")
    config = yaml.safe_load(TINY.read_text())
    results = config["results"]
    store_path = config.get("store") or f"{results}/store.zarr"
    slurm_args = _snakemake(
        "--workflow-profile",
        str(profile),
        "--slurm-status-command",
        "squeue",  # no accounting here: sacct has nothing to say
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--jobs",
        str(2 * cpus),
        "--retries",
        "0",  # the cancelled job must fail this run, not be resubmitted by it
    )
    local_log, first_log, rerun_log = (tmp_path / f"{n}.log" for n in ("local", "slurm1", "slurm2"))
    # The reference, run locally alongside (the SLURM run mostly waits on the scheduler).
    reference_args = _snakemake("--workflow-profile", str(LOCAL_PROFILE), "--cores", "1")
    with (
        _background(reference_args, local, local_log) as reference,
        _background(slurm_args, remote, first_log) as first,
    ):
        # Cancel a measure job once its command has started.
        cancelled, deadline = None, time.monotonic() + 600
        while cancelled is None and first.poll() is None and time.monotonic() < deadline:
            running = _running_measure_jobs(remote)
            if running and list((remote / "logs" / "measure").rglob("*.log")):
                time.sleep(1)
                subprocess.run(["scancel", running[0]], check=True)
                cancelled = running[0]
            time.sleep(0.5)
        first_rc = first.wait(timeout=600)
        assert cancelled is not None, f"no measure job seen running:\n{_tail(first_log)}"
        assert first_rc != 0, f"a run with a cancelled job must fail:\n{_tail(first_log)}"
        assert f"SLURM-job '{cancelled}' failed" in first_log.read_text(), _tail(first_log)
        assert len(store.done_cells(remote / store_path)) < 4

        # The rerun also aggregates on dask workers in SLURM jobs of their own (config
        # `dask.kind: slurm`), started from inside the aggregate job: one worker, so that the
        # aggregate job's one thread and the worker fit on the node together.
        worker_logs = tmp_path / "dask-logs"
        dask = {
            "kind": "slurm",
            "n_workers": 1,
            "cores": 1,
            "memory": "1GB",
            "walltime": "00:10:00",
            "log_directory": str(worker_logs),
            "wait": 1,
            "timeout": 300,
        }
        overlay = tmp_path / "dask-slurm.yaml"
        overlay.write_text(yaml.safe_dump({"dask": dask}))
        with open(rerun_log, "w") as fh:
            rerun = subprocess.run(
                [*slurm_args, str(overlay)],
                cwd=remote,
                env=_env(),
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        assert rerun.returncode == 0, _tail(rerun_log)
        assert reference.wait(timeout=600) == 0, _tail(local_log)

    # Nothing lost, nothing doubled: every cell once, complete, equal to the local run.
    assert (
        store.done_cells(remote / store_path).keys() == store.registry(remote / store_path).keys()
    )
    assert len(store.done_cells(remote / store_path)) == len(store.done_cells(local / store_path))
    xr.testing.assert_identical(
        _store_dataset(remote / store_path), _store_dataset(local / store_path)
    )
    # The tables, aggregated on SLURM workers, equal the local run's (dask threads).
    assert list(worker_logs.glob("*.err")), "no dask worker ran as a SLURM job"
    tables = _tables(remote / results)
    assert tables and tables == _tables(local / results)
    assert (remote / results / "report.html").exists()
