"""Snakemake job: generate one task's dataset from the cached tokenizer and the task's config section."""

from pathlib import Path

from circuit_reuse.datasets import generate_records, save_dataset
from circuit_reuse.workflow import workflow_job

with workflow_job(snakemake):  # noqa: F821 (snakemake injects this object)
    task = snakemake.wildcards.task  # noqa: F821
    config = dict(snakemake.params.options)  # noqa: F821
    options = {k: v for k, v in config.items() if k not in ("n_prompts", "seed")}
    tokenizer_dir = Path(snakemake.input.tokenizer).parent  # noqa: F821
    records, meta = generate_records(task, config["n_prompts"], config["seed"], tokenizer_dir, **options)
    meta["config"] = config
    save_dataset(snakemake.output.dataset, records, meta)  # noqa: F821
    dropped = {k: v for k, v in meta["dropped"].items() if v}
    print(f"{task}: {len(records)} prompts, seed {config['seed']}; dropped multi-token items: {dropped or 'none'}")
    for record in records[:3]:
        print(f"  {record['clean_text']!r} -> {record['answer_str']!r}")
