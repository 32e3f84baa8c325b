"""Stagewise circuit discovery by path patching, following the paper (and Wang et al.).

Each stage patches every sender head into a set of receivers at one role position: the logits (giving the
mover heads), then the queries of the heads selected at an earlier stage (inhibition heads, content
gatherers), then their keys and values at a role position (induction and duplicate-token heads), and so
on. Each stage's heads are the top p% by |score| (or those above a threshold); the circuit is the union,
each head labelled with a role by `circuit_reuse.head_roles.label_role`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_reuse.attribution import DEFAULT_IG_STEPS, DEFAULT_METHOD, METHODS, score_heads
from circuit_reuse.circuits import (
    Circuit,
    Head,
    HeadInfo,
    StageRecord,
    select_heads,
    selection_margin,
)
from circuit_reuse.datasets import END, TaskDataset
from circuit_reuse.head_roles import DETECTORS, attention_share, copy_scores, label_role
from circuit_reuse.patching import (
    AUTHORS_AVERAGING_BATCH_SIZE,
    DEFAULT_AVERAGING,
    DEFAULT_SENDER_SET,
    SENDER_SETS,
    sender_heads,
)
from circuit_reuse.tasks import get_task

QUESTION_SPAN = "question"


class StageError(ValueError):
    """A stage definition is inconsistent (unknown earlier stage, bad component, unknown role)."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    receivers: str  # "logits", or the name of the earlier stage whose heads receive
    components: tuple[str, ...]  # which of each receiver head's q, k, v are patched; () for logits
    position: str  # the dataset role where senders are patched and receivers read
    senders: str | None = DEFAULT_SENDER_SET  # patching.SENDER_SETS; None for logits (every head is a sender)
    method: str = DEFAULT_METHOD  # attribution.METHODS: exact path patching or a gradient estimate of it
    ig_steps: int | None = None  # points on the clean-to-corrupted line, for eap_ig only
    min_relative_score: float = 0.0  # the score floor of the stage's selection (circuits.select_heads)

    @property
    def kind(self) -> str:
        if self.receivers == "logits":
            return "logits"
        return "query" if self.components == ("q",) else "key_value"


def parse_stages(
    task: str,
    entries: Sequence[Mapping[str, Any]],
    senders: str = DEFAULT_SENDER_SET,
    method: str = DEFAULT_METHOD,
    ig_steps: int = DEFAULT_IG_STEPS,
    min_relative_score: float = 0.0,
) -> list[StageSpec]:
    """Turn a task's `discovery.stages` config into StageSpecs, checking that each refers backwards.

    `senders`, `method`, `ig_steps` and `min_relative_score` apply to every stage that names none of its
    own (`senders` to stages with head receivers only)."""
    specs: list[StageSpec] = []
    for i, entry in enumerate(entries):
        where = f"discovery.stages.{task}[{i}]"
        receivers = entry["receivers"]
        stage_senders = entry.get("senders", senders)
        if stage_senders not in SENDER_SETS:
            raise StageError(f"{where}.senders: {stage_senders!r} is not one of {', '.join(SENDER_SETS)}")
        stage_method = entry.get("method", method)
        if stage_method not in METHODS:
            raise StageError(f"{where}.method: {stage_method!r} is not one of {', '.join(METHODS)}")
        floor = entry.get("min_relative_score", min_relative_score)
        if not 0 <= floor <= 1:
            raise StageError(f"{where}.min_relative_score: {floor!r} is not a fraction of the best score in [0, 1]")
        scoring = {
            "method": stage_method,
            "ig_steps": entry.get("ig_steps", ig_steps) if stage_method == "eap_ig" else None,
            "min_relative_score": float(floor),
        }
        if receivers == "logits":
            spec = StageSpec(entry["name"], "logits", (), entry.get("position", END), None, **scoring)
            if spec.position != END:
                raise StageError(f"{where}: a logits stage reads the answer at END, not at {spec.position!r}")
        else:
            earlier = [s.name for s in specs]
            if receivers["stage"] not in earlier:
                raise StageError(
                    f"{where}: receivers come from stage {receivers['stage']!r}, which is not an earlier stage "
                    f"of {task} (earlier stages: {', '.join(earlier) or 'none'})"
                )
            components = tuple(receivers["components"])
            spec = StageSpec(entry["name"], receivers["stage"], components, entry["position"], stage_senders, **scoring)
        if spec.name in {s.name for s in specs}:
            raise StageError(f"{where}: stage name {spec.name!r} is used twice")
        specs.append(spec)
    if not specs:
        raise StageError(f"discovery.stages.{task}: no stages")
    return specs


def stage_receivers(spec: StageSpec, earlier_heads: Sequence[Head]) -> str | list[tuple[int, int, str]]:
    """The receivers argument of path_patch for a stage, given the heads its earlier stage selected."""
    if spec.kind == "logits":
        return "logits"
    return [(l, h, c) for (l, h) in sorted(earlier_heads) for c in spec.components]


def describe_receivers(receivers: str | Sequence[tuple[int, int, str]]) -> str:
    if receivers == "logits":
        return "logits"
    by_component: dict[str, list[str]] = {}
    for l, h, c in receivers:
        by_component.setdefault(c, []).append(f"{l}.{h}")
    return "; ".join(f"{c}: {','.join(heads)}" for c, heads in sorted(by_component.items())) or "none"


def run_stage(
    model,
    dataset: TaskDataset,
    spec: StageSpec,
    receivers: str | list[tuple[int, int, str]],
    *,
    batch_size: int = 25,
    freeze_mlps: bool = False,
    averaging: str = DEFAULT_AVERAGING,
    averaging_batch_size: int = AUTHORS_AVERAGING_BATCH_SIZE,
    progress: bool = True,
) -> np.ndarray:
    """Scores [n_layers, n_heads] of one stage by its method; all NaN when its sender set is empty."""
    if spec.position not in dataset.positions:
        raise StageError(
            f"stage {spec.name!r} patches at role {spec.position!r}, which the {dataset.task} dataset does not "
            f"have; its roles: {', '.join(sorted(dataset.positions))}"
        )
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    if not stage_senders(spec, receivers, *shape):
        return np.full(shape, np.nan)  # no receivers, or none that a head of the stage's sender set reaches
    scores = score_heads(
        model,
        dataset.clean_tokens,
        dataset.corrupted_tokens,
        dataset.metric_tokens,
        receivers,
        dataset.positions[spec.position],
        freeze_mlps=freeze_mlps,
        sender_set=spec.senders or DEFAULT_SENDER_SET,
        averaging=averaging,
        averaging_batch_size=averaging_batch_size,
        batch_size=batch_size,
        progress=progress,
        metric=dataset.metric,
        metric_weights=dataset.metric_weights,
        method=spec.method,
        ig_steps=spec.ig_steps,
    )
    return scores.detach().cpu().double().numpy()


def averaging_description(averaging: str, averaging_batch_size: int) -> str:
    """How a stage's scores were averaged, as its table records it: "pooled" or "batch_mean of 25"."""
    return averaging if averaging == "pooled" else f"{averaging} of {averaging_batch_size}"


def scores_table(grid: np.ndarray, **columns: Any) -> pd.DataFrame:
    """One row per head with its score and the stage's description (model, task, stage, ...)."""
    n_layers, n_heads = grid.shape
    table = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers), n_heads),
            "head": np.tile(np.arange(n_heads), n_layers),
            "score": grid.reshape(-1),
        }
    )
    for name, value in columns.items():
        table.insert(len(table.columns) - 3, name, value)
    return table


def selected_heads(grid: np.ndarray, selection: Mapping[str, Any], min_relative_score: float = 0.0) -> list[Head]:
    """The heads a stage's grid selects by the config's `selection` rule and the stage's score floor."""
    return select_heads(grid, selection.get("top_percent"), selection.get("threshold"), min_relative_score)


def floor_dropped_heads(grid: np.ndarray, selection: Mapping[str, Any], min_relative_score: float) -> list[Head]:
    """The heads the `selection` rule chooses from a stage's grid that its score floor leaves out, largest
    |score| first."""
    kept = set(selected_heads(grid, selection, min_relative_score))
    return [head for head in selected_heads(grid, selection) if head not in kept]


def stage_senders(spec: StageSpec, receivers: str | list[tuple[int, int, str]], n_layers: int, n_heads: int):
    """The heads a stage scores: every head to the logits, its sender set otherwise; none without receivers."""
    if receivers != "logits" and not receivers:
        return ()
    return sender_heads(receivers, n_layers, n_heads, spec.senders or DEFAULT_SENDER_SET)


def below_layer(spec: StageSpec, receivers: str | list[tuple[int, int, str]], n_layers: int, n_heads: int) -> int:
    """The layer a stage's senders lie below (the chance baseline draws its random heads there)."""
    return max((layer + 1 for layer, _ in stage_senders(spec, receivers, n_layers, n_heads)), default=0)


@torch.no_grad()
def assemble_circuit(
    model_name: str,
    model,
    dataset: TaskDataset,
    specs: Sequence[StageSpec],
    grids: Mapping[str, np.ndarray],
    selection: Mapping[str, Any],
    detectors: pd.DataFrame,
) -> Circuit:
    """Select every stage's heads, gather the evidence about them and label each with a role."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    copy = copy_scores(model, dataset.answer_tokens.flatten()).set_index(["layer", "head"])
    detector_table = detectors.set_index(["layer", "head"])
    stages: list[StageRecord] = []
    infos: dict[Head, HeadInfo] = {}
    chosen: dict[str, list[Head]] = {}
    for spec in specs:
        receivers = stage_receivers(spec, chosen.get(spec.receivers, []))
        heads = selected_heads(grids[spec.name], selection, spec.min_relative_score)
        chosen[spec.name] = heads
        stages.append(
            StageRecord(
                spec.name,
                describe_receivers(receivers),
                spec.position,
                below_layer(spec, receivers, n_layers, n_heads),
                heads,
                margin=selection_margin(grids[spec.name], selection.get("top_percent"), selection.get("threshold")),
                min_relative_score=spec.min_relative_score,
                below_floor=floor_dropped_heads(grids[spec.name], selection, spec.min_relative_score),
            )
        )
        evidence_by_head = _evidence(model, dataset, heads, copy, detector_table)
        for head in heads:
            if head in infos:
                continue  # a head keeps the role of the first stage that selected it
            score = float(grids[spec.name][head])
            evidence = evidence_by_head[head]
            infos[head] = HeadInfo(head[0], head[1], spec.name, score, label_role(spec.kind, score, evidence), evidence)
    return Circuit(
        model=model_name,
        task=dataset.task,
        selection=dict(selection),
        stages=stages,
        head_infos=list(infos.values()),
        n_layers=n_layers,
        n_heads=n_heads,
    )


def _evidence(model, dataset: TaskDataset, heads: list[Head], copy: pd.DataFrame, detectors: pd.DataFrame):
    question_share = candidates_share = {}
    if QUESTION_SPAN in dataset.spans:
        question_share = attention_share(model, dataset.clean_tokens, dataset.end, _span_mask(dataset), heads)
    # Where the task's answer candidates sit (its registered candidate roles), for telling content
    # gatherers from inhibition heads; a registered role the dataset lacks is a malformed dataset.
    candidate_roles = list(get_task(dataset.task).candidate_roles)
    missing = [r for r in candidate_roles if r not in dataset.positions]
    if missing:
        raise StageError(f"the {dataset.task} dataset lacks its task's candidate role(s) {', '.join(missing)}")
    if candidate_roles:
        mask = torch.zeros_like(dataset.clean_tokens, dtype=torch.bool)
        rows = torch.arange(len(dataset))
        for role in candidate_roles:
            mask[rows, dataset.positions[role]] = True
        candidates_share = attention_share(model, dataset.clean_tokens, dataset.end, mask, heads)
    evidence = {}
    for head in heads:
        found = {name: float(detectors.loc[head, name]) for name in DETECTORS}
        found["copy_score"] = float(copy.loc[head, "copy_score"])
        found["negative_copy_score"] = float(copy.loc[head, "negative_copy_score"])
        if head in question_share:
            found["question_share"] = question_share[head]
        if head in candidates_share:
            found["candidates_share"] = candidates_share[head]
        evidence[head] = found
    return evidence


def _span_mask(dataset: TaskDataset) -> torch.Tensor:
    positions = torch.arange(dataset.clean_tokens.shape[1])
    span = dataset.spans[QUESTION_SPAN]
    return (positions[None] >= span[:, :1]) & (positions[None] < span[:, 1:])
