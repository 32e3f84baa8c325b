"""Dataset-seed replicates: the whole workflow rerun with other task seeds, and how its headline numbers vary.

A replicate is one complete run of the workflow in its own directory, with every task's dataset seed shifted
by the replicate's offset (config `replicates.seed_offsets`). Models are shared: every replicate reads one
model cache, so weights are downloaded or built once. `scripts/run_replicates.py` drives the runs;
`headline_numbers` reads one run's tables and `seed_variation` sets the runs side by side.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_reuse.edits import BASELINE
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


BASELINE_METRICS = ("accuracy", "metric_mean", "beats_distractor_rate", "prob_target_mean")
OVERLAP_METRICS = ("iou", "shared", "share_of_a_in_b", "share_of_b_in_a", "p_value", "top10_logits_shared")
INTERVENTION_METRICS = ("accuracy", "delta_accuracy", "fixed", "introduced")


def _baseline_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    clean = table[table["condition"] == "clean"]
    metrics = [metric for metric in BASELINE_METRICS if metric in clean.columns]
    rows = []
    for record in clean.to_dict("records"):
        for metric in metrics:
            rows.append(
                {"model": record["model"], "family": "baseline", "metric": f"{record['task']}.{metric}",
                 "value": float(record[metric])}
            )  # fmt: skip
    return rows


def overlap_metric(task_a: str, task_b: str, metric: str) -> str:
    """The headline name of one pair's overlap number, e.g. "ioi-colored_objects.iou"."""
    return f"{task_a}-{task_b}.{metric}"


def _overlap_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for record in table.to_dict("records"):
        for metric in OVERLAP_METRICS:
            if metric in record:
                rows.append(
                    {"model": record["model"], "family": "overlap",
                     "metric": overlap_metric(record["task_a"], record["task_b"], metric),
                     "value": float(record[metric])}
                )  # fmt: skip
    return rows


def _intervention_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for record in table[table["status"] == "ran"].to_dict("records"):
        for metric in INTERVENTION_METRICS:
            if metric in record:
                rows.append(
                    {"model": record["model"], "family": "intervention", "metric": f"{record['condition']}.{metric}",
                     "value": float(record[metric])}
                )  # fmt: skip
    return rows


# The movers' change the headline Spearman is read from: their direct logit attribution (answer - wrong),
# the change the paper correlates with path-patching importance.
SPEARMAN_METRIC = "d_dla"


def _control_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"model": record["model"], "family": "intervention", "metric": f"{record['condition']}.random_accuracy",
         "value": float(record["random_mean"])}
        for record in table[table["status"] == "ran"].to_dict("records")
    ]  # fmt: skip


def _spearman_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    chosen = table[(table["metric"] == SPEARMAN_METRIC) & (table["status"] == "ok")]
    return [
        {"model": record["model"], "family": "movers", "metric": f"{record['condition']}.spearman_rho",
         "value": float(record["rho"])}
        for record in chosen.to_dict("records")
    ]  # fmt: skip


def _mover_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model and condition (but the baseline), over the movers not themselves edited: the mean change in
    attention to the answer and to the wrong roles, and the ratio of their summed logit attribution after
    to before (before = dla - d_dla)."""
    rows = []
    movers = table[~table["intervened"].astype(bool) & (table["condition"] != BASELINE)]
    for (model, condition), group in movers.groupby(["model", "condition"], sort=False):
        before = (group["dla"] - group["d_dla"]).sum()
        values = {
            "attn_answer_change": group["d_attn_answer"].mean(),
            "attn_wrong_change": group["d_attn_wrong"].mean(),
            "dla_ratio": group["dla"].sum() / before if before else np.nan,
        }
        rows += [
            {"model": model, "family": "movers", "metric": f"{condition}.{metric}", "value": float(value)}
            for metric, value in values.items()
        ]
    return rows


# The ablation of the headline faithfulness: Wang et al.'s 87% is with mean ablation.
FAITHFULNESS_ABLATION = "mean"


def _faithfulness_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    own = table[
        (table["kind"] == "circuit")
        & (table["circuit_task"] == table["task"])
        & (table["ablation"] == FAITHFULNESS_ABLATION)
    ]
    return [
        {"model": record["model"], "family": "faithfulness", "metric": f"{record['task']}.faithfulness",
         "value": float(record["f"])}
        for record in own.to_dict("records")
    ]  # fmt: skip


def headline_rows(
    baselines: pd.DataFrame | None = None,
    overlap: Iterable[pd.DataFrame] = (),
    intervention: Iterable[pd.DataFrame] = (),
    controls: Iterable[pd.DataFrame] = (),
    spearman: Iterable[pd.DataFrame] = (),
    faithfulness: Iterable[pd.DataFrame] = (),
    movers: Iterable[pd.DataFrame] = (),
) -> pd.DataFrame:
    """Headline numbers from explicit tables, one row per (model, family, metric): the clean baselines per
    task (`baselines`, the workflow's baselines table), the overlap of every pair of circuits (one overlap
    summary per model, one row per pair; metrics named by `overlap_metric`), the intervention's accuracy
    per condition that ran (one accuracy table per model), the random-head controls' mean accuracy
    (`controls`: controls_summary tables), the movers' Spearman rho of their logit-attribution change
    against importance (`spearman`: movers_spearman tables), each task's own circuit's faithfulness
    under mean ablation (`faithfulness`: faithfulness summary tables) and the movers' mean change in
    attention and their logit attribution's ratio after to before (`movers`: movers tables)."""
    rows = [] if baselines is None else _baseline_rows(baselines)
    for tables, build in ((overlap, _overlap_rows), (intervention, _intervention_rows), (controls, _control_rows),
                          (spearman, _spearman_rows), (faithfulness, _faithfulness_rows),
                          (movers, _mover_rows)):  # fmt: skip
        for table in tables:
            rows += build(table)
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def headline_numbers(results: str | os.PathLike) -> pd.DataFrame:
    """One run's headline numbers (see `headline_rows`), read from its results directory. Tables the run did
    not build (a config with one task has no overlap) are left out."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"no results directory at {results}")
    baselines = results / "tables" / "baselines.parquet"
    return headline_rows(
        read_parquet(baselines) if baselines.exists() else None,
        [read_parquet(path) for path in sorted(results.glob("overlap/*/summary.parquet"))],
        [read_parquet(path) for path in sorted(results.glob("intervention/*/accuracy.parquet"))],
        [read_parquet(path) for path in sorted(results.glob("intervention/*/controls_summary.parquet"))],
        [read_parquet(path) for path in sorted(results.glob("intervention/*/movers_spearman.parquet"))],
        [read_parquet(path) for path in sorted(results.glob("faithfulness/*/*.summary.parquet"))],
        [read_parquet(path) for path in sorted(results.glob("intervention/*/movers.parquet"))],
    )


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
