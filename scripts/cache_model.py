"""Snakemake job: resolve one model spec into a cached Hugging Face directory with a manifest."""

from pathlib import Path

from circuit_reuse.models import ModelSpec, cache_model
from circuit_reuse.workflow import workflow_job

with workflow_job(snakemake):  # noqa: F821 (snakemake injects this object)
    spec = ModelSpec.from_config(snakemake.wildcards.model, snakemake.params.spec)  # noqa: F821
    manifest = cache_model(
        spec,
        Path(snakemake.output.manifest).parent,  # noqa: F821
        tokenizer_dir=snakemake.params.tokenizer,  # noqa: F821
        # From the config, not a param: a new timeout must not rerun (and so re-download) a cached model.
        hub_timeout=snakemake.config["hub_timeout"],  # noqa: F821
    )
    print(f"cached {spec.name}: {len(manifest['files'])} files, config {manifest['config'].get('n_layer')} layers")
