"""Circuit faithfulness: how much of a task's metric a circuit keeps when every other head is ablated.

For a circuit C, a dataset and its task's metric m (per prompt, at END: `TaskDataset.metric`, the logit
difference or Greater-Than's probability difference):

- m(M): the model as it is; m(empty): every head ablated; m(C): every head outside C ablated
  (`circuit_reuse.ablation` says how: mean, resample or zero);
- the normalised faithfulness f = (m(C) - m(empty)) / (m(M) - m(empty)): 1 when the circuit alone does what
  the model does, 0 when it does no more than no heads at all. `summarize` computes it from the means over
  prompts (the field's convention) and also gives the distribution of the per-prompt ratio.

On top of that: random circuits of the same size and layer profile as the baseline a circuit should beat
(`random_circuits`), circuits made of the top k% of heads by path-patching importance (`top_k_circuits`),
whose f(k) gives the area under the curve (CPR, higher is better) and the area between it and 1 (CMD, 0 is
best) (`curve_areas`), and any task's circuit evaluated on any other task (cross-task faithfulness: the
circuit's heads are kept while the other task's prompts, metric and reference distribution are used).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_reuse.ablation import (
    ABLATIONS,
    reference_outputs,
    replacement_outputs,
)
from circuit_reuse.circuits import Head
from circuit_reuse.datasets import TaskDataset
from circuit_reuse.edits import ablation_hooks, check_heads
from circuit_reuse.evaluation import end_logits, task_metric
from circuit_reuse.statistics import bootstrap_means, keyed_rng, percentile_interval

CURVE_PERCENTS = (0.5, 1, 2, 5, 10, 20, 50, 100)
PROMPT_COLUMNS = ["circuit", "n_heads", "ablation", "prompt", "metric_circuit", "metric_model", "metric_empty", "f"]
SUMMARY_COLUMNS = [
    "circuit", "n_heads", "ablation", "n", "metric_circuit", "metric_model", "metric_empty", "f", "f_low", "f_high",
    "f_prompt_mean", "f_prompt_median", "f_prompt_p5", "f_prompt_p95",
]  # fmt: skip


class FaithfulnessError(ValueError):
    """A faithfulness run was asked for with inputs that do not define it."""


@torch.no_grad()
def faithfulness_per_prompt(
    model,
    dataset: TaskDataset,
    circuits: Mapping[str, Iterable[Head]],
    ablation: str,
    corruption: str | None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """m(C), m(M), m(empty) and f for every named circuit on every prompt: the columns of PROMPT_COLUMNS.

    `corruption` names the dataset's corruption that serves as the reference distribution (ignored by
    "zero"); `seed` fixes the resample draw. Every number is per prompt, so the batch size changes none.
    """
    cfg = model.cfg
    if not circuits:
        raise FaithfulnessError("no circuits to evaluate")
    kept = {}
    for name, heads in circuits.items():
        kept[name] = frozenset(check_heads(heads, cfg.n_layers, cfg.n_heads))
        if not kept[name]:
            raise FaithfulnessError(f"circuit {name!r} is empty: faithfulness is defined for a circuit with heads")
    every_head = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    prepared = reference_outputs(model, dataset, ablation, corruption, batch_size, seed)
    parts = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc=f"{dataset.task} faithfulness ({ablation})", unit="batch", disable=not progress):
        rows = torch.arange(start, min(start + batch_size, len(dataset)))
        batch = dataset.subset(rows)
        replacement = replacement_outputs(model, prepared, rows, batch.end)

        measured: dict[frozenset[Head], torch.Tensor] = {}  # circuits of equal heads (top 1% and 2%) run once
        for heads in [frozenset(every_head), frozenset(), *kept.values()]:
            if heads not in measured:
                measured[heads] = _measure(model, batch, heads, replacement)
        full, empty = measured[frozenset(every_head)], measured[frozenset()]
        for name, heads in kept.items():
            value = measured[heads]
            parts.append(
                pd.DataFrame(
                    {
                        "circuit": name,
                        "n_heads": len(heads),
                        "ablation": ablation,
                        "prompt": rows.numpy(),
                        "metric_circuit": value.numpy(),
                        "metric_model": full.numpy(),
                        "metric_empty": empty.numpy(),
                        "f": ((value - empty) / (full - empty)).numpy(),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)[PROMPT_COLUMNS]


def _measure(model, batch: TaskDataset, keep, replacement: torch.Tensor) -> torch.Tensor:
    """The task's metric at END of each prompt of `batch`, every head outside `keep` replaced: [batch], CPU."""
    hooks = ablation_hooks(keep, replacement, model.cfg.n_layers, model.cfg.n_heads)
    return task_metric(end_logits(model, batch.clean_tokens, batch.end, hooks), batch).cpu()


def f_interval(group: pd.DataFrame, n_resamples: int, level: float, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of f from the means: the prompts resampled, the three metrics of
    a prompt together; resamples where m(M) = m(empty) have no f and are left out."""
    metrics = group[["metric_circuit", "metric_model", "metric_empty"]].to_numpy(dtype=np.float64).T
    circuit, model, empty = bootstrap_means(metrics, n_resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (circuit - empty) / (model - empty)
    return percentile_interval(f[np.isfinite(f)], level)


def summarize(per_prompt: pd.DataFrame, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per (circuit, ablation): mean metrics, f from the means with its bootstrap interval over the
    prompts (`f_interval`: f_low, f_high at `level`), and the per-prompt f's distribution.

    Per-prompt f is undefined where m(M) = m(empty) on that prompt; those prompts are left out of its
    mean, median and percentiles (not of the means). Every circuit's interval draws the same resamples
    (one seed), so the intervals of two circuits on one task are paired.
    """
    rows = []
    for (circuit, ablation), group in per_prompt.groupby(["circuit", "ablation"], sort=False):
        circuit_mean, model_mean, empty_mean = (
            group[c].mean() for c in ("metric_circuit", "metric_model", "metric_empty")
        )
        f_low, f_high = f_interval(group.sort_values("prompt"), n_resamples, level, seed)
        f = group["f"].replace([np.inf, -np.inf], np.nan).dropna().to_numpy()
        rows.append(
            {
                "circuit": circuit,
                "n_heads": int(group["n_heads"].iloc[0]),
                "ablation": ablation,
                "n": len(group),
                "metric_circuit": circuit_mean,
                "metric_model": model_mean,
                "metric_empty": empty_mean,
                "f": (circuit_mean - empty_mean) / (model_mean - empty_mean) if model_mean != empty_mean else np.nan,
                "f_low": f_low,
                "f_high": f_high,
                "f_prompt_mean": f.mean() if f.size else np.nan,
                "f_prompt_median": np.median(f) if f.size else np.nan,
                "f_prompt_p5": np.percentile(f, 5) if f.size else np.nan,
                "f_prompt_p95": np.percentile(f, 95) if f.size else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def random_circuits(heads: Iterable[Head], n_heads: int, repeats: int, seed: int, key: str = "") -> list[list[Head]]:
    """`repeats` random circuits with as many heads as `heads` in each layer (its size and layer profile).

    Repeat r is drawn from a generator seeded by (seed, crc32(key), r) alone, so adding repeats keeps the
    earlier ones, and a circuit's controls (key: its task) are the same whichever task they are evaluated on.
    """
    per_layer: dict[int, int] = {}
    for layer, _ in {tuple(h) for h in heads}:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    if not per_layer:
        raise FaithfulnessError("random circuits are matched to a circuit, and this one is empty")
    circuits = []
    for repeat in range(repeats):
        rng = keyed_rng(seed, key, repeat)
        chosen = [
            (layer, int(head))
            for layer, count in sorted(per_layer.items())
            for head in sorted(rng.choice(n_heads, size=count, replace=False))
        ]
        circuits.append(chosen)
    return circuits


def top_k_circuits(importance: np.ndarray, percents: Sequence[float] = CURVE_PERCENTS) -> dict[float, list[Head]]:
    """For each k, the top k% of heads by importance (at least one head; ties broken by layer, then head).

    `importance` is a [layer, head] grid, e.g. `circuit_reuse.overlap.normalised_importance` of a task's
    stage grids.
    """
    n_layers, n_heads = importance.shape
    order = sorted(((l, h) for l in range(n_layers) for h in range(n_heads)), key=lambda lh: (-importance[lh], lh))
    out = {}
    for k in percents:
        if not 0 < k <= 100:
            raise FaithfulnessError(f"curve percentages must lie in (0, 100]; got {k}")
        out[k] = order[: max(1, round(k / 100 * len(order)))]
    return out


def curve_areas(percents: Sequence[float], f: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD) of a faithfulness curve: trapezoid areas of f and of |1 - f| over the fraction of heads kept.

    The fraction runs over the curve's own points (k/100), so the areas are comparable between runs with the
    same percentages; a curve that is 1 everywhere has CPR = span and CMD = 0.
    """
    x = np.asarray(percents, dtype=float) / 100
    y = np.asarray(f, dtype=float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.trapezoid(y, x)), float(np.trapezoid(np.abs(1 - y), x))


CIRCUIT_KINDS = ("circuit", "random", "top_k")
DESCRIPTOR_COLUMNS = ["task", "circuit", "kind", "circuit_task", "percent", "repeat"]


@dataclass(frozen=True)
class FaithfulnessSettings:
    """The `faithfulness` section of the config; workflow/schemas/config.schema.yaml documents each key and
    holds its default."""

    ablations: tuple[str, ...]
    n_prompts: int | None
    random_repeats: int
    curve_percents: tuple[float, ...]
    seed: int
    batch_size: int
    bootstrap_samples: int = 2000
    ci_level: float = 0.95

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise FaithfulnessError(f"faithfulness.ablations: unknown {unknown}; known: {', '.join(ABLATIONS)}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> FaithfulnessSettings:
        return cls(
            ablations=tuple(section["ablations"]),
            n_prompts=section["n_prompts"],
            random_repeats=section["random_repeats"],
            curve_percents=tuple(section["curve_percents"]),
            seed=section["seed"],
            batch_size=section["batch_size"],
            bootstrap_samples=section["bootstrap_samples"],
            ci_level=section["ci_level"],
        )


def faithfulness_experiment(
    model,
    dataset: TaskDataset,
    circuits: Mapping[str, Iterable[Head]],
    importance: np.ndarray,
    settings: FaithfulnessSettings,
    corruption: str | None,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Every faithfulness number of one model on one task's prompts, as tidy tables.

    `circuits` maps each task to its discovered circuit's heads (the dataset's own task and every other:
    cross-task faithfulness); `importance` is the dataset's task's per-head path-patching importance
    (`circuit_reuse.overlap.normalised_importance`), from which the curve's top-k% circuits are made.
    Each circuit also gets `random_repeats` random circuits of its size and layer profile.

    Returns "prompts" (one row per circuit, ablation and prompt), "summary" (one row per circuit and
    ablation) and "curve" (the top-k% circuits' f with each ablation's CPR and CMD); every table carries
    DESCRIPTOR_COLUMNS: the evaluated task, the circuit's name, its kind (circuit, random, top_k), the task
    it was found on, the percentage (top_k) and the repeat (random).
    """
    if settings.n_prompts is not None:
        dataset = dataset.subset(slice(0, settings.n_prompts))
    n_heads = model.cfg.n_heads
    named: dict[str, list[Head]] = {}
    descriptors: dict[str, dict[str, Any]] = {}

    def add(name, heads, kind, circuit_task, percent=np.nan, repeat=-1):
        named[name] = sorted(heads)
        descriptors[name] = {"kind": kind, "circuit_task": circuit_task, "percent": percent, "repeat": repeat}

    for task, heads in circuits.items():
        heads = sorted({tuple(h) for h in heads})
        if not heads:
            continue  # a circuit without heads has no faithfulness; it is absent from the tables
        add(task, heads, "circuit", task)
        for repeat, chosen in enumerate(random_circuits(heads, n_heads, settings.random_repeats, settings.seed, task)):
            add(f"{task}/random{repeat}", chosen, "random", task, repeat=repeat)
    for percent, heads in top_k_circuits(importance, settings.curve_percents).items():
        add(f"top {percent:g}%", heads, "top_k", dataset.task, percent=float(percent))

    prompts = pd.concat(
        [
            faithfulness_per_prompt(
                model, dataset, named, ablation, corruption, settings.batch_size, settings.seed, progress
            )
            for ablation in settings.ablations
        ],
        ignore_index=True,
    )
    summary = summarize(prompts, settings.bootstrap_samples, settings.ci_level, settings.seed)
    tables = {"prompts": prompts, "summary": summary}
    for name, table in tables.items():
        described = pd.DataFrame([descriptors[c] for c in table["circuit"]], index=table.index)
        tables[name] = pd.concat([table.assign(task=dataset.task), described], axis=1)[
            DESCRIPTOR_COLUMNS + [c for c in table.columns if c != "circuit"]
        ]
    curve = tables["summary"][tables["summary"]["kind"] == "top_k"].sort_values(["ablation", "percent"])
    curve = curve[DESCRIPTOR_COLUMNS + ["ablation", "n_heads", "f"]].reset_index(drop=True)
    for _, group in curve.groupby("ablation", sort=False):
        cpr, cmd = curve_areas(group["percent"], group["f"])
        curve.loc[group.index, "cpr"] = cpr
        curve.loc[group.index, "cmd"] = cmd
    tables["curve"] = curve
    return tables
