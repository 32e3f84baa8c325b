"""Snakemake job: previous-token, duplicate-token and induction scores of every head of one model."""

from pathlib import Path

from circuit_reuse.head_roles import detector_scores
from circuit_reuse.io import write_parquet
from circuit_reuse.models import load_model
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)
with model_job(job) as clock:
    with clock.phase("model load"):
        model = load_model(Path(job.input.model).parent, device=job.params.device)
    table = detector_scores(model, **job.params.detectors)
    table.insert(0, "model", job.wildcards.model)
    write_parquet(job.output.detectors, table, config=dict(job.params))
