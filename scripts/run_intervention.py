"""Snakemake job: the attention-pattern intervention for one model, on its target task's prompts, as tidy tables."""

from pathlib import Path

from circuit_reuse.datasets import load_dataset
from circuit_reuse.intervention import InterventionSettings, intervention_experiment, resolve_head_sets
from circuit_reuse.io import read_json, read_parquet, write_parquet
from circuit_reuse.models import load_model
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)
with model_job(job) as clock:
    section = job.params.intervention
    settings = InterventionSettings.from_config(section)
    with clock.phase("model load"):
        model = load_model(Path(job.input.model).parent, device=job.params.device)
    dataset = load_dataset(job.input.dataset)
    circuits = {task: read_json(path) for task, path in zip(job.params.circuit_tasks, job.input.circuits, strict=True)}
    sets = resolve_head_sets(
        section["heads"],
        circuits,
        model.cfg.n_layers,
        model.cfg.n_heads,
        settings.mover_stage,
        where=f"intervention.heads.{job.wildcards.model}",
    )
    for head_set in sets.values():
        heads = ", ".join(f"{layer}.{head}" for layer, head in head_set.heads) or "none"
        print(f"{head_set.name} ({head_set.source}): {heads}{'  [' + head_set.note + ']' if head_set.note else ''}")
    scores = read_parquet(job.input.mover_scores)
    importance = {(int(r.layer), int(r.head)): float(r.score) for r in scores.itertuples()}
    tables = intervention_experiment(model, dataset, sets, settings, importance)
    for name, table in tables.items():
        table.insert(0, "model", job.wildcards.model)
        write_parquet(getattr(job.output, name), table, config={"intervention": section, "n_prompts": len(dataset)})
    print(tables["accuracy"][["condition", "status", "heads", "accuracy", "ci_low", "ci_high"]].to_string())
