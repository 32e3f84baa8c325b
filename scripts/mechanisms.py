"""Snakemake job: one model's mechanism readouts (attention from END to each role, OV copy circuits) as tidy tables."""

from pathlib import Path

from circuit_reuse.datasets import load_dataset
from circuit_reuse.io import read_json, write_parquet
from circuit_reuse.mechanisms import circuit_read_heads, intervention_reads, mechanism_tables, with_edited_heads
from circuit_reuse.models import load_model
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)
with model_job(job) as clock:
    tasks, target, section = job.params.tasks, job.params.target, job.params.intervention
    with clock.phase("model load"):
        model = load_model(Path(job.input.model).parent, device=job.params.device)
    datasets = {task: load_dataset(path) for task, path in zip(tasks, job.input.datasets, strict=True)}
    circuits = {task: read_json(path) for task, path in zip(tasks, job.input.circuits, strict=True)}
    heads = {task: circuit_read_heads(circuit) for task, circuit in circuits.items()}
    conditions = {}
    if target is not None:  # the target task's heads are also read under the intervention's edits
        where = f"intervention.heads.{job.wildcards.model}"
        conditions[target], sets = intervention_reads(section, circuits, model.cfg.n_layers, model.cfg.n_heads, where)
        heads[target] = with_edited_heads(heads[target], sets)
        if section.get("n_prompts"):
            datasets[target] = datasets[target].subset(slice(0, section["n_prompts"]))
    tables = mechanism_tables(model, datasets, heads, conditions, batch_size=section["batch_size"])
    provenance = {"intervention": section, "tasks": tasks, "target": target}
    for name, table in tables.items():
        table.insert(0, "model", job.wildcards.model)
        write_parquet(getattr(job.output, name), table, config=provenance)
    print(tables["copy_scores"].to_string())
