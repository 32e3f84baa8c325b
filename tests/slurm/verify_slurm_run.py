"""Check a SLURM run of the workflow against sacct and against a local run of the same configuration.

run_slurm_test.sh calls this after running the smoke configuration twice (locally, then through the
SLURM profile). It checks that

1. every job of a non-local rule in the SLURM run was submitted with sbatch (the snakemake log names
   the SLURM job id of each), and at least one was;
2. sacct lists exactly those SLURM jobs under the run's ID (the job name the plugin gives every job
   of one run), all COMPLETED;
3. every file under results/ and figures/ is byte-identical (sha256) in the local and the SLURM run,
   except that an executed notebook is compared without its metadata (papermill records when and how long
   each cell ran there): its cells, their sources and their outputs must be identical; and files of wall
   times measured by the jobs (MEASURED_OUTPUTS) must exist in both runs.

It prints the sacct listing and the comparison, and exits with status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT_DIRS = ("results", "figures")
# Outputs that hold wall times measured by the jobs (the attribution comparison's), with their recorded
# sha256: no two runs agree on them, so they are compared for presence alone.
MEASURED_OUTPUTS = ("results/attribution/*/times.parquet*", "results/tables/attribution_times/*")
SACCT_LISTING = "JobID,JobName%36,Comment%45,Partition,Account,AllocCPUS,ReqMem,MaxRSS,Elapsed,State,ExitCode,NodeList"

_RUN_ID = re.compile(r"SLURM run ID: (\S+)")
_HEADER = re.compile(r"^(local)?rule (\S+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")
_FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\S+)\)")


@dataclass
class Job:
    rule: str
    local: bool
    slurm_id: str | None = None
    finished: bool = False


@dataclass
class SnakemakeRun:
    run_id: str | None = None
    jobs: dict[str, Job] = field(default_factory=dict)  # snakemake job id -> job


def parse_snakemake_log(text: str) -> SnakemakeRun:
    """Jobs of a snakemake run from its log: rule, local or not, SLURM job id, whether it finished."""
    run = SnakemakeRun()
    header: tuple[str, bool] | None = None
    for line in text.splitlines():
        if match := _RUN_ID.search(line):
            run.run_id = match.group(1)
        elif match := _HEADER.match(line):
            header = (match.group(2), bool(match.group(1)))
        elif header and (match := _JOBID.match(line)):
            run.jobs.setdefault(match.group(1), Job(rule=header[0], local=header[1]))
            header = None
        elif match := _SUBMITTED.search(line):
            run.jobs.setdefault(match.group(1), Job(rule="?", local=False)).slurm_id = match.group(2)
        elif match := _FINISHED.search(line):
            run.jobs.setdefault(match.group(1), Job(rule=match.group(2), local=False)).finished = True
    return run


def check_submissions(run: SnakemakeRun) -> list[str]:
    """Problems with the run's jobs: a non-local job that was not submitted, a job that did not finish."""
    problems = []
    if run.run_id is None:
        problems.append("the snakemake log names no SLURM run ID: was the slurm executor used?")
    for jobid, job in sorted(run.jobs.items(), key=lambda item: int(item[0])):
        if not job.local and job.slurm_id is None:
            problems.append(f"job {jobid} (rule {job.rule}) is not a local rule but was not submitted to SLURM")
        if not job.finished:
            problems.append(f"job {jobid} (rule {job.rule}) did not finish")
    if not any(job.slurm_id for job in run.jobs.values()):
        problems.append("no job went through sbatch: the DAG has no non-local job to submit")
    return problems


def sacct_states(run_id: str, since: str) -> dict[str, str]:
    """SLURM job id -> state, for the jobs that sacct lists under this run's job name."""
    out = subprocess.run(
        ["sacct", "-X", "--parsable2", "--noheader", "--name", run_id, "--starttime", since, "--format=JobIDRaw,State"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def check_sacct(run: SnakemakeRun, since: str, attempts: int = 10) -> list[str]:
    """Problems with what sacct reports: a submitted job missing from it, or not COMPLETED."""
    submitted = {job.slurm_id: job for job in run.jobs.values() if job.slurm_id}
    states: dict[str, str] = {}
    for _ in range(attempts):  # accounting records reach slurmdbd a moment after the job ends
        states = sacct_states(run.run_id, since)
        if set(submitted) <= set(states) and all(states[i] == "COMPLETED" for i in submitted):
            break
        time.sleep(2)
    problems = []
    for slurm_id, job in sorted(submitted.items(), key=lambda item: int(item[0])):
        state = states.get(slurm_id)
        if state is None:
            problems.append(f"SLURM job {slurm_id} (rule {job.rule}) is missing from sacct")
        elif state != "COMPLETED":
            problems.append(f"SLURM job {slurm_id} (rule {job.rule}) is {state} in sacct, not COMPLETED")
    for slurm_id in sorted(set(states) - set(submitted), key=int):
        problems.append(f"sacct lists SLURM job {slurm_id} under this run that snakemake did not submit")
    return problems


def notebook_content(path: Path) -> bytes:
    """An executed notebook's cells (source, outputs, execution counts) without any metadata."""
    notebook = json.loads(path.read_text())
    cells = [{key: value for key, value in cell.items() if key not in ("metadata", "id")} for cell in notebook["cells"]]
    return json.dumps(cells, sort_keys=True).encode()


def digests(workdir: Path) -> dict[str, str]:
    """sha256 of every file under the run's output directories, by path relative to the working directory."""
    found = {}
    for name in OUTPUT_DIRS:
        for path in sorted((workdir / name).rglob("*")):
            # An executed notebook's recorded sha256 covers its run times too; its cells are compared instead.
            if path.is_file() and not path.name.endswith(".ipynb.sha256"):
                relative = path.relative_to(workdir).as_posix()
                if any(fnmatch.fnmatch(relative, pattern) for pattern in MEASURED_OUTPUTS):
                    found[relative] = "measured (wall times): present"
                    continue
                content = notebook_content(path) if path.suffix == ".ipynb" else path.read_bytes()
                found[relative] = hashlib.sha256(content).hexdigest()
    return found


def compare_outputs(local: Path, slurm: Path) -> tuple[list[str], list[str]]:
    """Report lines and problems from comparing the two runs' outputs byte for byte."""
    a, b = digests(local), digests(slurm)
    lines, problems = [], []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            verdict = "only in the local run"
        elif path not in a:
            verdict = "only in the SLURM run"
        elif a[path] != b[path]:
            verdict = f"DIFFERENT (local {a[path][:16]}, SLURM {b[path][:16]})"
        else:
            verdict = "identical"
        lines.append(f"  {(a.get(path) or b[path])[:16]}  {path}  {verdict}")
        if verdict != "identical":
            problems.append(f"{path}: {verdict}")
    if not a:
        problems.append(f"the local run wrote nothing under {', '.join(OUTPUT_DIRS)}")
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snakemake-log", type=Path, required=True, help="output of the SLURM run's snakemake")
    parser.add_argument("--local", type=Path, required=True, help="working directory of the local run")
    parser.add_argument("--slurm", type=Path, required=True, help="working directory of the SLURM run")
    parser.add_argument("--since", required=True, help="sacct --starttime: when the test started")
    args = parser.parse_args(argv)

    run = parse_snakemake_log(args.snakemake_log.read_text())
    problems = check_submissions(run)
    print(f"Snakemake jobs of the SLURM run (run ID {run.run_id}):")
    for jobid, job in sorted(run.jobs.items(), key=lambda item: int(item[0])):
        where = f"sbatch, SLURM job {job.slurm_id}" if job.slurm_id else "local rule, on the submit host"
        print(f"  job {jobid:>3}  {job.rule:<24} {where}")
    if run.run_id:
        problems += check_sacct(run, args.since)
        print(f"\nsacct --name {run.run_id} --format={SACCT_LISTING}")
        listing = subprocess.run(
            ["sacct", "--name", run.run_id, "--starttime", args.since, f"--format={SACCT_LISTING}"],
            capture_output=True,
            text=True,
        )
        print(listing.stdout + listing.stderr, end="")

    lines, output_problems = compare_outputs(args.local, args.slurm)
    problems += output_problems
    print(f"\nOutputs under {' and '.join(d + '/' for d in OUTPUT_DIRS)}, local run vs SLURM run (sha256):")
    print("\n".join(lines))
    identical = sum(line.endswith("identical") for line in lines)
    print(f"  {identical} of {len(lines)} files identical")

    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    submitted = sum(1 for job in run.jobs.values() if job.slurm_id)
    print(f"\nOK: {submitted} job(s) went through sbatch and completed; {identical} output files match the local run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
