"""Snakemake job: evaluate one model on one task, clean and corrupted; per-prompt results and a summary."""

from pathlib import Path

from circuit_reuse.datasets import load_dataset
from circuit_reuse.evaluation import evaluate, summarize
from circuit_reuse.io import write_parquet
from circuit_reuse.models import load_model
from circuit_reuse.workflow import model_job

with model_job(snakemake) as clock:  # noqa: F821 (snakemake injects this object)
    model_name, task = snakemake.wildcards.model, snakemake.wildcards.task  # noqa: F821
    settings = snakemake.params.evaluation  # noqa: F821
    dataset = load_dataset(snakemake.input.dataset)  # noqa: F821
    with clock.phase("model load"):
        model = load_model(Path(snakemake.input.model).parent, device=snakemake.params.device)  # noqa: F821
    per_prompt = evaluate(model, dataset, batch_size=settings["batch_size"])
    per_prompt.insert(0, "model", model_name)
    summary = summarize(
        per_prompt,
        model=model_name,
        n_resamples=settings["bootstrap_samples"],
        level=settings["ci_level"],
        seed=settings["bootstrap_seed"],
    )
    provenance = {
        "model": model_name,
        "model_spec": snakemake.params.model_spec,  # noqa: F821
        "task": task,
        "dataset": {k: dataset.meta.get(k) for k in ("n_prompts", "seed", "config", "tokenizer")},
        "evaluation": settings,
    }
    write_parquet(snakemake.output.prompts, per_prompt, config=provenance)  # noqa: F821
    write_parquet(snakemake.output.summary, summary, config=provenance)  # noqa: F821
    print(summary.to_string(index=False))
