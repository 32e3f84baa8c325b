"""The paper's mechanism readouts of each circuit's heads: where a head attends from END, and what it writes.

- `attention_to_roles`: each head's attention from END to every role of its task's prompts (IO, S1, S2 for
  IOI; the colours for Colored Objects; ...), averaged over prompts, in the unmodified model and under
  attention-edit conditions (the intervention's, on its target task). It reads the per-head readouts the
  intervention takes, during the same batched forward passes.
- `ov_copy_tables`: each head's OV circuit on its task's answer tokens (`head_roles.ov_answer_logits`, the
  matrix behind the circuits' copy scores), as a long [answer x answer] logit table, and per head its copy
  score, negative copy score and the mean rank of each answer's own logit: the embedding-projection plots
  the paper shows for the inhibition and mover heads.
- `intervention_reads`: the intervention's conditions and edited heads for one model, planned as the
  intervention experiment plans them, so its target task's heads are read under the same edits.
- `mechanism_tables`: both for every task's circuit in one model, as the tidy tables the workflow writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_reuse.circuits import Head
from circuit_reuse.datasets import TaskDataset
from circuit_reuse.edits import BASELINE, Condition
from circuit_reuse.evaluation import run_conditions_with_readouts
from circuit_reuse.head_roles import copy_fractions, distinct_tokens, ov_answer_logits
from circuit_reuse.intervention import InterventionSettings, plan_conditions, resolve_head_sets

MECHANISM_TABLES = ("attention", "copy_scores", "ov")
ATTENTION_COLUMNS = [
    "task", "condition", "layer", "head", "role", "source", "key_role", "n_prompts", "attention", "attention_sem",
]  # fmt: skip
COPY_COLUMNS = [
    "task", "layer", "head", "role", "source", "n_tokens", "copy_score", "negative_copy_score", "diagonal_rank",
]  # fmt: skip
OV_COLUMNS = [
    "task", "layer", "head", "role", "source", "source_token", "target_token", "source_text", "target_text", "logit",
]  # fmt: skip


@dataclass(frozen=True)
class ReadHead:
    """A head whose mechanism is read, with the role it is read as and where that role comes from
    ("circuit" for the task's own circuit, "intervention:{set}" for a head the intervention edits)."""

    layer: int
    head: int
    role: str
    source: str = "circuit"


def circuit_read_heads(circuit: Mapping[str, Any]) -> list[ReadHead]:
    """Every head of a circuit JSON with its role, in layer and head order."""
    return sorted(
        (ReadHead(int(e["layer"]), int(e["head"]), str(e["role"])) for e in circuit.get("heads", [])),
        key=lambda r: (r.layer, r.head),
    )


def with_edited_heads(heads: Sequence[ReadHead], sets: Mapping[str, Sequence[Head]]) -> list[ReadHead]:
    """`heads` plus every head of the edit sets {set name: heads} not already among them, read as its set."""
    seen = {(r.layer, r.head) for r in heads}
    extra = []
    for name, set_heads in sets.items():
        for layer, head in set_heads:
            if (layer, head) not in seen:
                seen.add((layer, head))
                extra.append(ReadHead(int(layer), int(head), name, f"intervention:{name}"))
    return sorted([*heads, *extra], key=lambda r: (r.layer, r.head))


def _head_labels(heads: Sequence[ReadHead]) -> pd.DataFrame:
    return pd.DataFrame(
        {"layer": [r.layer for r in heads], "head": [r.head for r in heads], "role": [r.role for r in heads],
         "source": [r.source for r in heads]}
    )  # fmt: skip


def intervention_reads(
    section: Mapping[str, Any],
    circuits: Mapping[str, Mapping[str, Any] | None],
    n_layers: int,
    n_heads: int,
    where: str,
) -> tuple[list[Condition], dict[str, list[Head]]]:
    """The conditions the intervention runs (the baseline first; skipped ones left out) and the heads they
    edit, by head set {set: heads}, from one model's `intervention` section (`intervention.model_section`)
    and the circuits. The movers, which the intervention reads but never edits, are not among them."""
    settings = InterventionSettings.from_config(section)
    sets = resolve_head_sets(section["heads"], circuits, n_layers, n_heads, settings.mover_stage, where=where)
    conditions = [plan.condition for plan in plan_conditions(sets, settings) if plan.condition is not None]
    edited = {head for condition in conditions for head in condition.heads}
    return conditions, {name: [h for h in s.heads if h in edited] for name, s in sets.items()}


def attention_to_roles(
    model,
    dataset: TaskDataset,
    heads: Sequence[ReadHead],
    conditions: Sequence[Condition] = (Condition(BASELINE),),
    *,
    batch_size: int = 50,
) -> pd.DataFrame:
    """Mean attention from END to each role of the dataset, per condition, head and role (`ATTENTION_COLUMNS`).

    `attention` is the mean over prompts of the attention weight from END to the role's token (after any
    edit of that head, so an overridden head shows the override's weights), `attention_sem` its standard
    error. The key roles are all of the dataset's roles, END included (attention to itself).
    """
    if not heads:
        return pd.DataFrame(columns=ATTENTION_COLUMNS)
    roles = list(dataset.positions)
    # The readouts also compute each head's direct logit attribution, which needs a metric linear in the
    # logits; only attention is kept here, so a probability-difference task is read as its logit difference.
    readable = dataset if dataset.metric.linear else replace(dataset, meta={**dataset.meta, "metric": "logit_diff"})
    _, per_head = run_conditions_with_readouts(
        model, readable, conditions, [(r.layer, r.head) for r in heads], roles, batch_size=batch_size, progress=False
    )
    long = per_head.melt(
        id_vars=["condition", "prompt", "layer", "head"],
        value_vars=[f"attn_{role}" for role in roles],
        var_name="key_role",
        value_name="attention",
    )
    long["key_role"] = long["key_role"].str.removeprefix("attn_")
    grouped = long.groupby(["condition", "layer", "head", "key_role"], sort=False)["attention"]
    table = grouped.agg(n_prompts="size", attention="mean", attention_sem="sem").reset_index()
    table = table.merge(_head_labels(heads), on=["layer", "head"], how="left")
    table.insert(0, "task", dataset.task)
    return table[ATTENTION_COLUMNS]


def diagonal_rank(logits: torch.Tensor) -> torch.Tensor:
    """Per [..., n, n] OV logit matrix, the mean over rows of the rank of the diagonal entry within its row,
    scaled to [0, 1]: 0 when every answer's own logit is the largest (copying), 1 when it is the smallest
    (negative copying), about 0.5 for a head that ignores which answer it reads."""
    n = logits.shape[-1]
    own = logits.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
    above = (logits > own).sum(dim=-1).float()  # entries larger than the row's own logit
    return above.mean(dim=-1) / (n - 1)


def ov_copy_tables(model, dataset: TaskDataset, heads: Sequence[ReadHead]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each head's OV circuit on the dataset's answer tokens: (copy table, long OV logit table).

    The answer tokens are the dataset's `answer_tokens` (answers and wrong answers of every prompt), the
    same tokens the circuits' copy scores are computed on. Copy table (`COPY_COLUMNS`): per head, copy and
    negative copy score (`head_roles.copy_fractions`) and `diagonal_rank`. OV table (`OV_COLUMNS`): one row
    per head, source answer (the token the head reads) and target answer (the logit it writes to).
    """
    if not heads:
        return pd.DataFrame(columns=COPY_COLUMNS), pd.DataFrame(columns=OV_COLUMNS)
    tokens = distinct_tokens(dataset.answer_tokens)
    logits = ov_answer_logits(model, tokens, [(r.layer, r.head) for r in heads]).double().cpu()
    copy, negative = copy_fractions(logits)
    copy_table = _head_labels(heads)
    copy_table.insert(0, "task", dataset.task)
    copy_table["n_tokens"] = len(tokens)
    copy_table["copy_score"] = copy.numpy()
    copy_table["negative_copy_score"] = negative.numpy()
    copy_table["diagonal_rank"] = diagonal_rank(logits).numpy()
    tokenizer = getattr(model, "tokenizer", None)
    texts = [tokenizer.decode([t]) if tokenizer is not None else str(t) for t in tokens]
    n = len(tokens)
    source, target = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
    parts = []
    for k, r in enumerate(heads):
        parts.append(
            pd.DataFrame(
                {
                    "task": dataset.task,
                    "layer": r.layer,
                    "head": r.head,
                    "role": r.role,
                    "source": r.source,
                    "source_token": np.asarray(tokens)[source],
                    "target_token": np.asarray(tokens)[target],
                    "source_text": np.asarray(texts)[source],
                    "target_text": np.asarray(texts)[target],
                    "logit": logits[k].flatten().numpy(),
                }
            )  # fmt: skip
        )
    return copy_table[COPY_COLUMNS], pd.concat(parts, ignore_index=True)[OV_COLUMNS]


def mechanism_tables(
    model,
    datasets: Mapping[str, TaskDataset],
    heads: Mapping[str, Sequence[ReadHead]],
    conditions: Mapping[str, Sequence[Condition]],
    *,
    batch_size: int = 50,
) -> dict[str, pd.DataFrame]:
    """The mechanism tables of one model over its tasks (`MECHANISM_TABLES`).

    `datasets[task]` holds each task's prompts, `heads[task]` the heads read on it, `conditions[task]` the
    attention-edit conditions its attention is read under (the baseline alone when a task has none).
    """
    attention, copy, ov = [], [], []
    for task, dataset in datasets.items():
        attention.append(
            attention_to_roles(
                model, dataset, heads[task], conditions.get(task, (Condition(BASELINE),)), batch_size=batch_size
            )
        )
        task_copy, task_ov = ov_copy_tables(model, dataset, heads[task])
        copy.append(task_copy)
        ov.append(task_ov)
    return {
        "attention": _concat(attention, ATTENTION_COLUMNS),
        "copy_scores": _concat(copy, COPY_COLUMNS),
        "ov": _concat(ov, OV_COLUMNS),
    }


def _concat(parts: Sequence[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    kept = [p for p in parts if not p.empty]
    return pd.concat(kept, ignore_index=True)[columns] if kept else pd.DataFrame(columns=columns)
