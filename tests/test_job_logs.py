"""What a workflow job prints: one traceback per failure, in its log and on the console."""

import subprocess
import sys

FAILING_JOB = """
from circuit_reuse.workflow import job_logging

with job_logging({log!r}):
    print("working")
    raise ValueError("the job's own error")
"""


def test_a_failing_job_prints_its_traceback_once_to_the_log_and_once_to_the_console(tmp_path):
    log = tmp_path / "job.log"
    result = subprocess.run([sys.executable, "-c", FAILING_JOB.format(log=str(log))], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.count("Traceback") == 1 and "ValueError: the job's own error" in result.stderr
    logged = log.read_text()
    assert logged.count("Traceback") == 1 and "ValueError: the job's own error" in logged
    assert logged.startswith("working\n")
