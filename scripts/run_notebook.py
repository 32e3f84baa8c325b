"""Snakemake script: execute one analysis notebook with papermill (see circuit_reuse.notebooks)."""

from circuit_reuse.notebooks import run_notebook
from circuit_reuse.workflow import workflow_job

job = snakemake  # noqa: F821 (snakemake injects this object)

with workflow_job(job):
    print(f"running {job.input.notebook} -> {job.output.notebook}")
    run_notebook(job.input.notebook, job.output.notebook, job.params.parameters)
