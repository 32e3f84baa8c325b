"""Where a job's time goes (`JobClock`, its phases file, `job_times`) and a run's critical path."""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from circuit_reuse.critical_path import critical_path, run_jobs
from circuit_reuse.workflow import (
    STARTUP_PHASES,
    JobClock,
    job_times,
    phases_path,
    rule_times,
    seconds_since_process_start,
    workflow_job,
)

REPO = Path(__file__).resolve().parent.parent

# A job as Snakemake runs one: a fresh interpreter, an import, then the body inside workflow_job.
SLEEPING_JOB = """
import time
from types import SimpleNamespace
from circuit_reuse.workflow import workflow_job

job = SimpleNamespace(input=[], output=[], log=[{log!r}])
with workflow_job(job) as clock:
    with clock.phase("model load"):
        time.sleep(0.3)
    time.sleep(0.2)
"""


def test_a_job_writes_its_split_beside_its_benchmark_and_the_phases_add_up(tmp_path):
    log = tmp_path / "logs" / "rule" / "a.b.log"
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", SLEEPING_JOB.format(log=str(log))], check=True, cwd=tmp_path)
    outside = time.perf_counter() - begin
    split = json.loads((tmp_path / "benchmarks" / "rule" / "a.b.phases.json").read_text())
    assert set(split) == {*STARTUP_PHASES, "compute", "process"}
    assert split["model load"] == pytest.approx(0.3, abs=0.1)
    assert split["compute"] == pytest.approx(0.2, abs=0.1)
    assert split["start-up"] > 0  # the interpreter and the import before the body
    assert sum(split[name] for name in (*STARTUP_PHASES, "compute")) == pytest.approx(split["process"], abs=1e-3)
    assert split["process"] <= outside
    assert log.read_text().splitlines()[-1].startswith("job time: start-up ")


def test_the_clock_counts_from_the_process_start_and_names_unknown_phases():
    assert 0 < seconds_since_process_start() < time.perf_counter() + 60
    clock = JobClock()
    clock.add("notebook kernel", 1.5)
    clock.add("notebook kernel", 0.5)
    assert clock.split()["notebook kernel"] == 2.0
    with pytest.raises(ValueError, match="unknown job phase 'imports'; phases: start-up"):
        clock.add("imports", 1.0)


def test_phases_path_mirrors_the_log_under_benchmarks():
    assert phases_path("logs/patch_stage/m/t/s.log").as_posix() == "benchmarks/patch_stage/m/t/s.phases.json"
    assert phases_path("/run/logs/x/qwen2.5-0.5b.log").as_posix() == "/run/benchmarks/x/qwen2.5-0.5b.phases.json"
    with pytest.raises(ValueError, match="not under a logs/ directory"):
        phases_path("elsewhere/job.log")


def _benchmark(root, relative, seconds, split=None):
    path = root / "benchmarks" / f"{relative}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\tmax_rss\n{seconds}\t100\n")
    if split is not None:
        path.with_suffix(".phases.json").write_text(json.dumps(split))


def test_job_times_joins_each_split_and_counts_snakemakes_share_as_start_up(tmp_path):
    split = {"start-up": 1.0, "input checks": 0.5, "model load": 2.0, "notebook kernel": 0.0, "output digests": 0.0}
    split.update(compute=3.0, process=6.5)
    _benchmark(tmp_path, "patch_stage/m/t/s", 7.0, split)
    _benchmark(tmp_path, "all_done", 1.0)  # a job that wrote no split
    times = job_times(tmp_path).set_index("rule")
    row = times.loc["patch_stage"]
    assert row["snakemake"] == pytest.approx(0.5)
    assert row["startup"] == pytest.approx(1.0 + 0.5 + 2.0 + 0.5)
    assert row["compute"] == 3.0 and row["notebook kernel"] == 0.0
    assert pd.isna(times.loc["all_done", "startup"]) and pd.isna(times.loc["all_done", "gpu_peak_mb"])
    _benchmark(tmp_path, "patch_stage/m/t/other", 3.0, {**split, "process": 2.5, "compute": -1.0})
    per_rule = rule_times(job_times(tmp_path)).set_index("rule")
    assert per_rule.loc["patch_stage", "jobs"] == 2 and per_rule.loc["patch_stage", "seconds"] == 10.0
    assert per_rule.loc["patch_stage", "startup"] == pytest.approx(4.0 + 4.0)
    assert list(per_rule.index) == ["patch_stage", "all_done"]


LOG = """Building DAG of jobs...
[Fri Dec  4 01:29:28 2026]
localrule make_dataset:
    input: results/tokenizer/tokenizer.json
    output: results/datasets/ioi.jsonl
    log: logs/make_dataset/ioi.log
    jobid: 1
    benchmark: benchmarks/make_dataset/ioi.tsv
    wildcards: task=ioi
Shell command: None
localrule cache_model:
    output: results/models/m/manifest.json
    jobid: 2
    benchmark: benchmarks/cache_model/m.tsv
Select jobs to execute...
localrule patch_stage:
    input: results/models/m/manifest.json, results/datasets/ioi.jsonl
    output: results/patching/m/ioi/movers.parquet
    jobid: 3
    benchmark: benchmarks/patch_stage/m/ioi/movers.tsv
    reason: Missing output files: results/patching/m/ioi/movers.parquet
rule faithfulness:
    input: results/patching/m/ioi/movers.parquet, results/datasets/ioi.jsonl
    output: results/faithfulness/m.ioi.parquet
    jobid: 4
    benchmark: benchmarks/faithfulness/m.ioi.tsv
localrule all:
    input: results/faithfulness/m.ioi.parquet
    jobid: 0
Finished jobid: 0 (Rule: all)
"""


def test_the_critical_path_is_the_longest_chain_by_measured_time(tmp_path):
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    (tmp_path / ".snakemake" / "log" / "2026-12-04T012857.snakemake.log").write_text(LOG)
    jobs = run_jobs(tmp_path)
    assert [job.key for job in jobs] == ["make_dataset/ioi", "cache_model/m", "patch_stage/m/ioi/movers",
                                         "faithfulness/m.ioi"]  # fmt: skip
    assert jobs[2].inputs == {"results/models/m/manifest.json", "results/datasets/ioi.jsonl"}
    times = pd.DataFrame(
        [
            {"rule": "make_dataset", "job": "ioi", "seconds": 2.0},
            {"rule": "cache_model", "job": "m", "seconds": 5.0},
            {"rule": "patch_stage", "job": "m/ioi/movers", "seconds": 4.0},
            {"rule": "faithfulness", "job": "m.ioi", "seconds": 1.0},
        ]
    )
    chain = critical_path(jobs, times)
    assert list(chain["rule"]) == ["cache_model", "patch_stage", "faithfulness"]
    assert list(chain["finished_s"]) == [5.0, 9.0, 10.0]
    with pytest.raises(FileNotFoundError, match="no Snakemake log"):
        run_jobs(tmp_path / "elsewhere")


def test_a_job_clock_inside_a_fake_job_records_nothing_for_phases_it_never_entered(tmp_path):
    job = SimpleNamespace(input=[], output=[], log=[str(tmp_path / "logs" / "j.log")])
    with workflow_job(job):
        pass
    split = json.loads((tmp_path / "benchmarks" / "j.phases.json").read_text())
    assert split["model load"] == 0.0 and split["notebook kernel"] == 0.0


def _finished_run(run_dir, n_prompts, computes, startup, wall_s):
    """A run directory as benchmark_workflow.py leaves one: its config, rule_times.csv, workflow_time.json."""
    run_dir.mkdir()
    config = yaml.safe_load((REPO / "workflow" / "configs" / "smoke.yaml").read_text())
    for task in config["tasks"].values():
        task["n_prompts"] = n_prompts
    config["faithfulness"]["n_prompts"] = 200
    (run_dir / "benchmark_config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"rule": rule, "jobs": 1, "startup": startup, "compute": compute} for rule, compute in computes.items()]
    pd.DataFrame(rows).to_csv(run_dir / "rule_times.csv", index=False)
    job_seconds = sum(computes.values()) + startup * len(computes)
    summary = {"wall_s": wall_s, "job_seconds": job_seconds, "cores": "2"}
    (run_dir / "workflow_time.json").write_text(json.dumps(summary))


def test_two_runs_extrapolate_each_rules_compute_linearly_in_n_and_faithfulness_up_to_its_cap(tmp_path):
    _finished_run(tmp_path / "n8", 8, {"patch_stage": 10.0, "faithfulness": 8.0, "notebook_x": 3.0}, 2.0, 13.0)
    _finished_run(tmp_path / "n24", 24, {"patch_stage": 30.0, "faithfulness": 24.0, "notebook_x": 2.0}, 4.0, 33.0)
    script = REPO / "scripts" / "benchmark_workflow.py"
    command = [sys.executable, str(script), "--extrapolate", str(tmp_path / "n8"), str(tmp_path / "n24")]
    printed = subprocess.run([*command, "--to-n", "1000"], check=True, capture_output=True, text=True).stdout
    # patch_stage: 30 + 1.25 s per prompt x 976; faithfulness: 24 + 1 s per prompt x 176 (it stops at its
    # 200 prompts); notebook_x: no growth (a negative fit counts as none).
    patch, faithfulness, notebook = 30 + 1.25 * 976, 24 + 176, 2.0
    total = patch + faithfulness + notebook + 3 * 3.0
    assert f"estimate at N = 1000: {total:.0f} s of job time" in printed
    assert f"wall time about {total * 33 / 68 / 3600:.2f} h on 2 cores" in printed  # 33 s of wall, 68 of jobs
