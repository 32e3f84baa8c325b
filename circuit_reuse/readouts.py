"""Per-head readouts at END, taken during the same forward passes as an evaluation, and their summaries.

For chosen readout heads, `readout_hooks` records (after any edit of the same hook point) each head's
attention row at END and its output z at END, and the final norm's scale at END; `head_rows` turns
them into one row per prompt and head: attention to each named role, and the head's direct logit
attribution (`head_logit_attribution`) to the task's metric and to the answer alone. `mover_readouts`
summarises those rows per condition and head against the baseline; `mover_spearman` rank-correlates the
change with each head's path-patching importance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_reuse.circuits import Head
from circuit_reuse.datasets import TaskDataset
from circuit_reuse.edits import BASELINE, Hook, role_positions
from circuit_reuse.hook_names import FINAL_LN_SCALE, attention_pattern, head_output
from circuit_reuse.statistics import spearman
from circuit_reuse.weights import ModelWeights


class ReadoutError(ValueError):
    """A readout is not defined for the task: direct logit attribution of a metric not linear in the logits."""


@dataclass(frozen=True)
class ReadoutWeights:
    """The weights `head_rows` reads, read once (the bridge stacks them on every access): the final norm's
    weight, W_U, every layer's W_O [layers, heads, d_head, d_model], and whether the final norm centres."""

    gamma: torch.Tensor
    W_U: torch.Tensor
    W_O: torch.Tensor
    centred: bool


def readout_weights(model) -> ReadoutWeights:
    weights = ModelWeights(model)
    w_o = torch.stack([weights.layer(layer).W_O for layer in range(weights.n_layers)])
    return ReadoutWeights(weights.final_w.detach(), weights.W_U.detach(), w_o.detach(), weights.centres)


def readout_hooks(layers: Mapping[int, list[int]], rows: torch.Tensor, end: torch.Tensor, seen: dict) -> list[Hook]:
    """Hooks that record into `seen`, for the heads {layer: [head, ...]}, the attention row and z at END
    (`pattern.{layer}` [batch, heads, keys], `z.{layer}` [batch, heads, d_head]) and the final LayerNorm's
    scale at END (`scale` [batch]). Put them after any edit of the same hook point, so they see what the
    head actually used."""
    hooks: list[Hook] = []
    for layer, heads in layers.items():
        heads_t = torch.tensor(heads, dtype=torch.long, device=rows.device)

        def read_pattern(pattern, hook=None, layer=layer, heads_t=heads_t):
            seen[f"pattern.{layer}"] = pattern[rows[:, None], heads_t[None, :], end[:, None]]
            return pattern

        def read_z(z, hook=None, layer=layer, heads_t=heads_t):
            seen[f"z.{layer}"] = z[rows, end][:, heads_t]
            return z

        hooks += [(attention_pattern(layer), read_pattern), (head_output(layer), read_z)]

    def read_scale(scale, hook=None):
        seen["scale"] = scale[rows, end, 0]
        return scale

    return [*hooks, (FINAL_LN_SCALE, read_scale)]


def head_rows(
    batch: TaskDataset,
    condition: str,
    prompts: np.ndarray,
    layers: Mapping[int, list[int]],
    roles: Sequence[str],
    seen: Mapping[str, torch.Tensor],
    weights: ReadoutWeights,
) -> pd.DataFrame:
    """One row per prompt and readout head from what `readout_hooks` recorded in `seen`: condition, prompt,
    layer, head, attn_{role} for each of `roles`, dla (onto the metric's direction) and dla_answer."""
    gamma, w_u = weights.gamma, weights.W_U
    answers = batch.answer_tokens.to(w_u.device)
    if not batch.metric.linear:
        raise ReadoutError(f"direct logit attribution needs a metric linear in the logits, not {batch.metric.name}")
    # Each prompt's metric direction (sum of weight x unembedding column) through the final LayerNorm's
    # weight (see head_logit_attribution): for the logit difference W_U[:, answer] - W_U[:, wrong].
    tokens, token_weights = batch.metric_tokens.to(w_u.device), batch.metric_weights.to(w_u.device, w_u.dtype)
    direction = gamma[None, :] * torch.einsum("dbk,bk->bd", w_u[:, tokens], token_weights)  # [batch, d_model]
    answer_direction = gamma[None, :] * w_u[:, answers[:, 0]].T
    parts = []
    for layer, hs in layers.items():
        pattern = seen[f"pattern.{layer}"].double()
        z = seen[f"z.{layer}"]
        w_o = weights.W_O[layer, hs]  # [heads, d_head, d_model]
        out = torch.einsum("bhe,hed->bhd", z, w_o)
        dla = head_logit_attribution(out, seen["scale"], direction, weights.centred)
        dla_answer = head_logit_attribution(out, seen["scale"], answer_direction, weights.centred)
        for i, head in enumerate(hs):
            columns: dict[str, Any] = {"condition": condition, "prompt": prompts, "layer": layer, "head": head}
            for role in roles:
                position = role_positions(batch, role).to(pattern.device)
                columns[f"attn_{role}"] = pattern[torch.arange(len(batch)), i, position].cpu().numpy()
            columns["dla"] = dla[:, i].cpu().numpy()
            columns["dla_answer"] = dla_answer[:, i].cpu().numpy()
            parts.append(pd.DataFrame(columns))
    return pd.concat(parts, ignore_index=True)


def head_logit_attribution(
    head_out: torch.Tensor, scale: torch.Tensor, direction: torch.Tensor, centred: bool = True
) -> torch.Tensor:
    """Direct logit attribution of head outputs at one position per prompt: [batch, heads].

    `head_out` [batch, heads, d_model] holds the heads' outputs (z @ W_O; the attention bias belongs to no
    head), `scale` [batch] the final LayerNorm's scale in the same run, and `direction` [batch, d_model]
    gamma * (W_U[:, correct] - W_U[:, wrong]), gamma the final LayerNorm's weight. The final LayerNorm is
    LN(x) = gamma * (x - mean(x)) / scale + beta; with the run's scale held it is linear in x, so a head's
    output o adds gamma * (o - mean(o)) / scale to the normalised residual and
    (o - mean(o)) / scale . direction to the logit difference. That is exactly how much the logit
    difference drops when o is taken out of the final residual stream with the scale held. An RMSNorm
    (`centred` False) subtracts no mean: the same holds with o itself.
    """
    if centred:
        head_out = head_out - head_out.mean(-1, keepdim=True)
    return torch.einsum("bhd,bd->bh", head_out.double(), direction.double()) / scale.double()[:, None]


def mover_readouts(
    head_table: pd.DataFrame,
    answer_role: str,
    wrong_roles: Sequence[str],
    baseline: str = BASELINE,
    intervened: Mapping[str, Iterable[Head]] | None = None,
    importance: Mapping[Head, float] | None = None,
) -> pd.DataFrame:
    """Per readout head and condition: mean attention to the answer and wrong roles, mean DLA, and changes.

    Columns: condition, layer, head, n_prompts, attn_answer (attention from END to `answer_role`),
    attn_wrong (summed over `wrong_roles`), attn_{role} for each wrong role, dla, dla_answer (means over
    prompts), d_attn_answer, d_attn_wrong, d_dla, d_dla_answer (minus the baseline's), dla_ratio
    (dla / baseline dla), intervened (the head's own attention was edited in this condition) and
    importance (its path-patching score, NaN when unknown).
    """
    wrong_columns = [f"attn_{r}" for r in wrong_roles]
    columns = [
        "condition", "layer", "head", "n_prompts", "attn_answer", "attn_wrong", *wrong_columns, "dla", "dla_answer",
        "d_attn_answer", "d_attn_wrong", "d_dla", "d_dla_answer", "dla_ratio", "intervened", "importance",
    ]  # fmt: skip
    if head_table.empty:
        return pd.DataFrame(columns=columns)
    table = head_table.copy()
    table["attn_answer"] = table[f"attn_{answer_role}"]
    table["attn_wrong"] = table[wrong_columns].sum(axis=1)
    values = ["attn_answer", "attn_wrong", *wrong_columns, "dla", "dla_answer"]
    grouped = table.groupby(["condition", "layer", "head"], sort=False)
    out = grouped[values].mean().reset_index()
    out.insert(3, "n_prompts", grouped.size().to_numpy())
    base = out[out["condition"] == baseline].set_index(["layer", "head"])[values]
    keyed = out.set_index(["layer", "head"]).index
    for name in ("attn_answer", "attn_wrong", "dla", "dla_answer"):
        before = base[name].reindex(keyed).to_numpy() if not base.empty else np.nan
        out[f"d_{name}"] = out[name].to_numpy() - before
    before_dla = base["dla"].reindex(keyed).to_numpy() if not base.empty else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        out["dla_ratio"] = out["dla"].to_numpy() / before_dla
    edited = {name: {tuple(h) for h in heads} for name, heads in (intervened or {}).items()}
    keys = list(zip(out["layer"], out["head"], strict=True))
    out["intervened"] = [key in edited.get(c, set()) for c, key in zip(out["condition"], keys, strict=True)]
    out["importance"] = [float((importance or {}).get(key, np.nan)) for key in keys]
    return out[columns]


def mover_spearman(
    movers: pd.DataFrame, metrics: Sequence[str] = ("d_dla", "d_attn_answer", "d_attn_wrong"), baseline: str = BASELINE
) -> pd.DataFrame:
    """Per condition (but the baseline) and metric: Spearman's rho of the movers' change vs their importance.

    Columns: condition, metric, n_heads, rho, p_value, status ("ok", or why rho is NaN).
    """
    rows = []
    for name, group in movers[movers["condition"] != baseline].groupby("condition", sort=False):
        for metric in metrics:
            rho, p, n = spearman(group[metric], group["importance"])
            status = "ok" if not math.isnan(rho) else f"too few heads with finite values ({n}) or a constant side"
            rows.append({"condition": name, "metric": metric, "n_heads": n, "rho": rho, "p_value": p, "status": status})
    return pd.DataFrame(rows, columns=["condition", "metric", "n_heads", "rho", "p_value", "status"])
