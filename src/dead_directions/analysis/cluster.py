"""Where dask runs: a LocalCluster (default), a running scheduler, or workers on SLURM."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

KINDS = ("local", "address", "slurm")
_ADDRESS = re.compile(r"^[a-z]+://")


@dataclass(frozen=True)
class ClusterSpec:
    """What ``make_client`` connects to.

    ``kind``: ``"local"`` (a ``distributed.LocalCluster`` on this machine: ``n_workers``
    workers of ``threads_per_worker`` threads, ``memory`` per worker, ``processes=False``
    keeps them as threads of this process), ``"address"`` (an already running scheduler at
    ``address``, e.g. ``"tcp://host:8786"``; nothing is started or stopped), or ``"slurm"``
    (a ``dask_jobqueue.SLURMCluster``: ``n_workers`` worker processes in SLURM jobs of
    ``cores`` cores and ``memory`` each, ``workers_per_job`` workers per job, in partition
    ``queue`` under ``account`` for ``walltime``; needs the ``cluster`` extra). ``wait``
    workers are awaited for at most ``timeout`` seconds before the client is returned (0:
    return at once; tasks then wait for workers themselves). ``job_extra_directives`` are
    extra ``#SBATCH`` lines (e.g. ``["--qos=short"]``); ``log_directory`` keeps the worker
    jobs' logs; ``interface`` picks the network interface (e.g. ``"ib0"``) the scheduler and
    workers listen on.
    """

    kind: str = "local"
    address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    memory: str = "auto"
    processes: bool = True
    workers_per_job: int = 1
    queue: str | None = None
    account: str | None = None
    cores: int = 1
    walltime: str = "01:00:00"
    job_extra_directives: tuple[str, ...] = ()
    log_directory: str | None = None
    interface: str | None = None
    local_directory: str | None = None
    python: str | None = None
    wait: int = 0
    timeout: float = 300.0
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"cluster kind: {self.kind!r} is not one of {', '.join(KINDS)}.")
        if self.kind == "address" and not (self.address and _ADDRESS.match(self.address)):
            raise ValueError(
                f"cluster address: {self.address!r} is not a scheduler address like "
                "'tcp://host:8786'."
            )
        for name in ("n_workers", "threads_per_worker", "cores", "workers_per_job"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"cluster {name}: must be at least 1.")
        if self.wait < 0 or self.wait > self.n_workers:
            raise ValueError(f"cluster wait: must be between 0 and n_workers ({self.n_workers}).")
        if self.kind == "slurm" and self.memory == "auto":
            raise ValueError("cluster memory: a SLURM job needs a size, e.g. '4GB'.")
        if self.kind == "slurm" and not re.match(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$", self.walltime):
            raise ValueError(f"cluster walltime: {self.walltime!r} is not like '01:00:00'.")


def parse_spec(spec: ClusterSpec | Mapping[str, object] | str | None) -> ClusterSpec:
    """A ``ClusterSpec`` from ``None``/``"local"``, ``"slurm"``, an address or a mapping.

    A mapping takes the field names of ``ClusterSpec``; its ``kind`` may be left out when it
    has an ``address``. Unknown keys raise ``ValueError`` naming them.
    """
    if isinstance(spec, ClusterSpec):
        return spec
    if spec is None:
        return ClusterSpec()
    if isinstance(spec, str):
        if _ADDRESS.match(spec):
            return ClusterSpec(kind="address", address=spec)
        if spec in ("local", "slurm"):
            return ClusterSpec(kind=spec)
        raise ValueError(f"cluster: {spec!r} is not 'local', 'slurm' or an address.")
    if not isinstance(spec, Mapping):
        raise TypeError(f"cluster: expected a mapping or a string, got {type(spec).__name__}.")
    known = {f.name for f in fields(ClusterSpec)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"cluster: unknown key(s) {', '.join(unknown)}.")
    values = dict(spec)
    if "kind" not in values and values.get("address"):
        values["kind"] = "address"
    if "job_extra_directives" in values:
        values["job_extra_directives"] = tuple(values["job_extra_directives"] or ())
    return ClusterSpec(**values)


def slurm_cluster(spec: ClusterSpec):
    """A ``dask_jobqueue.SLURMCluster`` for ``spec`` (not yet scaled)."""
    try:
        from dask_jobqueue import (
            SLURMCluster,
        )  # lazy: optional (the `cluster` extra), SLURM clusters only
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "a SLURM dask cluster needs dask-jobqueue: pip install 'dead-directions[cluster]'."
        ) from err
    kwargs: dict[str, object] = {
        "cores": spec.cores,
        "memory": spec.memory,
        "processes": spec.workers_per_job,
        "walltime": spec.walltime,
        "queue": spec.queue,
        "account": spec.account,
        "job_extra_directives": list(spec.job_extra_directives),
        "log_directory": spec.log_directory,
        "interface": spec.interface,
        "scheduler_options": {"dashboard_address": None},
    }
    if spec.local_directory:
        kwargs["local_directory"] = spec.local_directory
    if spec.python:
        kwargs["python"] = spec.python
    kwargs.update(spec.extra)
    return SLURMCluster(**kwargs)


def _owning_client(cluster):
    """A ``distributed.Client`` on ``cluster`` that closes the cluster when it closes."""
    from distributed import Client  # lazy: dask.distributed starts only when a cluster is asked for

    class ClusterClient(Client):
        def close(self, *args, **kwargs):
            try:
                return super().close(*args, **kwargs)
            finally:
                owned = self.__dict__.pop("_owned_cluster", None)
                if owned is not None:
                    owned.close()

    client = ClusterClient(cluster)
    client._owned_cluster = cluster
    return client


def make_client(spec: ClusterSpec | Mapping[str, object] | str | None = None):
    """A ``distributed.Client`` where ``spec`` says (see ``ClusterSpec``; default local).

    The client owns the cluster it started: closing the client (or leaving its ``with``
    block) stops the workers, cancelling their SLURM jobs. An ``address`` client only
    disconnects.
    """
    spec = parse_spec(spec)
    from distributed import (
        Client,
        LocalCluster,
    )  # lazy: dask.distributed starts only when a cluster is asked for

    if spec.kind == "address":
        client = Client(spec.address, timeout=spec.timeout)
    elif spec.kind == "local":
        cluster = LocalCluster(
            n_workers=spec.n_workers,
            threads_per_worker=spec.threads_per_worker,
            memory_limit=spec.memory,
            processes=spec.processes,
            dashboard_address=None,
            **({"local_directory": spec.local_directory} if spec.local_directory else {}),
            **dict(spec.extra),
        )
        client = _owning_client(cluster)
    else:
        cluster = slurm_cluster(spec)
        try:
            cluster.scale(n=spec.n_workers)
            client = _owning_client(cluster)
        except BaseException:
            cluster.close()
            raise
    if spec.wait:
        try:
            client.wait_for_workers(spec.wait, timeout=spec.timeout)
        except BaseException:
            client.close()
            raise
    return client
