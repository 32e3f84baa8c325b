"""Attention edits at the last real token (END), computed from the weights: one clean pass, then END alone.

An edit of some heads' attention row at END changes nothing at any earlier position (attention is causal)
and nothing below the lowest edited layer. So an edited run agrees with the clean run everywhere but at
END from that layer up, and END there attends to the clean run's keys and values at every earlier
position. `run_end_edits` makes one clean forward pass over a batch of prompts, keeps those keys and
values and END's residual stream, then recomputes END alone, from each edit set's lowest edited layer up,
for many edit sets at once (one "row" each), the way the fast path patching recomputes its window
(`circuit_reuse.patching`; both compute from `circuit_reuse.weights`, whose clean forward pass it uses).

The engine knows nothing of conditions or dataset roles: an edit set is a list of `EndEdit`s, each a
layer, some heads and a function on those heads' attention rows at END, [batch, heads, keys] with keys
at absolute positions 0..T-1 (a key after a prompt's END holds 0 before the edit and must hold 0 after).
That is exactly the row a `blocks.{layer}.attn.hook_pattern` hook sees at END, so one function serves
both; the hooked forward pass stays the reference (tests/test_end_edits.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from circuit_reuse.weights import ModelWeights, fast_path_problem, forward_capturing

# An edit of attention rows [batch, heads, keys] -> the edited rows, same shape.
RowEdit = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EndEdit:
    """At END, in `layer`, the rows of `heads` become `edit(rows)`."""

    layer: int
    heads: tuple[int, ...]
    edit: RowEdit


@dataclass
class EndRun:
    """What `run_end_edits` returns, one leading row per edit set, in the order given.

    final: the final residual stream at END [R, B, d_model]. patterns / z: per readout layer, the readout
    heads' attention row at END after any edit [R, B, heads, T] and their output before W_O [R, B, heads,
    d_head].
    """

    final: torch.Tensor
    patterns: dict[int, torch.Tensor]
    z: dict[int, torch.Tensor]


def supports(model) -> bool:
    """Whether `run_end_edits` implements this model's family and config (`circuit_reuse.families`)."""
    return fast_path_problem(model) is None


def final_scale(weights: ModelWeights, final: torch.Tensor) -> torch.Tensor:
    """The final norm's scale of residual rows [..., d] (the bridge's ln_final.hook_scale)."""
    return weights.norm_scale(final)


def final_logits(weights: ModelWeights, final: torch.Tensor) -> torch.Tensor:
    """Logits [..., d_vocab] from final residual rows [..., d]."""
    return weights.final_norm(final) @ weights.W_U + weights.b_U


@torch.no_grad()
def run_end_edits(
    weights: ModelWeights,
    tokens: torch.Tensor,
    end: torch.Tensor,
    edit_sets: Sequence[Sequence[EndEdit]],
    readout: Mapping[int, Sequence[int]] | None = None,
) -> EndRun:
    """The final residual stream at END under each edit set, and the readout heads' pattern and z there.

    tokens [B, T]: right-padded prompts, every END (`end` [B]) at most T - 1; nothing after a prompt's END
    is read. readout: {layer: heads} read in every edit set. An edit set starts at its lowest edited layer
    (or the lowest readout layer, if lower) from the clean residual stream at END; one with no edits and no
    readouts is the clean run. Edits of one layer and set apply in the order given.
    """
    readout = {layer: tuple(heads) for layer, heads in sorted((readout or {}).items())}
    B, T = tokens.shape
    n_layers, d = weights.n_layers, weights.d_model
    for edits in edit_sets:
        for e in edits:
            if not 0 <= e.layer < n_layers:
                raise ValueError(f"an END edit's layer {e.layer} is outside the model's {n_layers} layers")
    starts = [min([e.layer for e in edits] + list(readout), default=n_layers) for edits in edit_sets]
    first = min(starts, default=n_layers)
    order = sorted(range(len(edit_sets)), key=starts.__getitem__)  # rows by start layer: active rows lead
    rank = {row: i for i, row in enumerate(order)}
    prompts = torch.arange(B, device=tokens.device)
    keys = torch.arange(T, device=tokens.device)[None, :]
    at_end = (keys == end[:, None])[:, None, None, :]  # [B, 1, 1, T]
    after_end = (keys > end[:, None])[:, None, None, :]

    clean: dict = {}

    def keep(what: str, layer: int, activation: torch.Tensor) -> None:
        if layer < first:
            return
        if what in ("k", "v"):
            clean[what, layer] = weights.expand_groups(activation, 2).transpose(1, 2)  # [B, H, T, dh]
        elif what == "resid_pre" and layer in starts:
            clean["resid", layer] = activation[prompts, end]

    clean_final = forward_capturing(weights, tokens, keep)[prompts, end]
    R = len(edit_sets)
    resid = clean_final.expand(R, B, d).clone()  # in start order; a row that never starts stays clean
    edits_at: dict[int, list[tuple[int, torch.Tensor, RowEdit]]] = {}
    for row, edits in enumerate(edit_sets):
        for e in edits:
            heads = torch.tensor(e.heads, dtype=torch.long, device=tokens.device)
            edits_at.setdefault(e.layer, []).append((rank[row], heads, e.edit))
    patterns, zs = {}, {}
    sorted_starts = [starts[row] for row in order]
    for layer in range(first, n_layers):
        active = sum(1 for s in sorted_starts if s <= layer)
        starting = [i for i, s in enumerate(sorted_starts) if s == layer]
        if starting:
            resid[starting] = clean["resid", layer]
        w = weights.layer(layer)
        q, k, v = weights.split_qkv(weights.project_qkv(layer, weights.norm(resid[:active], w.norm1_w, w.norm1_b)))
        q, k = weights.rotate(q, end), weights.rotate(k, end)  # [active, B, heads, dh]
        k, v = weights.expand_groups(k, 2), weights.expand_groups(v, 2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [B, H, active, dh]
        q = q * weights.scale
        clean_k, clean_v = clean["k", layer], clean["v", layer]
        # END's own key and value are the row's; every earlier position's are the clean run's.
        scores = q @ clean_k.transpose(-1, -2)  # [B, H, active, T]
        scores = torch.where(at_end, (q * k).sum(-1, keepdim=True), scores).masked_fill(after_end, -torch.inf)
        pattern = scores.softmax(dim=-1)
        for row, heads, edit in edits_at.get(layer, ()):
            pattern[:, heads, row] = edit(pattern[:, heads, row])
        z = pattern.masked_fill(at_end, 0.0) @ clean_v + (pattern * at_end).sum(-1, keepdim=True) * v
        if layer in readout:
            heads = list(readout[layer])
            patterns[layer] = pattern[:, heads].permute(2, 0, 1, 3)  # [R, B, heads, T]
            zs[layer] = z[:, heads].permute(2, 0, 1, 3)
        resid[:active] = weights.block_output(
            layer, resid[:active], weights.attention_output(layer, z.permute(2, 0, 1, 3))
        )
    back = torch.tensor([rank[row] for row in range(R)], dtype=torch.long, device=tokens.device)
    return EndRun(
        final=resid[back],
        patterns={layer: p[back] for layer, p in patterns.items()},
        z={layer: z[back] for layer, z in zs.items()},
    )
