"""Snakemake job: compare one model's two circuits (IoU, shares, roles, chance baseline, sensitivity)."""

import pandas as pd

from circuit_reuse.circuits import load_circuit
from circuit_reuse.discovery import grid_from_table
from circuit_reuse.io import read_parquet, write_parquet
from circuit_reuse.overlap import circuit_overlap, role_aligned_table, threshold_sensitivity
from circuit_reuse.workflow import workflow_job


def stage_grids(paths):
    tables = [read_parquet(path) for path in paths]
    return {table["stage"].iloc[0]: grid_from_table(table) for table in tables}


job = snakemake  # noqa: F821 (snakemake injects this object)
with workflow_job(job):
    settings = job.params.overlap
    a, b = (load_circuit(path) for path in job.input.circuits)
    summary = circuit_overlap(a, b, repeats=settings["chance_repeats"], seed=settings["seed"])
    print(
        f"{a.model}: {summary['shared']} of {summary['union']} heads shared (IoU {summary['iou']:.2f}); "
        f"chance {summary['chance_iou_mean']:.2f} [{summary['chance_iou_low']:.2f}, {summary['chance_iou_high']:.2f}], "
        f"p = {summary['p_value']:.4f}"
    )
    write_parquet(job.output.summary, pd.DataFrame([summary]), config=settings)
    heads = role_aligned_table(a, b)
    heads.insert(0, "model", a.model)
    write_parquet(job.output.heads, heads, config=settings)
    sensitivity = threshold_sensitivity(
        stage_grids(job.input.grids_a),
        stage_grids(job.input.grids_b),
        settings["top_percents"],
        limits_a={s.name: s.below_layer for s in a.stages},
        limits_b={s.name: s.below_layer for s in b.stages},
        repeats=max(100, settings["chance_repeats"] // 10),
        seed=settings["seed"],
    )
    sensitivity.insert(0, "model", a.model)
    write_parquet(job.output.sensitivity, sensitivity, config=settings)
