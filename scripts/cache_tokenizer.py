"""Snakemake job: cache the GPT-2 tokenizer files (config, $CIRCUIT_REUSE_TOKENIZER or the Hub) with a manifest."""

from pathlib import Path

from circuit_reuse.datasets.vocab import cache_tokenizer
from circuit_reuse.workflow import workflow_job

with workflow_job(snakemake):  # noqa: F821 (snakemake injects this object)
    dest = Path(snakemake.output.manifest).parent  # noqa: F821
    manifest = cache_tokenizer(
        dest,
        tokenizer_dir=snakemake.params.tokenizer,  # noqa: F821
        hub_timeout=snakemake.config["hub_timeout"],  # noqa: F821
    )
    info = manifest["tokenizer"]
    print(f"cached tokenizer ({manifest['source']}): {info['vocab_size']} tokens, fingerprint {info['fingerprint']}")
