"""Exact path patching against attribution patching, stage by stage, on the same prompts, receivers and heads.

For one model and task, every discovery stage is scored by every compared method (`attribution.METHODS`) on
the receivers the workflow's own selection gave that stage, and each approximation is set against the exact
scores: the rank correlation over the stage's senders, the recall of the exact top-k selection at the
configured k, the heads selected by one and not the other, and the largest absolute error. A stage's own
method is read from its score grid rather than recomputed; the others are computed and timed in one job.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from circuit_reuse.circuits import Head, heads_label
from circuit_reuse.datasets import TaskDataset
from circuit_reuse.discovery import StageSpec, describe_receivers, run_stage, selected_heads, stage_receivers
from circuit_reuse.statistics import spearman

EXACT = "exact"


def rescore_stages(
    model,
    dataset: TaskDataset,
    specs: Sequence[StageSpec],
    grids: Mapping[str, np.ndarray],
    selection: Mapping[str, Any],
    methods: Sequence[str],
    ig_steps: int,
    **options,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]], dict[str, str]]:
    """Every stage's grid by every method, with the seconds each computed one took, and each stage's receivers.

    `grids` are the workflow's own grids (each stage by its own method), whose selections give the next
    stages' receivers, so every method scores the heads the workflow scored. `options` go to `run_stage`."""
    by_stage: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, dict[str, float]] = {}
    receivers_of: dict[str, str] = {}
    chosen: dict[str, list[Head]] = {}
    for spec in specs:
        receivers = stage_receivers(spec, chosen.get(spec.receivers, []))
        chosen[spec.name] = selected_heads(grids[spec.name], selection, spec.min_relative_score)
        receivers_of[spec.name] = describe_receivers(receivers)
        by_stage[spec.name] = {spec.method: grids[spec.name]}
        seconds[spec.name] = {}
        for method in methods:
            if method == spec.method:
                continue
            steps = (spec.ig_steps or ig_steps) if method == "eap_ig" else None
            scored = replace(spec, method=method, ig_steps=steps)
            start = time.perf_counter()
            by_stage[spec.name][method] = run_stage(model, dataset, scored, receivers, **options)
            seconds[spec.name][method] = time.perf_counter() - start
    return by_stage, seconds, receivers_of


def compare_grids(exact: np.ndarray, approximate: np.ndarray, selection: Mapping[str, Any]) -> dict[str, Any]:
    """One approximation against the exact scores of the same stage (NaN where a head is no sender)."""
    senders = ~np.isnan(exact)
    exact_heads = set(selected_heads(exact, selection))
    approximate_heads = set(selected_heads(approximate, selection))
    correlation = spearman(exact[senders], approximate[senders])[0] if senders.sum() >= 2 else float("nan")
    error = np.abs(approximate[senders] - exact[senders])
    return {
        "n_senders": int(senders.sum()),
        "k": len(exact_heads),
        "spearman": float(correlation),
        "recall": len(exact_heads & approximate_heads) / len(exact_heads) if exact_heads else float("nan"),
        "only_exact": heads_label(exact_heads - approximate_heads),
        "only_approx": heads_label(approximate_heads - exact_heads),
        "max_abs_error": float(error.max()) if error.size else float("nan"),
    }


def comparison_tables(
    model_name: str,
    task: str,
    grids: Mapping[str, Mapping[str, np.ndarray]],
    receivers: Mapping[str, str],
    selection: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per head (each approximation's score beside the exact one) and per stage and approximation (the summary)."""
    heads, summaries = [], []
    for stage, by_method in grids.items():
        exact = by_method[EXACT]
        exact_heads = set(selected_heads(exact, selection))
        n_layers, n_heads = exact.shape
        for method, grid in by_method.items():
            if method == EXACT:
                continue
            chosen = set(selected_heads(grid, selection))
            heads.append(
                pd.DataFrame(
                    {
                        "model": model_name,
                        "task": task,
                        "stage": stage,
                        "method": method,
                        "layer": np.repeat(np.arange(n_layers), n_heads),
                        "head": np.tile(np.arange(n_heads), n_layers),
                        "score": grid.reshape(-1),
                        "exact_score": exact.reshape(-1),
                        "selected": [(l, h) in chosen for l in range(n_layers) for h in range(n_heads)],
                        "selected_exact": [(l, h) in exact_heads for l in range(n_layers) for h in range(n_heads)],
                    }
                )
            )
            summaries.append(
                {
                    "model": model_name,
                    "task": task,
                    "stage": stage,
                    "method": method,
                    "receivers": receivers[stage],
                    **compare_grids(exact, grid, selection),
                }
            )
    return pd.concat(heads, ignore_index=True), pd.DataFrame(summaries)


def times_table(
    model_name: str, task: str, seconds: Mapping[str, Mapping[str, float]], device: str, n_prompts: int
) -> pd.DataFrame:
    """Wall seconds per stage and method, as measured in the jobs that computed them."""
    return pd.DataFrame(
        [
            {
                "model": model_name,
                "task": task,
                "stage": stage,
                "method": method,
                "wall_s": wall,
                "device": device,
                "n_prompts": n_prompts,
            }
            for stage, by_method in seconds.items()
            for method, wall in by_method.items()
        ]
    )
