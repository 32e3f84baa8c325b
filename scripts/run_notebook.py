"""Snakemake script: execute one analysis notebook with papermill (see circuit_reuse.notebooks)."""

from circuit_reuse.notebooks import run_notebook
from circuit_reuse.workflow import job_logging

job = snakemake  # noqa: F821 (snakemake injects this object)

with job_logging(job.log[0]):
    print(f"running {job.input.notebook} -> {job.output.notebook}")
    run_notebook(job.input.notebook, job.output.notebook, job.params.parameters)
