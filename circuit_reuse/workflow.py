"""Small helpers shared by the Snakefile and the scripts that Snakemake runs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
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


# The phases a job's wall time is split into besides its compute (`JobClock`), in the order they happen.
STARTUP_PHASES = ("start-up", "input checks", "model load", "notebook kernel", "output digests")
# The columns of `job_times` that split a job's seconds: the phases, Snakemake's share, their sum, compute.
SPLIT_COLUMNS = (*STARTUP_PHASES, "snakemake", "startup", "compute")


def seconds_since_process_start() -> float:
    """How long ago this process started.

    On Linux from /proc (the process's start and the time since boot, both to the 10 ms clock tick);
    elsewhere from psutil's start time, whose boot-time reference is whole seconds.
    """
    try:
        # Field 22 of /proc/self/stat (the 20th after the parenthesised command name) is the start time.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except OSError:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())


class JobClock:
    """Where one job's wall time goes, from its process's start to its end.

    `start-up` runs from the process's start to the job's body: the interpreter, the imports and the
    preamble by which Snakemake hands a script its job. The body times its other non-compute phases
    (`STARTUP_PHASES`) with `phase`; whatever remains of the process's time is compute.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter() - seconds_since_process_start()
        self.seconds: dict[str, float] = {"start-up": time.perf_counter() - self.started}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time the block takes as phase `name`."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - begin)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` measured elsewhere (say, by a notebook kernel's own clock) as phase `name`."""
        if name not in STARTUP_PHASES:
            raise ValueError(f"unknown job phase {name!r}; phases: {', '.join(STARTUP_PHASES)}")
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def split(self) -> dict[str, float]:
        """Seconds per phase, the compute and the process's whole time so far; and the peak of GPU memory
        the job's tensors held (`gpu_peak_mb`) when it used a GPU."""
        process = time.perf_counter() - self.started
        phases = {name: self.seconds.get(name, 0.0) for name in STARTUP_PHASES}
        split = {**phases, "compute": max(0.0, process - sum(phases.values())), "process": process}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            split["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return split


def phases_path(log_path: str | Path) -> Path:
    """Where a job writes its `JobClock` split: beside its benchmark file, as logs/X.log -> benchmarks/X.phases.json."""
    log_path = Path(log_path)
    parts = log_path.parts
    if "logs" not in parts:
        raise ValueError(f"job log {log_path} is not under a logs/ directory, so its phases have no place")
    index = len(parts) - 1 - parts[::-1].index("logs")
    return Path(*parts[:index], "benchmarks", *parts[index + 1 :]).with_suffix(".phases.json")


@contextlib.contextmanager
def workflow_job(job) -> Iterator[JobClock]:
    """What every workflow job runs in: its log; its inputs checked against the sha256 their jobs recorded
    (`circuit_reuse.integrity`); its outputs' sha256 recorded once it succeeds; its `JobClock`, whose split
    it writes beside its benchmark file and prints as its log's last line.

    `job` is the `snakemake` object Snakemake injects into a script; the clock is yielded so the body can
    time its own model load.
    """
    clock = JobClock()
    with job_logging(job.log[0]):
        with clock.phase("input checks"):
            verify_digests(job.input, current_run().get("produced", []))
        yield clock
        with clock.phase("output digests"):
            record_digests(job.output)
        split = clock.split()
        path = phases_path(job.log[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({name: round(value, 4) for name, value in split.items()}, indent=1) + "\n")
        print("job time: " + ", ".join(f"{name} {value:.2f} s" for name, value in split.items() if value))


@contextlib.contextmanager
def model_job(job) -> Iterator[JobClock]:
    """What every job that runs a model starts with: the Hub offline, the rule's threads, `workflow_job`."""
    import torch

    hub_offline()
    torch.set_num_threads(max(1, int(job.threads)))
    with workflow_job(job) as clock:
        yield clock


def job_times(run_dir: str | Path) -> pd.DataFrame:
    """Wall time and peak memory of every job of a run, from the `benchmarks/` files its rules write, and
    where each job's time went by its `JobClock` split (`phases_path`).

    One row per job: rule, job (the benchmark file's path under the rule, i.e. its wildcards), seconds and
    max_rss_mb; then one column per phase of `STARTUP_PHASES`, compute, process, gpu_peak_mb, snakemake
    and `startup` (the phases' and snakemake's sum), NaN for a job that wrote no split (or used no GPU);
    slowest first. Snakemake's own work for a job (before its process
    starts and after it ends) is what `seconds` holds beyond the split's `process`.
    """
    root = Path(run_dir) / "benchmarks"
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root).with_suffix("")
        record = pd.read_csv(path, sep="\t").iloc[-1]
        phases = path.with_suffix(".phases.json")
        split = json.loads(phases.read_text()) if phases.is_file() else {}
        rows.append(
            {
                "rule": relative.parts[0],
                "job": "/".join(relative.parts[1:]) or "-",
                "seconds": float(record["s"]),
                "max_rss_mb": pd.to_numeric(record.get("max_rss"), errors="coerce"),
                **{name: split.get(name, float("nan")) for name in (*STARTUP_PHASES, "compute", "process")},
                "gpu_peak_mb": split.get("gpu_peak_mb", float("nan")),
            }
        )
    if not rows:
        raise FileNotFoundError(f"no benchmark files under {root}: has the workflow run there?")
    times = pd.DataFrame(rows)
    # Snakemake's share of a job (its own bookkeeping and the script's launch) counts as start-up too.
    times["snakemake"] = (times["seconds"] - times["process"]).clip(lower=0)
    times["startup"] = times[[*STARTUP_PHASES, "snakemake"]].sum(axis=1, min_count=1)
    return times.sort_values("seconds", ascending=False, ignore_index=True)


def rule_times(times: pd.DataFrame) -> pd.DataFrame:
    """`job_times`' table summed per rule: jobs, seconds and each phase of the split (start-up, compute...),
    the largest max_rss_mb and gpu_peak_mb; slowest rule first."""
    columns = {"jobs": ("job", "count"), "seconds": ("seconds", "sum")}
    columns.update({name: (name, "sum") for name in SPLIT_COLUMNS})
    columns.update(max_rss_mb=("max_rss_mb", "max"), gpu_peak_mb=("gpu_peak_mb", "max"))
    return times.groupby("rule").agg(**columns).sort_values("seconds", ascending=False).reset_index()
