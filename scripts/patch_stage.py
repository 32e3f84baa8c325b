"""Snakemake job: the scores of every head for one model, task and discovery stage, by the stage's method.

Besides the scores it writes how long the scoring took (outside results/: a wall time differs between runs),
which the attribution comparison sets beside the other methods' times."""

import time
from pathlib import Path

from circuit_reuse.attribution import method_description
from circuit_reuse.circuits import grid_from_table
from circuit_reuse.datasets import load_dataset
from circuit_reuse.discovery import (
    StageSpec,
    averaging_description,
    describe_receivers,
    run_stage,
    scores_table,
    selected_heads,
    stage_receivers,
)
from circuit_reuse.io import read_parquet, write_json, write_parquet
from circuit_reuse.models import load_model, model_device
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)
with model_job(job) as clock:
    spec = StageSpec(**{**job.params.stage, "components": tuple(job.params.stage["components"])})
    dataset = load_dataset(job.input.dataset)
    if job.params.n_prompts:
        dataset = dataset.subset(slice(0, job.params.n_prompts))
    with clock.phase("model load"):
        model = load_model(Path(job.input.model).parent, device=job.params.device)
    earlier = (
        []
        if spec.kind == "logits"
        else selected_heads(
            grid_from_table(read_parquet(job.input.previous)), job.params.selection, job.params.receivers_floor
        )
    )
    receivers = stage_receivers(spec, earlier)
    print(
        f"{job.wildcards.model} {job.wildcards.task} stage {spec.name}: receivers {describe_receivers(receivers)}, "
        f"scored by {method_description(spec.method, spec.ig_steps)}"
    )
    start = time.perf_counter()
    grid = run_stage(
        model,
        dataset,
        spec,
        receivers,
        batch_size=job.params.batch_size,
        freeze_mlps=job.params.freeze_mlps,
        averaging=job.params.averaging,
        averaging_batch_size=job.params.averaging_batch_size,
    )
    seconds = time.perf_counter() - start
    table = scores_table(
        grid,
        model=job.wildcards.model,
        task=job.wildcards.task,
        stage=spec.name,
        receivers=describe_receivers(receivers),
        position=spec.position,
        n_prompts=len(dataset),
        seed=dataset.meta.get("seed"),
        freeze_mlps=job.params.freeze_mlps,
        senders=spec.senders or "all heads",
        averaging=averaging_description(job.params.averaging, job.params.averaging_batch_size),
        method=method_description(spec.method, spec.ig_steps),
    )
    write_parquet(job.output.scores, table, config=dict(job.params))
    write_json(
        job.output.timing,
        {"method": spec.method, "wall_s": seconds, "device": str(model_device(model)), "n_prompts": len(dataset)},
    )
