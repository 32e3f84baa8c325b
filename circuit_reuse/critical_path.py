"""The critical path of a finished run: the chain of dependent jobs whose measured times add up the most.

No number of cores finishes a run sooner than its critical path. The job graph comes from Snakemake's
`--dag` (Graphviz text: one node per job, labelled with its rule and wildcards, and one edge per
dependency); each job's time from `circuit_reuse.workflow.job_times`, matched to its node by rule and
wildcard values.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import pandas as pd

_NODE = re.compile(r'^\s*(\d+)\[label = "([^"]*)"', re.MULTILINE)
_EDGE = re.compile(r"^\s*(\d+) -> (\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class JobGraph:
    """Jobs by node id as (rule, wildcard values in the rule's order), and each job's prerequisites."""

    jobs: dict[int, tuple[str, tuple[str, ...]]]
    needs: dict[int, set[int]] = field(default_factory=dict)


def parse_dag(dot: str) -> JobGraph:
    """Read the job graph Snakemake prints with `--dag`."""
    jobs = {}
    for node, label in _NODE.findall(dot):
        rule, *wildcards = label.split("\\n")
        jobs[int(node)] = (rule, tuple(entry.split(": ", 1)[1] for entry in wildcards))
    if not jobs:
        raise ValueError("no jobs in the graph: is this the output of `snakemake --dag`?")
    needs: dict[int, set[int]] = {node: set() for node in jobs}
    for before, after in _EDGE.findall(dot):
        needs[int(after)].add(int(before))
    return JobGraph(jobs, needs)


def _job_keys(values: tuple[str, ...]) -> list[str]:
    """The ways a job's wildcard values can name its benchmark file: each joined by '/' or '.'."""
    if not values:
        return ["-"]
    keys = []
    for separators in itertools.product("/.", repeat=len(values) - 1):
        key = values[0]
        for separator, value in zip(separators, values[1:], strict=True):
            key += separator + value
        keys.append(key)
    return keys


def critical_path(graph: JobGraph, times: pd.DataFrame) -> pd.DataFrame:
    """The longest chain of dependent jobs by measured seconds, first job first.

    `times` is `job_times`' table. Jobs with no benchmark (the `all` target) count as zero seconds and are
    left out of the chain. One row per job of the chain: rule, job, seconds, and the chain's running total
    `finished_s`.
    """
    measured = {(row.rule, row.job): float(row.seconds) for row in times.itertuples()}

    def seconds(node: int) -> tuple[str | None, float]:
        rule, values = graph.jobs[node]
        for key in _job_keys(values):
            if (rule, key) in measured:
                return key, measured[(rule, key)]
        return None, 0.0

    finish: dict[int, float] = {}
    previous: dict[int, int | None] = {}
    for node in _topological_order(graph):
        before = max(graph.needs[node], key=lambda n: finish[n], default=None)
        previous[node] = before
        finish[node] = (finish[before] if before is not None else 0.0) + seconds(node)[1]
    node: int | None = max(finish, key=finish.get)
    chain = []
    while node is not None:
        key, own = seconds(node)
        if key is not None:
            chain.append({"rule": graph.jobs[node][0], "job": key, "seconds": own, "finished_s": finish[node]})
        node = previous[node]
    return pd.DataFrame(chain[::-1])


def _topological_order(graph: JobGraph) -> list[int]:
    order, done = [], set()
    pending = sorted(graph.jobs)
    while pending:
        ready = [node for node in pending if graph.needs[node] <= done]
        if not ready:
            raise ValueError(f"the job graph has a cycle among nodes {pending}")
        order.extend(ready)
        done.update(ready)
        pending = [node for node in pending if node not in done]
    return order
