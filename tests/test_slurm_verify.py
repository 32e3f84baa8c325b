"""The checks that tests/slurm/run_slurm_test.sh runs after its two runs, on made-up logs and directories."""

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("verify_slurm_run", REPO / "tests" / "slurm" / "verify_slurm_run.py")
verify = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = verify  # dataclasses look their module up there
_spec.loader.exec_module(verify)

# Excerpts of a SLURM run's snakemake output, in the format of snakemake 9 and the SLURM plugin 2.
LOG = """\
Building DAG of jobs...
SLURM run ID: dbe400ea-2fe6-484d-8202-d2193f6c24dd
[Tue Nov 24 09:54:08 2026]
localrule cache_model:
    output: results/models/tiny-a/manifest.json
    jobid: 1
    wildcards: model=tiny-a
Finished jobid: 1 (Rule: cache_model)
[Tue Nov 24 09:54:12 2026]
rule check_model:
    input: results/models/tiny-a/manifest.json
    output: results/model_checks/tiny-a.json
    jobid: 3
    wildcards: model=tiny-a
Job 3 has been submitted with SLURM jobid 2 (log: /run/.snakemake/slurm_logs/rule_check_model/tiny-a/2.log).
[Tue Nov 24 09:54:22 2026]
Finished jobid: 3 (Rule: check_model)
localrule all:
    input: results/models/tiny-a/manifest.json, results/model_checks/tiny-a.json
    jobid: 0
Finished jobid: 0 (Rule: all)
"""


def test_log_gives_the_run_id_and_every_job_with_where_it_ran():
    run = verify.parse_snakemake_log(LOG)
    assert run.run_id == "dbe400ea-2fe6-484d-8202-d2193f6c24dd"
    assert run.jobs["1"] == verify.Job(rule="cache_model", local=True, slurm_id=None, finished=True)
    assert run.jobs["3"] == verify.Job(rule="check_model", local=False, slurm_id="2", finished=True)
    assert run.jobs["0"].local and run.jobs["0"].finished
    assert verify.check_submissions(run) == []


def test_a_non_local_job_that_was_not_submitted_is_a_failure():
    run = verify.parse_snakemake_log(LOG.replace("Job 3 has been submitted with SLURM jobid 2", "Job 3 ran"))
    problems = verify.check_submissions(run)
    assert any("job 3 (rule check_model) is not a local rule but was not submitted" in p for p in problems)
    assert any("no job went through sbatch" in p for p in problems)


def test_a_local_run_log_has_no_run_id():
    problems = verify.check_submissions(verify.parse_snakemake_log(LOG.replace("SLURM run ID", "Run")))
    assert any("no SLURM run ID" in p for p in problems)


def test_unfinished_jobs_are_reported():
    run = verify.parse_snakemake_log(LOG.replace("Finished jobid: 3 (Rule: check_model)\n", ""))
    assert verify.check_submissions(run) == ["job 3 (rule check_model) did not finish"]


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_outputs_are_compared_byte_for_byte_and_logs_are_ignored(tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    _write(local, {"results/a.json": "1", "results/b/c.json": "2", "figures/f.svg": "<svg/>", "logs/x.log": "a"})
    _write(slurm, {"results/a.json": "1", "results/b/c.json": "2", "figures/f.svg": "<svg/>", "logs/x.log": "b"})
    lines, problems = verify.compare_outputs(local, slurm)
    assert problems == [] and len(lines) == 3 and all(line.endswith("identical") for line in lines)

    _write(slurm, {"results/a.json": "one", "results/only.json": "x"})
    (slurm / "figures" / "f.svg").unlink()
    _, problems = verify.compare_outputs(local, slurm)
    assert any(p.startswith("results/a.json: DIFFERENT") for p in problems)
    assert "results/only.json: only in the SLURM run" in problems
    assert "figures/f.svg: only in the local run" in problems


def test_an_empty_local_run_is_a_failure(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "slurm").mkdir()
    _, problems = verify.compare_outputs(tmp_path / "local", tmp_path / "slurm")
    assert problems == ["the local run wrote nothing under results, figures"]


def _executed_notebook(output: str, started: str) -> str:
    cell = {
        "cell_type": "code", "execution_count": 1, "id": "c1", "source": "print(1)",
        "metadata": {"papermill": {"start_time": started, "duration": 0.5}},
        "outputs": [{"output_type": "stream", "name": "stdout", "text": output}],
    }  # fmt: skip
    return json.dumps({"cells": [cell], "metadata": {"papermill": {"start_time": started}}, "nbformat": 4})


def test_executed_notebooks_are_compared_without_their_run_times(tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    _write(local, {"results/notebooks/01.ipynb": _executed_notebook("1\n", "2026-01-01T10:00")})
    _write(slurm, {"results/notebooks/01.ipynb": _executed_notebook("1\n", "2026-01-01T11:30")})
    assert verify.compare_outputs(local, slurm)[1] == []

    _write(slurm, {"results/notebooks/01.ipynb": _executed_notebook("2\n", "2026-01-01T11:30")})
    assert verify.compare_outputs(local, slurm)[1][0].startswith("results/notebooks/01.ipynb: DIFFERENT")


def test_measured_wall_times_are_compared_for_presence_only(tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    times = "results/attribution/tiny-a/times.parquet"
    _write(local, {times: "1.5 s", f"{times}.sha256": "aaaa", "results/attribution/tiny-a/summary.parquet": "x"})
    _write(slurm, {times: "2.5 s", f"{times}.sha256": "bbbb", "results/attribution/tiny-a/summary.parquet": "x"})
    assert verify.compare_outputs(local, slurm)[1] == []

    (slurm / times).unlink()
    assert verify.compare_outputs(local, slurm)[1] == [f"{times}: only in the local run"]
    # Every other file is still compared byte for byte.
    _write(slurm, {times: "2.5 s", "results/attribution/tiny-a/summary.parquet": "y"})
    assert verify.compare_outputs(local, slurm)[1][0].startswith(
        "results/attribution/tiny-a/summary.parquet: DIFFERENT"
    )
