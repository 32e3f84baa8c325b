"""Snakemake job: train one organism (source: trained) and cache it with its manifest and training curve."""

from pathlib import Path

from circuit_reuse.models import cache_model
from circuit_reuse.training import organism_spec
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)

with model_job(job):
    spec = organism_spec(job.wildcards.model, job.params.spec, job.params.tasks)
    tokenizer_dir = Path(job.input.tokenizer).parent
    manifest = cache_model(spec, Path(job.output.manifest).parent, tokenizer_dir=tokenizer_dir)
    print(f"cached organism {spec.name}: {manifest['files']['model.safetensors']['sha256']}")
