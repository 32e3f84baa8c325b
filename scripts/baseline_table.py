"""Snakemake job: every model's and task's baseline summary in one table."""

import pandas as pd

from circuit_reuse.io import read_parquet, write_parquet
from circuit_reuse.workflow import workflow_job

with workflow_job(snakemake):  # noqa: F821 (snakemake injects this object)
    table = pd.concat([read_parquet(path) for path in snakemake.input.summaries], ignore_index=True)  # noqa: F821
    write_parquet(snakemake.output.table, table, config={"summaries": list(snakemake.input.summaries)})  # noqa: F821
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False))
