"""Snakemake script: execute one analysis notebook with papermill (see circuit_reuse.notebooks)."""

import time

from circuit_reuse.notebooks import cell_seconds, run_notebook
from circuit_reuse.workflow import workflow_job

job = snakemake  # noqa: F821 (snakemake injects this object)

with workflow_job(job) as clock:
    print(f"running {job.input.notebook} -> {job.output.notebook}")
    begin = time.perf_counter()
    run_notebook(job.input.notebook, job.output.notebook, job.params.parameters)
    clock.add("notebook kernel", time.perf_counter() - begin - cell_seconds(job.output.notebook))
