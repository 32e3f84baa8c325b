"""Snakemake job: compare every pair of one model's circuits (IoU, shares, roles, chance baseline, sensitivity)."""

from circuit_reuse.circuits import grid_from_table, load_circuit
from circuit_reuse.io import read_parquet, write_parquet
from circuit_reuse.overlap import pairwise_heads, pairwise_overlap, pairwise_sensitivity
from circuit_reuse.workflow import workflow_job


def stage_grids(paths):
    tables = [read_parquet(path) for path in paths]
    return {table["stage"].iloc[0]: grid_from_table(table) for table in tables}


job = snakemake  # noqa: F821 (snakemake injects this object)
with workflow_job(job):
    settings = job.params.overlap
    circuits = [load_circuit(path) for path in job.input.circuits]
    grids = {circuit.task: stage_grids(job.input[f"grids_{circuit.task}"]) for circuit in circuits}
    model = circuits[0].model
    summary = pairwise_overlap(circuits, grids, repeats=settings["chance_repeats"], seed=settings["seed"])
    for row in summary.itertuples():
        print(
            f"{model} {row.task_a} vs {row.task_b}: {row.shared} of {row.union} heads shared (IoU {row.iou:.2f}); "
            f"chance {row.chance_iou_mean:.2f} [{row.chance_iou_low:.2f}, {row.chance_iou_high:.2f}], "
            f"p = {row.p_value:.4f}; top-10 logits heads shared: {row.top10_logits_shared}"
        )
    write_parquet(job.output.summary, summary, config=settings)
    heads = pairwise_heads(circuits)
    heads.insert(0, "model", model)
    write_parquet(job.output.heads, heads, config=settings)
    sensitivity = pairwise_sensitivity(
        circuits,
        grids,
        settings["top_percents"],
        repeats=max(100, settings["chance_repeats"] // 10),
        seed=settings["seed"],
    )
    sensitivity.insert(0, "model", model)
    write_parquet(job.output.sensitivity, sensitivity, config=settings)
