"""Snakemake job: one model's every task and stage scored by each compared method, set against the exact scores."""

from pathlib import Path

import pandas as pd

from circuit_reuse.circuits import grid_from_table
from circuit_reuse.datasets import load_dataset
from circuit_reuse.discovery import StageSpec
from circuit_reuse.io import read_json, read_parquet, write_parquet
from circuit_reuse.method_comparison import comparison_tables, rescore_stages, times_table
from circuit_reuse.models import load_model, model_device
from circuit_reuse.workflow import model_job

job = snakemake  # noqa: F821 (snakemake injects this object)
with model_job(job) as clock:
    settings = job.params
    with clock.phase("model load"):
        model = load_model(Path(job.input.model).parent, device=settings.device)
    device = str(model_device(model))
    scores, summaries, times = [], [], []
    for task in settings.tasks:
        specs = [StageSpec(**{**s, "components": tuple(s["components"])}) for s in settings.stages[task]]
        grids = {
            spec.name: grid_from_table(read_parquet(path))
            for spec, path in zip(specs, job.input[f"grids_{task}"], strict=True)
        }
        dataset = load_dataset(job.input[f"dataset_{task}"])
        if settings.n_prompts:
            dataset = dataset.subset(slice(0, settings.n_prompts))
        by_stage, seconds, receivers = rescore_stages(
            model,
            dataset,
            specs,
            grids,
            settings.selection,
            settings.methods,
            settings.ig_steps,
            batch_size=settings.batch_size,
            freeze_mlps=settings.freeze_mlps,
            averaging=settings.averaging,
            averaging_batch_size=settings.averaging_batch_size,
            progress=False,
        )
        for spec, path in zip(specs, job.input[f"timings_{task}"], strict=True):
            seconds[spec.name][spec.method] = read_json(path)["wall_s"]  # the stage's own job timed its method
        per_head, summary = comparison_tables(job.wildcards.model, task, by_stage, receivers, settings.selection)
        scores.append(per_head)
        summaries.append(summary)
        times.append(times_table(job.wildcards.model, task, seconds, device, len(dataset)))
        for row in summary.itertuples():
            print(
                f"{job.wildcards.model} {task} {row.stage} {row.method}: Spearman {row.spearman:+.3f} over "
                f"{row.n_senders} senders, recall {row.recall:.2f} of {row.k} heads, "
                f"max |error| {row.max_abs_error:.3g}"
                + (f"; exact alone: {row.only_exact}" if row.only_exact else "")
                + (f"; {row.method} alone: {row.only_approx}" if row.only_approx else "")
            )
    config = {key: settings[key] for key in ("methods", "ig_steps", "selection", "n_prompts", "averaging")}
    write_parquet(job.output.scores, pd.concat(scores, ignore_index=True), config=config)
    write_parquet(job.output.summary, pd.concat(summaries, ignore_index=True), config=config)
    write_parquet(job.output.times, pd.concat(times, ignore_index=True), config=config)
