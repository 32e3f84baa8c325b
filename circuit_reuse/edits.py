"""Edits of a forward pass, as hooks: what heads attend to, and what heads write.

Every edit is a list of (hook name, function) pairs for `model.run_with_hooks`, so edits compose
(`merge_hooks`) and one runner serves them all (`circuit_reuse.evaluation`: `end_logits`, `run_conditions`):

- Attention edits on `attention_pattern(layer)` ([batch, head, query, key]), one hook per layer that edits
  every chosen head of that layer: `attention_override_hooks` replaces the query row of one position per
  prompt by a fixed distribution over key positions; `attention_block_hooks` zeroes the row on a token span
  and renormalises the rest. Each is a row edit (`override_rows`, `block_rows`: a function on the chosen
  heads' rows [batch, heads, keys]) applied by `row_edit_hooks`; the END-only engine
  (`circuit_reuse.end_edits`) applies the same row edits without hooks.
- `Override`, `Block` and `Condition` describe attention edits by dataset roles and spans, so one
  condition serves every prompt of any task; the condition named `BASELINE` edits nothing.
  `Condition.hooks` gives its hooks, `Condition.end_edits` the same edits for the END-only engine.
- `ablation_hooks`: head-output ablation on `head_output(layer)` ([batch, pos, head, d_head]), every head
  outside a kept set replaced by given outputs (faithfulness; `circuit_reuse.ablation` computes the
  replacements: mean by role, resample, zero).
- `check_heads`: (layer, head) pairs checked against the model's shape, for every edit's heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from circuit_reuse.circuits import Head
from circuit_reuse.datasets import END, TaskDataset
from circuit_reuse.end_edits import EndEdit, RowEdit
from circuit_reuse.hook_names import attention_pattern, head_output

Hook = tuple[str, Callable]

# The name of the condition that edits nothing: the unmodified model, every comparison's reference.
BASELINE = "none"


class EditError(ValueError):
    """An edit cannot be built: unknown role or span, a head outside the model, a non-causal target, ..."""


def check_heads(heads: Iterable[Sequence[int]], n_layers: int, n_heads: int, where: str = "") -> list[Head]:
    """The heads as sorted, distinct (layer, head) ints; EditError naming `where` and any entry that is not
    a [layer, head] pair or a head outside the model."""
    prefix = f"{where}: " if where else ""
    checked = set()
    for entry in heads:
        if len(entry) != 2:
            raise EditError(f"{prefix}{entry!r} is not a [layer, head] pair")
        layer, head = int(entry[0]), int(entry[1])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise EditError(f"{prefix}head {layer}.{head} is outside the model ({n_layers} layers x {n_heads} heads)")
        checked.add((layer, head))
    return sorted(checked)


def heads_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """The heads grouped by layer, layers and heads sorted: {layer: [head, ...]}."""
    layers: dict[int, list[int]] = {}
    for layer, head in sorted({(int(layer), int(head)) for layer, head in heads}):
        layers.setdefault(layer, []).append(head)
    return layers


# --------------------------------------------------------------------------------------------------
# Attention edits as hooks


def _target_weights(key_positions: torch.Tensor, weights) -> torch.Tensor:
    """Weights [batch, k] for the key positions: uniform when None; checked to be a distribution."""
    batch, k = key_positions.shape
    if k == 0:
        raise EditError("an attention override needs at least one key position")
    if weights is None:
        return torch.full((batch, k), 1.0 / k, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.dim() == 1:
        weights = weights.expand(batch, k)
    if weights.shape != (batch, k):
        raise EditError(f"override weights have shape {tuple(weights.shape)}; expected ({k},) or {(batch, k)}")
    if (weights < 0).any() or not torch.allclose(weights.sum(-1), torch.ones(batch, dtype=torch.float64), atol=1e-6):
        raise EditError("override weights must be non-negative and sum to 1 (they replace a softmax row)")
    return weights


def override_rows(
    query_positions: torch.Tensor, key_positions: torch.Tensor, weights: Sequence[float] | torch.Tensor | None = None
) -> RowEdit:
    """The edit that makes each prompt's attention rows [batch, heads, keys] exactly one distribution.

    `key_positions` [batch, k] are the keys that receive weight and `weights` ([k] or [batch, k], uniform
    when None) how much: each row becomes that distribution, 0 elsewhere (two keys at the same position
    add up), whatever it was. `query_positions` [batch] are the rows' own positions: a key after its query
    would let a head read the future, so it is refused.
    """
    query_positions = torch.as_tensor(query_positions, dtype=torch.long).flatten()
    key_positions = torch.as_tensor(key_positions, dtype=torch.long)
    if key_positions.dim() == 1:
        key_positions = key_positions[:, None]
    if key_positions.shape[0] != query_positions.shape[0]:
        raise EditError(
            f"{key_positions.shape[0]} rows of key positions for {query_positions.shape[0]} query positions"
        )
    if (key_positions > query_positions[:, None]).any() or (key_positions < 0).any():
        raise EditError("override key positions must lie at or before their query position (causal attention)")
    w = _target_weights(key_positions, weights)

    def edit(rows: torch.Tensor) -> torch.Tensor:
        batch, _, n_keys = rows.shape
        target = torch.zeros(batch, n_keys, dtype=rows.dtype, device=rows.device)
        target.scatter_add_(1, key_positions.to(rows.device), w.to(device=rows.device, dtype=rows.dtype))
        return target[:, None, :].expand_as(rows)

    return edit


def block_rows(query_positions: torch.Tensor, key_spans: torch.Tensor) -> RowEdit:
    """The edit that zeroes each prompt's attention rows [batch, heads, keys] on a span and renormalises.

    `key_spans` [batch, 2] holds half-open [start, end) ranges, one per query position. The row's weight on
    the span is set to 0 and the rest is renormalised to sum to 1, so the head still writes a convex
    combination of its values, read from everywhere but the span (leaving the row unnormalised would also
    shrink what the head writes, mixing "does not read the question" with "writes less"). A row whose
    whole weight lay on the span stays all zero: the head then writes nothing at that position.
    """
    key_spans = torch.as_tensor(key_spans, dtype=torch.long)
    if key_spans.shape != (len(query_positions), 2):
        raise EditError(f"key spans have shape {tuple(key_spans.shape)}; expected ({len(query_positions)}, 2)")

    def edit(rows: torch.Tensor) -> torch.Tensor:
        keys = torch.arange(rows.shape[-1], device=rows.device)[None, :]
        spans = key_spans.to(rows.device)
        inside = (keys >= spans[:, :1]) & (keys < spans[:, 1:])  # [batch, n_keys]
        kept = rows.masked_fill(inside[:, None, :], 0.0)
        total = kept.sum(-1, keepdim=True)
        return torch.where(total > 0, kept / total.clamp_min(torch.finfo(kept.dtype).tiny), kept)

    return edit


def row_edit_hooks(heads: Iterable[Head], query_positions: torch.Tensor, edit: RowEdit) -> list[Hook]:
    """Hooks that apply `edit` to the chosen heads' attention rows at one query position per prompt.

    One hook per layer edits all chosen heads of that layer; every other head, and every other query
    position of the chosen heads, is left as it is.
    """
    query_positions = torch.as_tensor(query_positions, dtype=torch.long).flatten()

    def make(head_index: list[int]) -> Callable:
        heads_t = torch.tensor(head_index, dtype=torch.long)

        def hook(pattern: torch.Tensor, hook=None) -> torch.Tensor:
            device = pattern.device
            rows = torch.arange(pattern.shape[0], device=device)[:, None]
            index = (rows, heads_t.to(device)[None, :], query_positions.to(device)[:, None])
            out = pattern.clone()
            out[index] = edit(pattern[index])  # [batch, heads, n_keys]
            return out

        return hook

    return [(attention_pattern(layer), make(hs)) for layer, hs in heads_by_layer(heads).items()]


def attention_override_hooks(
    heads: Iterable[Head],
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
) -> list[Hook]:
    """Hooks that replace, for each chosen head, the attention row of one query position per prompt
    (`query_positions` [batch], END for the paper) by a fixed distribution (`override_rows`)."""
    return row_edit_hooks(heads, query_positions, override_rows(query_positions, key_positions, weights))


def attention_block_hooks(heads: Iterable[Head], query_positions: torch.Tensor, key_spans: torch.Tensor) -> list[Hook]:
    """Hooks that stop the chosen heads, at one query position per prompt, from attending to a token span
    (`block_rows`)."""
    return row_edit_hooks(heads, query_positions, block_rows(query_positions, key_spans))


def merge_hooks(hooks: Iterable[Hook]) -> list[Hook]:
    """One hook per hook point: several edits of the same layer run one after the other, in order."""
    grouped: dict[str, list[Callable]] = {}
    for name, fn in hooks:
        grouped.setdefault(name, []).append(fn)

    def chain(fns: list[Callable]) -> Callable:
        def hook(tensor, hook=None):
            for fn in fns:
                tensor = fn(tensor, hook)
            return tensor

        return hook

    return [(name, fns[0] if len(fns) == 1 else chain(fns)) for name, fns in grouped.items()]


# --------------------------------------------------------------------------------------------------
# Conditions: attention edits described by dataset roles


def role_positions(dataset: TaskDataset, role: str) -> torch.Tensor:
    """Each prompt's position of `role` [n]; EditError naming the dataset's roles when it has no such role."""
    if role not in dataset.positions:
        raise EditError(
            f"role {role!r} is not in the {dataset.task} dataset; its roles: {', '.join(sorted(dataset.positions))}"
        )
    return dataset.positions[role]


@dataclass(frozen=True)
class Override:
    """At `query_role`, the heads attend only to `target_roles`, with `weights` (uniform when None)."""

    heads: tuple[Head, ...]
    target_roles: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    query_role: str = END

    def row_edit(self, batch: TaskDataset) -> tuple[torch.Tensor, RowEdit]:
        """Where (the query positions [batch]) and how the heads' attention rows change on this batch."""
        query = role_positions(batch, self.query_role)
        keys = torch.stack([role_positions(batch, r) for r in self.target_roles], dim=1)
        return query, override_rows(query, keys, self.weights)


@dataclass(frozen=True)
class Block:
    """At `query_role`, the heads attend to nothing in the dataset span `span` (the rest renormalised)."""

    heads: tuple[Head, ...]
    span: str = "question"
    query_role: str = END

    def row_edit(self, batch: TaskDataset) -> tuple[torch.Tensor, RowEdit]:
        """Where (the query positions [batch]) and how the heads' attention rows change on this batch."""
        if self.span not in batch.spans:
            raise EditError(
                f"span {self.span!r} is not in the {batch.task} dataset; its spans: {', '.join(sorted(batch.spans))}"
            )
        query = role_positions(batch, self.query_role)
        return query, block_rows(query, batch.spans[self.span])


@dataclass(frozen=True)
class Condition:
    """A named set of attention edits applied together; no edits is the unmodified model."""

    name: str
    edits: tuple[Override | Block, ...] = ()

    @property
    def heads(self) -> list[Head]:
        return sorted({tuple(h) for edit in self.edits for h in edit.heads})

    def hooks(self, batch: TaskDataset) -> list[Hook]:
        return merge_hooks(hook for edit in self.edits for hook in row_edit_hooks(edit.heads, *edit.row_edit(batch)))

    def end_edits(self, batch: TaskDataset) -> list[EndEdit]:
        """The same edits for `circuit_reuse.end_edits`, which edits only END: every query position must be it."""
        found = []
        for edit in self.edits:
            query, row_edit = edit.row_edit(batch)
            if not torch.equal(query, batch.end):
                raise EditError(f"condition {self.name!r} edits attention at {edit.query_role}, not at END")
            found += [EndEdit(layer, tuple(heads), row_edit) for layer, heads in heads_by_layer(edit.heads).items()]
        return found

    def remap(self, mapping: Mapping[Head, Head], name: str | None = None) -> Condition:
        """The same edits on other heads: every head h becomes mapping[h]."""
        edits = tuple(replace(e, heads=tuple(mapping[tuple(h)] for h in e.heads)) for e in self.edits)
        return Condition(name or self.name, edits)


# --------------------------------------------------------------------------------------------------
# Head-output ablation


def ablation_hooks(keep: Iterable[Head], replacement: torch.Tensor, n_layers: int, n_heads: int) -> list[Hook]:
    """Forward hooks that replace every head outside `keep` by `replacement` (as from `replacement_outputs`)."""
    kept = set(check_heads(keep, n_layers, n_heads))
    hooks = []
    for layer in range(n_layers):
        ablated = [h for h in range(n_heads) if (layer, h) not in kept]
        if not ablated:
            continue
        index = torch.tensor(ablated, dtype=torch.long, device=replacement.device)

        def hook(z, hook=None, layer=layer, index=index):
            z = z.clone()
            z[:, : replacement.shape[1], index] = replacement[:, :, layer, index].to(z.dtype)
            return z

        hooks.append((head_output(layer), hook))
    return hooks
