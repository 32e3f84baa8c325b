"""Time the whole workflow from nothing: run a config in an empty directory, then print the wall time, where
the jobs' time went (start-up, input checks, model loads, notebook kernels, compute) per rule, and the
critical path.

    python scripts/benchmark_workflow.py                                   # paper_shapes.yaml, N as configured
    python scripts/benchmark_workflow.py --n-prompts 16 --cores 2         # every task cut to 16 prompts
    python scripts/benchmark_workflow.py --configfile workflow/configs/smoke.yaml --out runs/benchmark/smoke

The run directory keeps everything (its results, its job logs, `benchmarks/`); the tables printed are also
written there as `workflow_time.json` and `rule_times.csv`. `--summarize` prints them again for a finished
run without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from circuit_reuse.critical_path import critical_path, run_jobs
from circuit_reuse.workflow import STARTUP_PHASES, job_times, rule_times

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
PHASE_COLUMNS = [*STARTUP_PHASES, "snakemake", "startup", "compute"]


def _snakemake(run_dir: Path, configfile: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE)]
    command += ["--configfile", str(configfile), "--directory", str(run_dir), *args]
    return subprocess.run(command, check=True, **kwargs)


def prepare(configfile: Path, run_dir: Path, n_prompts: int | None, fresh: bool) -> Path:
    """An empty run directory holding the config to run (every task cut to `n_prompts` when given)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not fresh:
            raise SystemExit(f"{run_dir} is not empty: a run from nothing needs an empty directory (or --fresh)")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(configfile.read_text())
    if n_prompts is not None:
        for task in config["tasks"].values():
            task["n_prompts"] = n_prompts
    prepared = run_dir / "benchmark_config.yaml"
    prepared.write_text(yaml.safe_dump(config, sort_keys=False))
    return prepared


def summarize(run_dir: Path, configfile: Path, wall_s: float | None, cores: str) -> dict:
    """Print and write (workflow_time.json, rule_times.csv) where a finished run's time went."""
    times = job_times(run_dir)
    chain = critical_path(run_jobs(run_dir), times)
    rules = rule_times(times)
    rules.to_csv(run_dir / "rule_times.csv", index=False)
    job_seconds = float(times["seconds"].sum())
    startup = float(times["startup"].sum())
    summary = {
        "config": str(configfile),
        "cores": cores,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "wall_s": wall_s,
        "jobs": len(times),
        "job_seconds": job_seconds,
        "startup_seconds": startup,
        "startup_share_of_job_time": startup / job_seconds,
        "phases": {name: float(times[name].sum()) for name in PHASE_COLUMNS},
        "critical_path_s": float(chain["finished_s"].iloc[-1]),
        "critical_path_jobs": len(chain),
    }
    if wall_s is not None:
        summary["startup_share_of_wall_time_x_cores"] = startup / (wall_s * _core_count(cores))
    (run_dir / "workflow_time.json").write_text(json.dumps(summary, indent=1) + "\n")

    pd.set_option("display.width", 200)
    print(rules.to_string(index=False, float_format=lambda value: f"{value:.1f}"))
    print("\ncritical path:")
    print(chain.to_string(index=False, float_format=lambda value: f"{value:.1f}"))
    print()
    if wall_s is not None:
        print(f"wall time {wall_s:.1f} s on {cores} cores ({summary['machine']})")
    print(
        f"{len(times)} jobs, {job_seconds:.1f} s of job time, of which start-up {startup:.1f} s "
        f"({100 * summary['startup_share_of_job_time']:.1f}%): "
        + ", ".join(f"{name} {summary['phases'][name]:.1f} s" for name in [*STARTUP_PHASES, "snakemake"])
    )
    print(f"critical path {summary['critical_path_s']:.1f} s over {len(chain)} jobs")
    return summary


def _core_count(cores: str) -> int:
    return (os.cpu_count() or 1) if cores == "all" else int(cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", type=Path, default=REPO / "workflow" / "configs" / "paper_shapes.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmark" / "paper_shapes")
    parser.add_argument("--n-prompts", type=int, default=None, help="cut every task to this many prompts")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--fresh", action="store_true", help="empty --out first")
    parser.add_argument("--summarize", action="store_true", help="only summarize the finished run in --out")
    parser.add_argument("snakemake_args", nargs="*", help="passed on to snakemake (after --)")
    args = parser.parse_args()
    run_dir = args.out.resolve()
    if args.summarize:
        earlier = run_dir / "workflow_time.json"
        recorded = json.loads(earlier.read_text()) if earlier.is_file() else {}
        summarize(run_dir, run_dir / "benchmark_config.yaml", recorded.get("wall_s"), recorded.get("cores", args.cores))
        return
    configfile = prepare(args.configfile.resolve(), run_dir, args.n_prompts, args.fresh)
    start = time.perf_counter()
    _snakemake(run_dir, configfile, "--cores", str(args.cores), *args.snakemake_args)
    wall_s = time.perf_counter() - start
    summarize(run_dir, configfile, wall_s, str(args.cores))


if __name__ == "__main__":
    main()
