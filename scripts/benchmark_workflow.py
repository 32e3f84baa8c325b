"""Time the whole workflow from nothing: run a config in an empty directory, then print the wall time, where
the jobs' time went (start-up, input checks, model loads, notebook kernels, compute) per rule, and the
critical path.

    python scripts/benchmark_workflow.py                                   # paper_shapes.yaml, N as configured
    python scripts/benchmark_workflow.py --n-prompts 16 --cores 2         # every task cut to 16 prompts
    python scripts/benchmark_workflow.py --configfile workflow/configs/smoke.yaml --out runs/benchmark/smoke

The run directory keeps everything (its results, its job logs, `benchmarks/`); the tables printed are also
written there as `workflow_time.json` and `rule_times.csv`. `--summarize` prints them again for a finished
run without running anything. Two finished runs of one config at two N give an estimate for a third N:

    python scripts/benchmark_workflow.py --extrapolate runs/benchmark/n8 runs/benchmark/n24 --to-n 1000

Each rule's compute is fitted as a + b * N through the two runs (N capped where the rule caps its prompts:
faithfulness at `faithfulness.n_prompts`), its start-up is the runs' mean (it does not grow with N), and
the wall time is the estimated job time times the wall-to-job-time ratio of the larger run.
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

from circuit_reuse.config import load_config
from circuit_reuse.critical_path import critical_path, run_jobs
from circuit_reuse.workflow import SPLIT_COLUMNS, STARTUP_PHASES, job_times, rule_times

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"


def _snakemake(run_dir: Path, configfile: Path, *args: str) -> None:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE)]
    command += ["--configfile", str(configfile), "--directory", str(run_dir), *args]
    subprocess.run(command, check=True)


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
        "machine": f"{_processor()}, {os.cpu_count()} CPUs",
        "wall_s": wall_s,
        "jobs": len(times),
        "job_seconds": job_seconds,
        "startup_seconds": startup,
        "startup_share_of_job_time": startup / job_seconds,
        "phases": {name: float(times[name].sum()) for name in SPLIT_COLUMNS},
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


def _rule_n(rule: str, n_prompts: int, config: dict) -> int:
    """The prompts a rule's jobs run on when every task has `n_prompts` (faithfulness caps its own)."""
    cap = config["faithfulness"]["n_prompts"] if rule == "faithfulness" else None
    return min(n_prompts, cap) if cap else n_prompts


def extrapolate(run_dirs: list[Path], to_n: int) -> pd.DataFrame:
    """Per rule: start-up, compute fitted linearly in N through two runs, and both at `to_n` (see above)."""
    if len(run_dirs) != 2:
        raise SystemExit("--extrapolate takes exactly two run directories")
    runs = []
    for run_dir in run_dirs:
        config = load_config(run_dir / "benchmark_config.yaml")  # with the schema's defaults filled in
        sizes = {task["n_prompts"] for task in config["tasks"].values()}
        if len(sizes) != 1:
            raise SystemExit(f"{run_dir}: its tasks have different n_prompts {sorted(sizes)}; run it with --n-prompts")
        summary = json.loads((run_dir / "workflow_time.json").read_text())
        runs.append((sizes.pop(), config, pd.read_csv(run_dir / "rule_times.csv").set_index("rule"), summary))
    (n_a, config, a, _), (n_b, _, b, summary_b) = sorted(runs, key=lambda run: run[0])
    if n_a == n_b:
        raise SystemExit(f"both runs have N = {n_a}: the fit needs two different N")
    rows = []
    for rule in b.index.union(a.index):
        x_a, x_b, x_to = (_rule_n(rule, n, config) for n in (n_a, n_b, to_n))
        compute_a, compute_b = a["compute"].get(rule, 0.0), b["compute"].get(rule, 0.0)
        slope = max(0.0, (compute_b - compute_a) / (x_b - x_a)) if x_b != x_a else 0.0
        startup = (a["startup"].get(rule, 0.0) + b["startup"].get(rule, 0.0)) / 2
        compute = max(compute_b + slope * (x_to - x_b), 0.0)
        rows.append({"rule": rule, "jobs": int(b["jobs"].get(rule, 0)), f"compute_N{n_a}": compute_a,
                     f"compute_N{n_b}": compute_b, "s_per_prompt": slope, "startup": startup,
                     f"compute_N{to_n}": compute, f"seconds_N{to_n}": startup + compute})  # fmt: skip
    table = pd.DataFrame(rows).sort_values(f"seconds_N{to_n}", ascending=False, ignore_index=True)
    job_seconds = table[f"seconds_N{to_n}"].sum()
    wall_ratio = summary_b["wall_s"] / summary_b["job_seconds"]
    print(table.to_string(index=False, float_format=lambda value: f"{value:.1f}"))
    print(
        f"\nestimate at N = {to_n}: {job_seconds:.0f} s of job time ({job_seconds / 3600:.2f} h), of which start-up "
        f"{table['startup'].sum():.0f} s; wall time about {job_seconds * wall_ratio / 3600:.2f} h on "
        f"{summary_b['cores']} cores (N = {n_b}'s wall-to-job-time ratio {wall_ratio:.2f})"
    )
    return table


def _processor() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    parser.add_argument("--extrapolate", nargs=2, type=Path, metavar="RUN_DIR", help="two finished runs to fit")
    parser.add_argument("--to-n", type=int, default=1000, help="the N --extrapolate estimates for")
    parser.add_argument("snakemake_args", nargs="*", help="passed on to snakemake (after --)")
    args = parser.parse_args()
    if args.extrapolate:
        extrapolate([path.resolve() for path in args.extrapolate], args.to_n)
        return
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
