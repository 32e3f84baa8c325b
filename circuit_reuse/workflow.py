"""Small helpers shared by the Snakefile and the scripts that Snakemake runs."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from circuit_reuse.integrity import current_run, record_digests, verify_digests

# Job classes of the config's `resources` section; every rule names one (see workflow/rules/common.smk).
JOB_CLASSES = ("light", "model", "cache")

# What keeps a job off the Hugging Face Hub: compute jobs load models from results/models/ only.
HUB_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class ResourcesError(ValueError):
    """A rule asked for a job class that the config's `resources` section does not define."""


def _job_class(config: Mapping[str, Any], job_class: str) -> Mapping[str, Any]:
    classes = config.get("resources") or {}
    if job_class not in classes:
        known = ", ".join(sorted(classes)) or "none (was the config validated?)"
        raise ResourcesError(f"unknown job class {job_class!r} in the config's `resources`; known classes: {known}")
    return classes[job_class]


def job_threads(config: Mapping[str, Any], job_class: str) -> int:
    """CPUs for one job of `job_class`: the rule's `threads`, which the SLURM plugin turns into --cpus-per-task."""
    return int(_job_class(config, job_class)["cpus"])


def job_resources(config: Mapping[str, Any], job_class: str) -> dict[str, Any]:
    """Snakemake resources for one job of `job_class`, named as snakemake-executor-plugin-slurm reads them.

    mem_mb -> sbatch --mem, runtime (minutes) -> --time, gpu -> --gpus, partition -> slurm_partition (-p).
    A GPU count of 0 and a null partition are left out, so that the cluster's defaults apply and a
    profile's `set-resources` can still add them for one rule.
    """
    spec = _job_class(config, job_class)
    resources: dict[str, Any] = {"mem_mb": int(spec["mem_mb"]), "runtime": int(spec["runtime"])}
    if spec.get("gpu"):
        resources["gpu"] = int(spec["gpu"])
    if spec.get("partition"):
        resources["slurm_partition"] = str(spec["partition"])
    return resources


def hub_offline() -> None:
    """Keep this process off the Hugging Face Hub; call it before loading a model in a compute job.

    Compute nodes often have no internet, and a job that reaches for the Hub there hangs on timeouts
    instead of failing. Models are cached beforehand by the local `cache_model` rule and loaded from
    results/models/ only.
    """
    os.environ.update(HUB_OFFLINE_ENV)
    # huggingface_hub reads the variable once, when it is imported: tell an already imported one too.
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True


class _Tee:
    """A stream that writes to the terminal and to a job's log file, so progress stays visible."""

    def __init__(self, *streams: TextIO):
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()

    def isatty(self) -> bool:
        return self._streams[0].isatty()


@contextlib.contextmanager
def job_logging(log_path: str | Path) -> Iterator[None]:
    """Copy everything the job prints (progress bars included) into its Snakemake log file."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        except BaseException:
            # The traceback belongs in the log; written there alone, since Python prints it to the console
            # once more when the job exits with it.
            traceback.print_exc(file=log)
            raise
        finally:
            sys.stdout, sys.stderr = out, err


@contextlib.contextmanager
def workflow_job(job) -> Iterator[None]:
    """What every workflow job runs in: its log; its inputs checked against the sha256 their jobs recorded
    (`circuit_reuse.integrity`); its outputs' sha256 recorded once it succeeds.

    `job` is the `snakemake` object Snakemake injects into a script.
    """
    with job_logging(job.log[0]):
        verify_digests(job.input, current_run().get("produced", []))
        yield
        record_digests(job.output)


@contextlib.contextmanager
def model_job(job) -> Iterator[None]:
    """What every job that runs a model starts with: the Hub offline, the rule's threads, `workflow_job`."""
    import torch

    hub_offline()
    torch.set_num_threads(max(1, int(job.threads)))
    with workflow_job(job):
        yield


def job_times(run_dir: str | Path) -> pd.DataFrame:
    """Wall time and peak memory of every job of a run, from the `benchmarks/` files its rules write.

    One row per job: rule, job (the benchmark file's path under the rule, i.e. its wildcards), seconds and
    max_rss_mb, slowest first.
    """
    root = Path(run_dir) / "benchmarks"
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root).with_suffix("")
        record = pd.read_csv(path, sep="\t").iloc[-1]
        rows.append(
            {
                "rule": relative.parts[0],
                "job": "/".join(relative.parts[1:]) or "-",
                "seconds": float(record["s"]),
                "max_rss_mb": pd.to_numeric(record.get("max_rss"), errors="coerce"),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no benchmark files under {root}: has the workflow run there?")
    return pd.DataFrame(rows).sort_values("seconds", ascending=False, ignore_index=True)
