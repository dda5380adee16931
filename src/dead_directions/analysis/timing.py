"""Where a sweep's time went: Snakemake's per-job benchmark files, summed per rule.

`dead-directions timing benchmarks/out` prints, per rule, the jobs, their summed wall and
CPU seconds, the mean and largest job, and each rule's share of the summed job time; and
the sweep's wall time, from the first job's start to the last job's end (each benchmark
file is written when its job ends, so start = file mtime − the job's ``s``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate


@dataclass(frozen=True)
class JobTime:
    """One job's benchmark: ``rule``; ``seconds`` wall; ``cpu_seconds``; ``end`` (epoch s)."""

    rule: str
    path: Path
    seconds: float
    cpu_seconds: float
    end: float


@dataclass(frozen=True)
class RuleTime:
    """Per rule: ``jobs``, summed wall and CPU seconds, the largest job's wall seconds."""

    rule: str
    jobs: int
    seconds: float
    cpu_seconds: float
    max_seconds: float

    @property
    def mean_seconds(self) -> float:
        return self.seconds / self.jobs


@dataclass(frozen=True)
class SweepTiming:
    """A sweep's rules (largest first), the sweep's wall seconds and summed job seconds."""

    rules: list[RuleTime]
    wall_seconds: float
    job_seconds: float
    cpu_seconds: float


def read_benchmarks(root: str | os.PathLike) -> list[JobTime]:
    """Every ``*.tsv`` under ``root``; the rule is the first path component below it
    (``root/{rule}/...`` or ``root/{rule}.tsv``, the layout of the workflow's rules)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(
            f"timing: {root} is not a directory; pass the workflow's benchmark folder "
            "(benchmarks/out after `make run`)."
        )
    jobs = []
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            raise ValueError(f"timing: {path} is not a Snakemake benchmark file (no 's' column).")
        # A benchmark with repeats has one row per repeat; the job ran them back to back.
        seconds = sum(float(r["s"]) for r in rows)
        cpu = sum(_float(r.get("cpu_time")) for r in rows)
        jobs.append(JobTime(rule, path, seconds, cpu, path.stat().st_mtime))
    if not jobs:
        raise ValueError(f"timing: no benchmark files (*.tsv) under {root}; run the sweep first.")
    return jobs


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0  # Snakemake writes "NA" where psutil could not measure


def summarise(jobs: list[JobTime]) -> SweepTiming:
    """Sum ``jobs`` per rule; wall time = last end − first start."""
    by_rule: dict[str, list[JobTime]] = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job)
    rules = [
        RuleTime(
            rule,
            len(js),
            sum(j.seconds for j in js),
            sum(j.cpu_seconds for j in js),
            max(j.seconds for j in js),
        )
        for rule, js in by_rule.items()
    ]
    rules.sort(key=lambda r: (-r.seconds, r.rule))
    wall = max(j.end for j in jobs) - min(j.end - j.seconds for j in jobs)
    return SweepTiming(rules, wall, sum(j.seconds for j in jobs), sum(j.cpu_seconds for j in jobs))


def format_table(timing: SweepTiming, tablefmt: str = "github") -> str:
    """The per-rule table and a line with the sweep's wall time."""

    rows = [
        [
            r.rule,
            r.jobs,
            f"{r.seconds:.1f}",
            f"{r.cpu_seconds:.1f}",
            f"{r.mean_seconds:.2f}",
            f"{r.max_seconds:.1f}",
            f"{r.seconds / timing.job_seconds:.1%}",
        ]
        for r in timing.rules
    ]
    jobs = sum(r.jobs for r in timing.rules)
    rows.append(
        ["total", jobs, f"{timing.job_seconds:.1f}", f"{timing.cpu_seconds:.1f}", "", "", ""]
    )
    headers = ["rule", "jobs", "job s", "CPU s", "mean s", "max s", "share"]
    table = tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)
    minutes, seconds = divmod(timing.wall_seconds, 60)
    return (
        f"{table}\n\nSweep wall time: {timing.wall_seconds:.0f} s ({int(minutes)} min "
        f"{seconds:.0f} s), first job start to last job end; summed job time "
        f"{timing.job_seconds:.0f} s (jobs run in parallel)."
    )
