"""The critical path of a finished run: the chain of dependent jobs whose measured times add up the most.

No number of cores finishes a run sooner than its critical path. The jobs and their files come from the
run's own Snakemake logs (`.snakemake/log/`), which list every job it ran with its rule, inputs, outputs
and benchmark file; a job needs every job whose output it reads. Each job's time is its benchmark's, from
`circuit_reuse.workflow.job_times`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

_JOB = re.compile(r"^(?:local)?rule (\S+):$")
_FIELD = re.compile(r"^    (input|output|benchmark): (.*)$")


@dataclass(frozen=True)
class LoggedJob:
    """A job as the Snakemake log lists it: its rule, its benchmark file's key ('rule/wildcards', as
    `job_times` names jobs) and the files it read and wrote."""

    rule: str
    key: str
    inputs: frozenset[str]
    outputs: frozenset[str]


def logged_jobs(log_text: str) -> list[LoggedJob]:
    """Every job with a benchmark file that one Snakemake log lists, in the order it started them."""
    jobs, current = [], None
    for line in log_text.splitlines() + [""]:
        header = _JOB.match(line)
        field = _FIELD.match(line)
        if current is not None and (header or not field and not line.startswith("    ")):
            if "benchmark" in current:
                relative = current["benchmark"].removeprefix("benchmarks/").removesuffix(".tsv")
                rule, _, job = relative.partition("/")
                key = f"{rule}/{job or '-'}"
                jobs.append(LoggedJob(current["rule"], key, current["input"], current["output"]))
            current = None
        if header:
            current = {"rule": header.group(1), "input": frozenset(), "output": frozenset()}
        elif current is not None and field:
            name, value = field.groups()
            current[name] = value if name == "benchmark" else frozenset(value.split(", "))
    return jobs


def run_jobs(run_dir: str | Path) -> list[LoggedJob]:
    """The jobs of every Snakemake invocation in `run_dir` (a resumed run has several logs); a job run
    again in a later invocation counts as it ran last."""
    logs = sorted((Path(run_dir) / ".snakemake" / "log").glob("*.snakemake.log"))
    by_key = {job.key: job for log in logs for job in logged_jobs(log.read_text())}
    if not by_key:
        raise FileNotFoundError(f"no Snakemake log under {run_dir}/.snakemake/log lists a job with a benchmark")
    return list(by_key.values())


def critical_path(jobs: list[LoggedJob], times: pd.DataFrame) -> pd.DataFrame:
    """The longest chain of dependent jobs by measured seconds, first job first.

    `times` is `job_times`' table; a job without a measurement counts as zero seconds. One row per job of
    the chain: rule, job, seconds, and the chain's running total `finished_s`.
    """
    measured = {f"{row.rule}/{row.job}": float(row.seconds) for row in times.itertuples()}
    writer = {path: job.key for job in jobs for path in job.outputs}
    needs = {job.key: {writer[path] for path in job.inputs if path in writer} - {job.key} for job in jobs}
    finish: dict[str, float] = {}
    previous: dict[str, str | None] = {}
    pending = [job.key for job in jobs]
    while pending:
        ready = [key for key in pending if needs[key] <= finish.keys()]
        if not ready:
            raise ValueError(f"the jobs' files form a cycle among {sorted(pending)}")
        for key in ready:
            before = max(needs[key], key=finish.get, default=None)
            previous[key] = before
            finish[key] = (finish[before] if before else 0.0) + measured.get(key, 0.0)
        pending = [key for key in pending if key not in finish]
    key: str | None = max(finish, key=finish.get)
    chain = []
    while key is not None:
        rule, _, job = key.partition("/")
        chain.append({"rule": rule, "job": job, "seconds": measured.get(key, 0.0), "finished_s": finish[key]})
        key = previous[key]
    return pd.DataFrame(chain[::-1])
