"""Snakemake job: select each stage's heads, label their roles and write the circuit of a model and task."""

from pathlib import Path

from circuit_reuse.circuits import SCORE_NOISE, grid_from_table, save_circuit
from circuit_reuse.datasets import load_dataset
from circuit_reuse.discovery import StageSpec, assemble_circuit
from circuit_reuse.io import provenance, read_parquet
from circuit_reuse.models import load_model
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)
with model_job(job) as clock:
    specs = [StageSpec(**{**s, "components": tuple(s["components"])}) for s in job.params.stages]
    grids = {spec.name: grid_from_table(read_parquet(path)) for spec, path in zip(specs, job.input.grids, strict=True)}
    dataset = load_dataset(job.input.dataset)
    if job.params.n_prompts:
        dataset = dataset.subset(slice(0, job.params.n_prompts))
    with clock.phase("model load"):
        model = load_model(Path(job.input.model).parent, device=job.params.device)
    circuit = assemble_circuit(
        job.wildcards.model, model, dataset, specs, grids, job.params.selection, read_parquet(job.input.detectors)
    )
    circuit.provenance = provenance(dict(job.params))
    save_circuit(job.output.circuit, circuit)
    for stage in circuit.stages:
        if stage.near_tie:
            print(f"stage {stage.name}: near tie, selection margin {stage.margin:.2g} < score noise {SCORE_NOISE:g}")
    for info in circuit.head_infos:
        print(f"{info.layer}.{info.head}  stage {info.stage:<16} role {info.role:<16} score {info.score:+.3f}")
