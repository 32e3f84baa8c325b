"""Dataset-seed replicates: the whole workflow rerun with other task seeds, and how its headline numbers vary.

A replicate is one complete run of the workflow in its own directory, with every task's dataset seed shifted
by the replicate's offset (config `replicates.seed_offsets`). Models are shared: every replicate reads one
model cache, so weights are downloaded or built once. `scripts/run_replicates.py` drives the runs;
`headline_numbers` reads one run's tables and `seed_variation` sets the runs side by side.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_reuse.io import read_parquet

HEADLINE_COLUMNS = ["model", "family", "metric", "value"]


def replicate_dir(out: str | os.PathLike, offset: int) -> Path:
    """Where the replicate with this seed offset runs (its results/, logs/ and config.yaml)."""
    return Path(out) / f"seed-offset-{offset}"


def replicate_config(config: Mapping[str, Any], offset: int, model_cache: str | os.PathLike) -> dict[str, Any]:
    """The config of one replicate: every task's seed plus `offset`, and the shared model cache."""
    if offset < 0:
        raise ValueError(f"seed offsets are >= 0; got {offset}")
    derived = copy.deepcopy(dict(config))
    for task, options in derived["tasks"].items():
        if "seed" not in options:
            raise ValueError(f"tasks.{task} has no seed; validate the config first (the schema fills it in)")
        options["seed"] = int(options["seed"]) + offset
    derived["model_cache"] = str(Path(model_cache).resolve())
    derived.pop("replicates", None)  # a replicate is one run; the offsets belong to the driver
    return derived


def _baseline_rows(results: Path) -> list[dict[str, Any]]:
    path = results / "tables" / "baselines.parquet"
    if not path.exists():
        return []
    table = read_parquet(path)
    clean = table[table["condition"] == "clean"]
    rows = []
    for record in clean.to_dict("records"):
        for metric in ("accuracy", "logit_diff_mean"):
            rows.append(
                {"model": record["model"], "family": "baseline", "metric": f"{record['task']}.{metric}",
                 "value": float(record[metric])}
            )  # fmt: skip
    return rows


def _overlap_rows(results: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(results.glob("overlap/*/summary.parquet")):
        for record in read_parquet(path).to_dict("records"):
            for metric in ("iou", "shared", "share_of_a_in_b", "share_of_b_in_a", "p_value"):
                rows.append(
                    {"model": record["model"], "family": "overlap", "metric": metric, "value": float(record[metric])}
                )
    return rows


def _intervention_rows(results: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(results.glob("intervention/*/accuracy.parquet")):
        table = read_parquet(path)
        for record in table[table["status"] == "ran"].to_dict("records"):
            for metric in ("accuracy", "delta_accuracy"):
                rows.append(
                    {"model": record["model"], "family": "intervention", "metric": f"{record['condition']}.{metric}",
                     "value": float(record[metric])}
                )  # fmt: skip
    return rows


def headline_numbers(results: str | os.PathLike) -> pd.DataFrame:
    """One run's headline numbers, one row per (model, family, metric): clean baselines per task, the
    overlap of the two circuits, and the intervention's accuracy per condition. Tables the run did not
    build (a config with one task has no overlap) are left out."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"no results directory at {results}")
    rows = _baseline_rows(results) + _overlap_rows(results) + _intervention_rows(results)
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def seed_variation(runs: Mapping[int, str | os.PathLike]) -> pd.DataFrame:
    """Each headline number across replicates: n, mean, std (ddof 1), min, max and every value by offset.

    `runs` maps a seed offset to that replicate's results directory. A number missing from some replicate
    is summarised over the replicates that have it, and `n` says how many that was.
    """
    if not runs:
        raise ValueError("no replicates to compare")
    tables = [headline_numbers(path).assign(seed_offset=offset) for offset, path in sorted(runs.items())]
    long = pd.concat(tables, ignore_index=True)
    keys = ["model", "family", "metric"]
    summary = long.groupby(keys, sort=True)["value"].agg(
        n="count", mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
        min="min", max="max",
    )  # fmt: skip
    by_offset = long.pivot_table(index=keys, columns="seed_offset", values="value", aggfunc="first")
    by_offset.columns = [f"offset_{offset}" for offset in by_offset.columns]
    return summary.join(by_offset).reset_index()
