"""Snakemake job: faithfulness of every circuit of one model on one task's prompts, as tidy tables."""

from pathlib import Path

from circuit_reuse.circuits import grid_from_table, load_circuit
from circuit_reuse.datasets import load_dataset
from circuit_reuse.faithfulness import FaithfulnessSettings, faithfulness_experiment
from circuit_reuse.io import read_parquet, write_parquet
from circuit_reuse.models import load_model
from circuit_reuse.overlap import normalised_importance
from circuit_reuse.tasks import get_task
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)
with model_job(job) as clock:
    section = job.params.faithfulness
    task = job.wildcards.task
    settings = FaithfulnessSettings.from_config(section)
    with clock.phase("model load"):
        model = load_model(Path(job.input.model).parent, device=job.params.device)
    dataset = load_dataset(job.input.dataset)
    corruption = (
        section["reference_corruption"].get(task)
        or get_task(task).ablation_reference
        or dataset.meta.get("default_corruption")
    )
    circuits = {circuit.task: sorted(circuit.heads()) for circuit in map(load_circuit, job.input.circuits)}
    grids = {path: grid_from_table(read_parquet(path)) for path in job.input.scores}
    importance = normalised_importance(grids)
    print(f"{job.wildcards.model} {task}: reference distribution {corruption!r}, ablations {settings.ablations}")
    tables = faithfulness_experiment(model, dataset, circuits, importance, settings, corruption)
    for name, table in tables.items():
        table.insert(0, "model", job.wildcards.model)
        write_parquet(getattr(job.output, name), table, config={"faithfulness": section, "reference": corruption})
    own = tables["summary"][tables["summary"]["kind"] == "circuit"]
    print(own[["circuit", "ablation", "n_heads", "metric_circuit", "metric_model", "metric_empty", "f"]].to_string())
