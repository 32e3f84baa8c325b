"""The intervention experiment: overwrite some heads' attention and see what the model and its movers do.

The paper "repairs" Colored Objects in GPT-2 medium by making the IOI circuit's inhibition heads (12.3,
13.4, 13.13) and negative mover (19.1) attend, at END, half to each of the query's two wrong colours,
as they would attend to the subject in IOI. This module holds the pieces of that experiment, written for
any task whose dataset names the roles involved:

- Attention edits as forward hooks on `blocks.{l}.attn.hook_pattern` ([batch, head, query, key]), one
  hook per layer that edits every chosen head of that layer: `attention_override_hooks` replaces the
  query row of a role position by a fixed distribution over role positions; `attention_block_hooks` zeroes
  the row on a token span and renormalises the rest. `Override`, `Block` and `Condition` describe edits
  in terms of dataset roles, so one condition serves every prompt of any task.
- `run_conditions` / `run_conditions_with_readouts`: batched, deterministic forward passes under each
  condition, giving one tidy row per prompt (and per readout head).
- `accuracy_table`: accuracy with paired percentile-bootstrap intervals, and the errors each condition
  fixes and introduces relative to the baseline.
- `random_head_sets` / `random_head_controls`: the same edit on random heads matched by count and layer
  range, seeded.
- `mover_readouts` / `mover_spearman`: the mover heads' attention to the right and wrong answers and their
  direct logit attribution, their change against the baseline, and its rank correlation with each mover's
  path-patching importance.
- `resolve_head_sets` and `intervention_experiment`: heads from the config or from the discovered
  circuits, and the whole experiment as tidy tables.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_reuse import end_edits
from circuit_reuse.datasets import END, TaskDataset
from circuit_reuse.end_edits import EndEdit, RowEdit
from circuit_reuse.patching import GPT2Weights
from circuit_reuse.tasks import intervention_plan, registered_tasks

Head = tuple[int, int]
Hook = tuple[str, Callable]

BASELINE = "none"
BLOCK_CONDITION = "content_gatherers_blocked"
HEAD_SETS = ("inhibition", "negative_mover", "content_gatherers", "movers")

# The GPT-2 medium heads and conditions of the paper's intervention.
PAPER_HEADS: dict[str, tuple[Head, ...]] = {
    "inhibition": ((12, 3), (13, 4), (13, 13)),
    "negative_mover": ((19, 1),),
    "content_gatherers": ((11, 6), (11, 7), (12, 15)),
}
PAPER_CONDITIONS: dict[str, tuple[str, ...]] = {
    "inhibition": ("inhibition",),
    "negative_mover": ("negative_mover",),
    "both": ("inhibition", "negative_mover"),
}


class InterventionError(ValueError):
    """An intervention cannot be built: unknown role, head outside the model, a non-causal target, ..."""


def head_name(head: Head) -> str:
    return f"{head[0]}.{head[1]}"


def heads_label(heads: Iterable[Head]) -> str:
    """Heads as one sortable string, e.g. "12.3,13.4,19.1" (empty for no heads)."""
    return ",".join(head_name(h) for h in sorted(heads))


def pattern_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def _by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
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
        raise InterventionError("an attention override needs at least one key position")
    if weights is None:
        return torch.full((batch, k), 1.0 / k, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.dim() == 1:
        weights = weights.expand(batch, k)
    if weights.shape != (batch, k):
        raise InterventionError(f"override weights have shape {tuple(weights.shape)}; expected ({k},) or {(batch, k)}")
    if (weights < 0).any() or not torch.allclose(weights.sum(-1), torch.ones(batch, dtype=torch.float64), atol=1e-6):
        raise InterventionError("override weights must be non-negative and sum to 1 (they replace a softmax row)")
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
        raise InterventionError(
            f"{key_positions.shape[0]} rows of key positions for {query_positions.shape[0]} query positions"
        )
    if (key_positions > query_positions[:, None]).any() or (key_positions < 0).any():
        raise InterventionError("override key positions must lie at or before their query position (causal attention)")
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
        raise InterventionError(f"key spans have shape {tuple(key_spans.shape)}; expected ({len(query_positions)}, 2)")

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

    return [(pattern_hook_name(layer), make(hs)) for layer, hs in _by_layer(heads).items()]


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
# Conditions: edits described by dataset roles


def _role(dataset: TaskDataset, role: str) -> torch.Tensor:
    if role not in dataset.positions:
        raise InterventionError(
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
        query = _role(batch, self.query_role)
        keys = torch.stack([_role(batch, r) for r in self.target_roles], dim=1)
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
            raise InterventionError(
                f"span {self.span!r} is not in the {batch.task} dataset; its spans: {', '.join(sorted(batch.spans))}"
            )
        query = _role(batch, self.query_role)
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
                raise InterventionError(
                    f"condition {self.name!r} edits attention at {edit.query_role}, not only at END"
                )
            found += [EndEdit(layer, tuple(heads), row_edit) for layer, heads in _by_layer(edit.heads).items()]
        return found

    def remap(self, mapping: Mapping[Head, Head], name: str | None = None) -> Condition:
        """The same edits on other heads: every head h becomes mapping[h]."""
        edits = tuple(replace(e, heads=tuple(mapping[tuple(h)] for h in e.heads)) for e in self.edits)
        return Condition(name or self.name, edits)


# --------------------------------------------------------------------------------------------------
# Forward passes


def _device(model) -> torch.device:
    return model.W_U.device


def _batches(dataset: TaskDataset, batch_size: int) -> Iterator[tuple[int, TaskDataset]]:
    for start in range(0, len(dataset), batch_size):
        yield start, dataset.subset(slice(start, start + batch_size))


ENGINES = ("auto", "fast", "hooks")


def choose_engine(model, dataset: TaskDataset, conditions: Sequence[Condition], engine: str = "auto") -> str:
    """ "fast" (`circuit_reuse.end_edits`) or "hooks" (forward hooks on the bridge, the reference).

    "auto" takes the fast engine where it applies: a GPT-2 model and edits at END only. "fast" insists on it
    and says why it does not apply.
    """
    if engine not in ENGINES:
        raise InterventionError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "hooks":
        return engine
    why_not = None
    if not end_edits.supports(model):
        why_not = "the model is not a GPT-2 the fast engine implements"
    else:
        for condition in conditions:
            for edit in condition.edits:
                if not torch.equal(_role(dataset, edit.query_role), dataset.end):
                    why_not = f"condition {condition.name!r} edits attention at {edit.query_role}, not only at END"
    if why_not and engine == "fast":
        raise InterventionError(f"the fast engine does not apply: {why_not}")
    return "hooks" if why_not else "fast"


def _hooked_runs(model, batch: TaskDataset, conditions, readout_layers) -> Iterator[tuple[torch.Tensor, dict]]:
    """Per condition, a hooked forward pass: logits at END [batch, d_vocab] and the readouts seen."""
    device = _device(model)
    end = batch.end.to(device)
    rows = torch.arange(len(batch), device=device)
    width = int(batch.end.max()) + 1  # right padding after the last END is never read
    tokens = batch.clean_tokens[:, :width].to(device)
    for condition in conditions:
        hooks = condition.hooks(batch)
        seen: dict[str, torch.Tensor] = {}
        for layer, hs in readout_layers.items():
            hooks += _readout_hooks(layer, hs, rows, end, seen)
        if readout_layers:

            def read_scale(scale, hook=None, seen=seen):
                seen["scale"] = scale[rows, end, 0]
                return scale

            hooks.append(("ln_final.hook_scale", read_scale))
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        yield logits[rows, end], seen


def _fast_runs(weights, batch: TaskDataset, conditions, readout_layers) -> Iterator[tuple[torch.Tensor, dict]]:
    """The same from one clean pass and END alone per condition (`circuit_reuse.end_edits`)."""
    device = weights.model.W_U.device
    width = int(batch.end.max()) + 1
    tokens = batch.clean_tokens[:, :width].to(device)
    edit_sets = [condition.end_edits(batch) for condition in conditions]
    run = end_edits.run_end_edits(weights, tokens, batch.end.to(device), edit_sets, readout_layers)
    for i in range(len(conditions)):
        seen = {}
        if readout_layers:
            seen["scale"] = end_edits.final_scale(weights, run.final[i])
            for layer in readout_layers:
                seen[f"pattern.{layer}"], seen[f"z.{layer}"] = run.patterns[layer][i], run.z[layer][i]
        yield end_edits.end_logits(weights, run.final[i]), seen


@torch.no_grad()
def _evaluate(
    model,
    dataset: TaskDataset,
    conditions: Sequence[Condition],
    batch_size: int,
    readout_heads: Sequence[Head],
    readout_roles: Sequence[str],
    progress: bool,
    engine: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tqdm.auto import tqdm

    device = _device(model)
    readout_layers = _by_layer(readout_heads)
    weights = None
    if readout_heads:  # the bridge stacks these per access, so read them once
        weights = {"gamma": model.ln_final.weight.detach(), "W_U": model.W_U.detach(), "W_O": model.W_O.detach()}
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise InterventionError(f"condition names must be unique: {names}")
    if choose_engine(model, dataset, conditions, engine) == "fast":
        gpt2 = GPT2Weights(model)
        runs = lambda batch: _fast_runs(gpt2, batch, conditions, readout_layers)  # noqa: E731
    else:
        runs = lambda batch: _hooked_runs(model, batch, conditions, readout_layers)  # noqa: E731
    prompt_parts: dict[str, list[pd.DataFrame]] = {name: [] for name in names}
    head_parts: dict[str, list[pd.DataFrame]] = {name: [] for name in names}
    n_batches = math.ceil(len(dataset) / batch_size)
    bar = tqdm(_batches(dataset, batch_size), total=n_batches, desc="conditions", disable=not progress)
    for start, batch in bar:
        rows = torch.arange(len(batch), device=device)
        answers = batch.answer_tokens.to(device)
        prompts = np.arange(start, start + len(batch))
        for condition, (final, seen) in zip(conditions, runs(batch), strict=True):
            final = final.double()
            log_probs = final.log_softmax(-1)
            predicted = final.argmax(-1)
            prompt_parts[condition.name].append(
                pd.DataFrame(
                    {
                        "condition": condition.name,
                        "prompt": prompts,
                        "answer_token": answers[:, 0].cpu().numpy(),
                        "wrong_token": answers[:, 1].cpu().numpy(),
                        "predicted_token": predicted.cpu().numpy(),
                        "correct": (predicted == answers[:, 0]).cpu().numpy(),
                        "metric": batch.metric(final, batch.metric_tokens, batch.metric_weights).cpu().numpy(),
                        "answer_prob": log_probs[rows, answers[:, 0]].exp().cpu().numpy(),
                    }
                )
            )
            if readout_heads:
                head_parts[condition.name].append(
                    _head_rows(batch, condition.name, prompts, readout_layers, readout_roles, seen, weights)
                )
    in_order = lambda parts: [part for name in names for part in parts[name]]  # noqa: E731
    return _concat(in_order(prompt_parts)), _concat(in_order(head_parts))


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _readout_hooks(layer: int, heads: list[int], rows, end, seen: dict) -> list[Hook]:
    heads_t = torch.tensor(heads, dtype=torch.long, device=rows.device)

    def read_pattern(pattern, hook=None):
        seen[f"pattern.{layer}"] = pattern[rows[:, None], heads_t[None, :], end[:, None]]  # [batch, heads, keys]
        return pattern

    def read_z(z, hook=None):
        seen[f"z.{layer}"] = z[rows, end][:, heads_t]  # [batch, heads, d_head]
        return z

    # Readers go after the edits in the hook list, so they see the pattern the head actually used.
    return [(pattern_hook_name(layer), read_pattern), (f"blocks.{layer}.attn.hook_z", read_z)]


def _head_rows(batch, condition, prompts, layers, roles, seen, weights) -> pd.DataFrame:
    gamma, w_u = weights["gamma"], weights["W_U"]
    answers = batch.answer_tokens.to(w_u.device)
    if not batch.metric.linear:
        raise InterventionError(
            f"direct logit attribution needs a metric linear in the logits, not {batch.metric.name}"
        )
    # Each prompt's metric direction (sum of weight x unembedding column) through the final LayerNorm's
    # weight (see head_logit_attribution): for the logit difference W_U[:, answer] - W_U[:, wrong].
    tokens, token_weights = batch.metric_tokens.to(w_u.device), batch.metric_weights.to(w_u.device, w_u.dtype)
    direction = gamma[None, :] * torch.einsum("dbk,bk->bd", w_u[:, tokens], token_weights)  # [batch, d_model]
    answer_direction = gamma[None, :] * w_u[:, answers[:, 0]].T
    parts = []
    for layer, hs in layers.items():
        pattern = seen[f"pattern.{layer}"].double()
        z = seen[f"z.{layer}"]
        w_o = weights["W_O"][layer, hs]  # [heads, d_head, d_model]
        out = torch.einsum("bhe,hed->bhd", z, w_o)
        dla = head_logit_attribution(out, seen["scale"], direction)
        dla_answer = head_logit_attribution(out, seen["scale"], answer_direction)
        for i, head in enumerate(hs):
            columns: dict[str, Any] = {"condition": condition, "prompt": prompts, "layer": layer, "head": head}
            for role in roles:
                position = _role(batch, role).to(pattern.device)
                columns[f"attn_{role}"] = pattern[torch.arange(len(batch)), i, position].cpu().numpy()
            columns["dla"] = dla[:, i].cpu().numpy()
            columns["dla_answer"] = dla_answer[:, i].cpu().numpy()
            parts.append(pd.DataFrame(columns))
    return pd.concat(parts, ignore_index=True)


def head_logit_attribution(head_out: torch.Tensor, scale: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Direct logit attribution of head outputs at one position per prompt: [batch, heads].

    `head_out` [batch, heads, d_model] holds the heads' outputs (z @ W_O; the attention bias belongs to no
    head), `scale` [batch] the final LayerNorm's scale in the same run, and `direction` [batch, d_model]
    gamma * (W_U[:, correct] - W_U[:, wrong]), gamma the final LayerNorm's weight. The final LayerNorm is
    LN(x) = gamma * (x - mean(x)) / scale + beta; with the run's scale held it is linear in x, so a head's
    output o adds gamma * (o - mean(o)) / scale to the normalised residual and
    (o - mean(o)) / scale . direction to the logit difference. That is exactly how much the logit
    difference drops when o is taken out of the final residual stream with the scale held.
    """
    centred = head_out - head_out.mean(-1, keepdim=True)
    return torch.einsum("bhd,bd->bh", centred.double(), direction.double()) / scale.double()[:, None]


def run_conditions(
    model,
    dataset: TaskDataset,
    conditions: Sequence[Condition],
    *,
    batch_size: int = 50,
    progress: bool = True,
    engine: str = "auto",
) -> pd.DataFrame:
    """One row per condition and prompt: the prediction at END under that condition's attention edits.

    Columns: condition, prompt (index in the dataset), answer_token, wrong_token, predicted_token (argmax
    over the whole vocabulary), correct (predicted == answer), metric (the task's metric, e.g.
    logit(answer) - logit(wrong)), answer_prob (softmax probability of the answer). `engine` (see
    `choose_engine`) changes how the numbers are computed, not what they are.
    """
    return _evaluate(model, dataset, conditions, batch_size, (), (), progress, engine)[0]


def run_conditions_with_readouts(
    model,
    dataset: TaskDataset,
    conditions: Sequence[Condition],
    readout_heads: Sequence[Head],
    readout_roles: Sequence[str],
    *,
    batch_size: int = 50,
    progress: bool = True,
    engine: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`run_conditions` plus, from the same runs, one row per condition, prompt and readout head.

    Head columns: condition, prompt, layer, head, attn_{role} (attention from END to each readout role,
    after any edit), dla (direct logit attribution to logit(answer) - logit(wrong), see
    `head_logit_attribution`) and dla_answer (the same onto the answer's unembedding alone).
    """
    readout_heads = sorted({(int(layer), int(head)) for layer, head in readout_heads})
    return _evaluate(model, dataset, conditions, batch_size, readout_heads, tuple(readout_roles), progress, engine)


# --------------------------------------------------------------------------------------------------
# Accuracy, bootstrap intervals, fixed and introduced errors


def _correct_matrix(per_prompt: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    order = list(dict.fromkeys(per_prompt["condition"]))
    wide = per_prompt.pivot(index="prompt", columns="condition", values="correct")
    if wide.isna().any().any():
        raise InterventionError("every condition must cover the same prompts to be compared prompt by prompt")
    return order, wide[order].to_numpy(dtype=float).T  # [conditions, prompts]


def bootstrap_accuracy(correct: np.ndarray, n_boot: int, seed: int, chunk: int = 500) -> np.ndarray:
    """Accuracies of `n_boot` resamples of the prompts, [conditions, n_boot], the same resamples for all rows.

    Resampling the prompts once for every condition makes differences between conditions paired.
    Deterministic for a seed.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=float))
    n = correct.shape[1]
    rng = np.random.default_rng(seed)
    draws = []
    for done in range(0, n_boot, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_boot - done), n))
        draws.append(correct[:, index].mean(-1))
    return np.concatenate(draws, axis=1) if draws else np.empty((correct.shape[0], 0))


def prompt_changes(per_prompt: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """The per-prompt table with baseline_correct and change, prompt by prompt against `baseline`:
    "fixed" (wrong there, right here), "introduced" (right there, wrong here), "still_correct",
    "still_wrong"; None where the baseline did not run."""
    base = per_prompt.loc[per_prompt["condition"] == baseline, ["prompt", "correct"]]
    out = per_prompt.merge(base.rename(columns={"correct": "baseline_correct"}), on="prompt", how="left")
    labels = {
        (False, True): "fixed",
        (True, False): "introduced",
        (True, True): "still_correct",
        (False, False): "still_wrong",
    }
    out["change"] = [
        None if pd.isna(before) else labels[(bool(before), bool(now))]
        for before, now in zip(out["baseline_correct"], out["correct"], strict=True)
    ]
    return out


def accuracy_table(
    per_prompt: pd.DataFrame, n_boot: int = 10000, seed: int = 0, baseline: str = BASELINE, level: float = 0.95
) -> pd.DataFrame:
    """One row per condition: accuracy with a percentile-bootstrap interval, and the change from `baseline`.

    Columns: condition, n_prompts, accuracy, ci_low, ci_high, mean_metric (the task's metric), mean_answer_prob, fixed
    (wrong under the baseline, right here), introduced (right under the baseline, wrong here),
    delta_accuracy (= (fixed - introduced) / n_prompts), delta_ci_low, delta_ci_high (paired bootstrap),
    n_boot, boot_seed. Without a baseline condition the change columns are NaN.
    """
    order, correct = _correct_matrix(per_prompt)
    n = correct.shape[1]
    draws = bootstrap_accuracy(correct, n_boot, seed)
    tail = (1 - level) / 2 * 100
    has_base = baseline in order
    base = order.index(baseline) if has_base else None
    means = per_prompt.groupby("condition")[["metric", "answer_prob"]].mean()
    rows = []
    for i, name in enumerate(order):
        row = {
            "condition": name,
            "n_prompts": n,
            "accuracy": correct[i].mean(),
            "ci_low": np.percentile(draws[i], tail) if n_boot else np.nan,
            "ci_high": np.percentile(draws[i], 100 - tail) if n_boot else np.nan,
            "mean_metric": means.loc[name, "metric"],
            "mean_answer_prob": means.loc[name, "answer_prob"],
        }
        if has_base:
            before, now = correct[base].astype(bool), correct[i].astype(bool)
            delta = draws[i] - draws[base]
            row.update(
                fixed=int((~before & now).sum()),
                introduced=int((before & ~now).sum()),
                delta_accuracy=(now.sum() - before.sum()) / n,
                delta_ci_low=np.percentile(delta, tail) if n_boot else np.nan,
                delta_ci_high=np.percentile(delta, 100 - tail) if n_boot else np.nan,
            )
        else:
            row.update(
                fixed=np.nan, introduced=np.nan, delta_accuracy=np.nan, delta_ci_low=np.nan, delta_ci_high=np.nan
            )
        row.update(n_boot=n_boot, boot_seed=seed)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Random-head controls


def _stable_key(key: str) -> int:
    return zlib.crc32(key.encode())


def random_head_sets(
    n_layers: int,
    n_heads: int,
    heads: Sequence[Head],
    repeats: int,
    seed: int,
    exclude: Iterable[Head] = (),
    key: str = "",
) -> list[list[Head]]:
    """`repeats` random head sets matched to `heads`: as many heads, drawn uniformly without replacement
    from the layers min..max of `heads` (inclusive), never one of `heads` or of `exclude`.

    Repeat r draws from a generator seeded by (seed, crc32(key), r), so a repeat's heads depend only on the
    seed, the key (e.g. the condition's name) and r, not on which other controls run. Sorted.
    """
    heads = sorted({(int(layer), int(head)) for layer, head in heads})
    if not heads:
        raise InterventionError("random heads are matched to a head set, and this one is empty")
    low, high = heads[0][0], max(layer for layer, _ in heads)
    excluded = set(heads) | {(int(layer), int(head)) for layer, head in exclude}
    pool = [(layer, head) for layer in range(low, high + 1) for head in range(n_heads) if (layer, head) not in excluded]
    if len(pool) < len(heads):
        raise InterventionError(
            f"only {len(pool)} heads in layers {low}-{high} are not intervened on; {len(heads)} random heads are needed"
        )
    sets = []
    for repeat in range(repeats):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _stable_key(key), repeat]))
        pick = rng.choice(len(pool), size=len(heads), replace=False)
        sets.append(sorted(pool[i] for i in pick))
    return sets


def random_head_conditions(
    model, condition: Condition, repeats: int, seed: int, exclude: Iterable[Head] = ()
) -> list[Condition]:
    """The condition's edits on random heads (see `random_head_sets`), named "{condition}/random{repeat}"."""
    sets = random_head_sets(
        model.cfg.n_layers, model.cfg.n_heads, condition.heads, repeats, seed, exclude, key=condition.name
    )
    return [
        condition.remap(dict(zip(condition.heads, chosen, strict=True)), name=f"{condition.name}/random{repeat}")
        for repeat, chosen in enumerate(sets)
    ]


def control_rows(
    condition: Condition,
    controls: Sequence[Condition],
    seed: int,
    per_prompt: pd.DataFrame,
    baseline_correct: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per random-head control of `condition` (`random_head_conditions`), from the per-prompt table
    of a run that included them.

    Columns: condition, repeat, seed, heads, n_heads, layer_min, layer_max, accuracy, mean_metric,
    mean_answer_prob, and, given the baseline's per-prompt correctness, fixed and introduced.
    """
    rows = []
    for repeat, control in enumerate(controls):
        table = per_prompt[per_prompt["condition"] == control.name]
        correct = table.sort_values("prompt")["correct"].to_numpy(dtype=bool)
        chosen = control.heads
        row = {
            "condition": condition.name,
            "repeat": repeat,
            "seed": seed,
            "heads": heads_label(chosen),
            "n_heads": len(chosen),
            "layer_min": chosen[0][0],
            "layer_max": max(layer for layer, _ in chosen),
            "accuracy": correct.mean(),
            "mean_metric": table["metric"].mean(),
            "mean_answer_prob": table["answer_prob"].mean(),
            "fixed": np.nan,
            "introduced": np.nan,
        }
        if baseline_correct is not None:
            before = np.asarray(baseline_correct, dtype=bool)
            row.update(fixed=int((~before & correct).sum()), introduced=int((before & ~correct).sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def random_head_controls(
    model,
    dataset: TaskDataset,
    condition: Condition,
    repeats: int,
    seed: int,
    exclude: Iterable[Head] = (),
    baseline_correct: np.ndarray | None = None,
    *,
    batch_size: int = 50,
    progress: bool = True,
    engine: str = "auto",
) -> pd.DataFrame:
    """The condition's edits on random heads, all repeats in one run, one row per repeat (`control_rows`)."""
    controls = random_head_conditions(model, condition, repeats, seed, exclude)
    table = run_conditions(model, dataset, controls, batch_size=batch_size, progress=progress, engine=engine)
    return control_rows(condition, controls, seed, table, baseline_correct)


def controls_summary(
    controls: pd.DataFrame, intervened_accuracy: Mapping[str, float], level: float = 0.95
) -> pd.DataFrame:
    """Per condition: the intervened accuracy beside the random heads' mean, std and percentile interval.

    frac_random_at_least is the share of random repeats whose accuracy reaches the intervened one.
    """
    tail = (1 - level) / 2 * 100
    rows = []
    for name, group in controls.groupby("condition", sort=False):
        acc = group["accuracy"].to_numpy(dtype=float)
        target = intervened_accuracy.get(name, np.nan)
        rows.append(
            {
                "condition": name,
                "intervened_accuracy": target,
                "n_repeats": len(acc),
                "seed": int(group["seed"].iloc[0]),
                "random_mean": acc.mean(),
                "random_std": acc.std(ddof=1) if len(acc) > 1 else np.nan,
                "random_low": np.percentile(acc, tail),
                "random_high": np.percentile(acc, 100 - tail),
                "frac_random_at_least": float((acc >= target).mean()) if not math.isnan(target) else np.nan,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Mover readouts


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


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Spearman's rho and its two-sided p-value over the pairs where both are finite, and their count.

    NaN when fewer than 3 pairs remain or either side is constant. The p-value is scipy's (a t
    approximation): rough for the handful of movers a circuit has, and 0 when the ranks agree perfectly.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, int(len(x))
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue), int(len(x))


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


# --------------------------------------------------------------------------------------------------
# Which heads: from the config or from the discovered circuits


@dataclass
class HeadSet:
    name: str
    heads: list[Head]
    source: str  # "config", or "circuit:{task}:{role|stage}={name}"
    note: str = ""


def heads_from_circuit(circuit: Mapping[str, Any], role: str | None = None, stage: str | None = None) -> list[Head]:
    """Heads of a circuit JSON with a role (its `heads` entries) or selected at a stage; sorted."""
    if (role is None) == (stage is None):
        raise ValueError("give exactly one of role and stage")
    if role is not None:
        return sorted({(int(e["layer"]), int(e["head"])) for e in circuit.get("heads", []) if e.get("role") == role})
    for record in circuit.get("stages", []):
        if record.get("name") == stage:
            return sorted({(int(layer), int(head)) for layer, head in record.get("heads", [])})
    return []


def check_heads(heads: Iterable[Head], n_layers: int, n_heads: int, where: str) -> list[Head]:
    checked = []
    for entry in heads:
        if len(entry) != 2:
            raise InterventionError(f"{where}: {entry!r} is not a [layer, head] pair")
        layer, head = int(entry[0]), int(entry[1])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InterventionError(
                f"{where}: head {layer}.{head} is outside the model's {n_layers} layers x {n_heads} heads"
            )
        checked.append((layer, head))
    return sorted(set(checked))


def resolve_head_sets(
    spec: Mapping[str, Any],
    circuits: Mapping[str, Mapping[str, Any] | None],
    n_layers: int,
    n_heads: int,
    mover_stage: str = "movers",
    where: str = "intervention.heads",
) -> dict[str, HeadSet]:
    """Every head set (inhibition, negative_mover, content_gatherers, movers) from config or circuits.

    `spec[name]` is a list of [layer, head] pairs, or "auto" (also when missing): then the heads come from
    the circuit of the task that declares the set in its `intervention_heads` (`circuits[task]`, a circuit
    JSON; circuit_reuse.tasks). The movers' stage is the setting `mover_stage`. An empty auto set is kept,
    with a note saying where nothing was found, so the experiment can run what it can.
    """
    _, auto_sources = intervention_plan(registered_tasks())
    sets = {}
    for name in HEAD_SETS:
        value = spec.get(name, "auto")
        if value != "auto":
            sets[name] = HeadSet(name, check_heads(value, n_layers, n_heads, f"{where}.{name}"), "config")
            if not sets[name].heads:
                sets[name].note = "the config lists no heads"
            continue
        task, kind, key = auto_sources[name]
        if kind == "stage":
            key = mover_stage
        source = f"circuit:{task}:{kind}={key}"
        circuit = circuits.get(task)
        if circuit is None:
            sets[name] = HeadSet(name, [], source, f"no {task} circuit was given")
            continue
        found = heads_from_circuit(circuit, **{kind: key})
        heads = check_heads(found, n_layers, n_heads, f"{task} circuit, {kind} {key}")
        note = "" if heads else f"the {task} circuit has no heads with {kind} {key!r}"
        sets[name] = HeadSet(name, heads, source, note)
    return sets


def head_sets_table(sets: Mapping[str, HeadSet]) -> pd.DataFrame:
    """One row per head set, empty ones included: set, source, n_heads, heads, note."""
    return pd.DataFrame(
        [
            {"set": s.name, "source": s.source, "n_heads": len(s.heads), "heads": heads_label(s.heads), "note": s.note}
            for s in sets.values()
        ],
        columns=["set", "source", "n_heads", "heads", "note"],
    )


# --------------------------------------------------------------------------------------------------
# The whole experiment


@dataclass
class InterventionSettings:
    """The `intervention` config section, less the per-model head lists (see the config schema)."""

    conditions: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(PAPER_CONDITIONS))
    query_role: str = END
    target_roles: tuple[str, ...] = ("wrong_color_0", "wrong_color_1")
    target_weights: tuple[float, ...] | None = None
    answer_role: str = "answer_color"
    block_span: str = "question"
    mover_stage: str = "movers"
    repeats: int = 10
    control_seed: int = 0
    n_boot: int = 10000
    boot_seed: int = 0
    batch_size: int = 50
    n_prompts: int | None = None

    def __post_init__(self) -> None:
        if self.target_weights is not None:
            if len(self.target_weights) != len(self.target_roles):
                raise InterventionError(
                    f"intervention.target_weights: {len(self.target_weights)} weights for "
                    f"{len(self.target_roles)} target roles {list(self.target_roles)}"
                )
            if min(self.target_weights) < 0 or not math.isclose(sum(self.target_weights), 1.0, abs_tol=1e-6):
                raise InterventionError(
                    f"intervention.target_weights: {list(self.target_weights)} must be non-negative and sum to 1"
                )
        for name in self.conditions:
            if name in (BASELINE, BLOCK_CONDITION):
                raise InterventionError(f"intervention.conditions: the name {name!r} is reserved")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> InterventionSettings:
        weights = section.get("target_weights")
        return cls(
            conditions={k: tuple(v) for k, v in section.get("conditions", PAPER_CONDITIONS).items()},
            query_role=section.get("query_role", END),
            target_roles=tuple(section.get("target_roles", cls.target_roles)),
            target_weights=tuple(weights) if weights is not None else None,
            answer_role=section.get("answer_role", cls.answer_role),
            block_span=section.get("block_span", cls.block_span),
            mover_stage=section.get("mover_stage", cls.mover_stage),
            repeats=section.get("random_controls", {}).get("repeats", cls.repeats),
            control_seed=section.get("random_controls", {}).get("seed", cls.control_seed),
            n_boot=section.get("bootstrap", {}).get("n", cls.n_boot),
            boot_seed=section.get("bootstrap", {}).get("seed", cls.boot_seed),
            batch_size=section.get("batch_size", cls.batch_size),
            n_prompts=section.get("n_prompts"),
        )


def model_section(section: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The `intervention` config section for one model: `heads` becomes that model's head sets, each a list
    of [layer, head] pairs or "auto" (also for a model or set the config does not list)."""
    configured = section.get("heads", {}).get(model, {})
    heads = {name: configured.get(name, "auto") for name in HEAD_SETS}
    return {**{k: v for k, v in section.items() if k != "heads"}, "heads": heads}


@dataclass
class PlannedCondition:
    name: str
    kind: str  # "none", "override" or "block"
    sets: tuple[str, ...]
    condition: Condition | None  # None: skipped, see note
    note: str = ""


def plan_conditions(sets: Mapping[str, HeadSet], settings: InterventionSettings) -> list[PlannedCondition]:
    """The baseline, one override per configured condition, and the content gatherers' block.

    A condition whose head sets are all empty is skipped; one with some empty sets runs on the others.
    Both are said in the note.
    """
    plans = [PlannedCondition(BASELINE, "none", (), Condition(BASELINE))]
    for name, set_names in settings.conditions.items():
        if name in (BASELINE, BLOCK_CONDITION):
            raise InterventionError(f"intervention.conditions: the name {name!r} is reserved")
        unknown = [s for s in set_names if s not in sets]
        if unknown:
            raise InterventionError(f"intervention.conditions.{name}: unknown head sets {unknown}; known: {list(sets)}")
        empty = [s for s in set_names if not sets[s].heads]
        edits = tuple(
            Override(tuple(sets[s].heads), settings.target_roles, settings.target_weights, settings.query_role)
            for s in set_names
            if sets[s].heads
        )
        if not edits:
            plans.append(
                PlannedCondition(name, "override", set_names, None, f"skipped: no heads in {', '.join(empty)}")
            )
            continue
        note = f"ran without {', '.join(empty)} (no heads)" if empty else ""
        plans.append(PlannedCondition(name, "override", set_names, Condition(name, edits), note))
    gatherers = sets["content_gatherers"].heads
    if gatherers:
        block = Condition(BLOCK_CONDITION, (Block(tuple(gatherers), settings.block_span, settings.query_role),))
        plans.append(PlannedCondition(BLOCK_CONDITION, "block", ("content_gatherers",), block))
    else:
        plans.append(
            PlannedCondition(
                BLOCK_CONDITION, "block", ("content_gatherers",), None, "skipped: no content_gatherers heads"
            )
        )
    return plans


ACCURACY_COLUMNS = [
    "condition", "kind", "sets", "heads", "n_heads", "status", "note", "n_prompts", "accuracy", "ci_low",
    "ci_high", "mean_metric", "mean_answer_prob", "fixed", "introduced", "delta_accuracy", "delta_ci_low",
    "delta_ci_high", "n_boot", "boot_seed",
]  # fmt: skip
CONTROL_COLUMNS = [
    "condition", "repeat", "seed", "heads", "n_heads", "layer_min", "layer_max", "accuracy", "mean_metric",
    "mean_answer_prob", "fixed", "introduced",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "condition", "kind", "status", "intervened_accuracy", "n_repeats", "seed", "random_mean", "random_std",
    "random_low", "random_high", "frac_random_at_least",
]  # fmt: skip


def intervention_experiment(
    model,
    dataset: TaskDataset,
    sets: Mapping[str, HeadSet],
    settings: InterventionSettings,
    importance: Mapping[Head, float] | None = None,
    *,
    progress: bool = True,
    engine: str = "auto",
) -> dict[str, pd.DataFrame]:
    """Run every condition, the random-head controls and the mover readouts; return the tidy tables.

    Tables: head_sets, per_prompt, accuracy, controls, controls_summary, movers, movers_spearman. Every
    planned condition has a row in accuracy and (but the baseline) in controls_summary, with a status
    saying whether it ran and why not. `engine` (see `choose_engine`) does not change the tables.
    """
    if settings.n_prompts:
        dataset = dataset.subset(slice(0, settings.n_prompts))
    plans = plan_conditions(sets, settings)
    ran = [p for p in plans if p.condition is not None]
    # Random heads never include a head that any condition intervenes on.
    intervened = {h for p in ran for h in p.condition.heads}
    controls_of, why_not = {}, {}
    for plan in plans:
        if plan.kind == "none":
            continue
        if plan.condition is None:
            why_not[plan.name] = plan.note
        elif settings.repeats == 0:
            why_not[plan.name] = "skipped: random_controls.repeats is 0"
        else:
            try:
                controls_of[plan.name] = random_head_conditions(
                    model, plan.condition, settings.repeats, settings.control_seed, intervened
                )
            except InterventionError as error:
                why_not[plan.name] = f"skipped: {error}"
    # One run for the conditions and every control: the fast engine shares each batch's clean pass among
    # them all. The controls' readouts come along and are dropped.
    movers = sets["movers"].heads
    shown = [p.condition.name for p in ran]
    every_prompt, head_table = run_conditions_with_readouts(
        model,
        dataset,
        [p.condition for p in ran] + [c for controls in controls_of.values() for c in controls],
        movers,
        (settings.answer_role, *settings.target_roles),
        batch_size=settings.batch_size,
        progress=progress,
        engine=engine,
    )
    per_prompt = every_prompt[every_prompt["condition"].isin(shown)].reset_index(drop=True)
    if len(head_table):
        head_table = head_table[head_table["condition"].isin(shown)].reset_index(drop=True)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        per_prompt.insert(5, "predicted", [tokenizer.decode([int(t)]) for t in per_prompt["predicted_token"]])
    per_prompt = prompt_changes(per_prompt)

    stats = accuracy_table(per_prompt, settings.n_boot, settings.boot_seed).set_index("condition")
    accuracy_rows = []
    for plan in plans:
        heads = plan.condition.heads if plan.condition else []
        row = {"condition": plan.name, "kind": plan.kind, "sets": "+".join(plan.sets), "heads": heads_label(heads)}
        row.update(n_heads=len(heads), status="ran" if plan.condition else "skipped", note=plan.note)
        if plan.condition:
            row.update(stats.loc[plan.name].to_dict())
        accuracy_rows.append(row)
    accuracy = pd.DataFrame(accuracy_rows).reindex(columns=ACCURACY_COLUMNS)
    accuracy["n_boot"], accuracy["boot_seed"] = settings.n_boot, settings.boot_seed
    accuracy = accuracy.astype({"n_prompts": "Int64", "fixed": "Int64", "introduced": "Int64"})

    baseline_correct = per_prompt[per_prompt["condition"] == BASELINE].sort_values("prompt")["correct"].to_numpy()
    control_parts = [
        control_rows(p.condition, controls_of[p.name], settings.control_seed, every_prompt, baseline_correct)
        for p in ran
        if p.name in controls_of
    ]
    controls = pd.concat(control_parts, ignore_index=True) if control_parts else pd.DataFrame(columns=CONTROL_COLUMNS)
    intervened_accuracy = dict(zip(accuracy["condition"], accuracy["accuracy"], strict=True))
    summary = controls_summary(controls, intervened_accuracy).set_index("condition") if len(controls) else None
    summary_rows = []
    for plan in plans:
        if plan.kind == "none":
            continue
        row = {"condition": plan.name, "kind": plan.kind, "intervened_accuracy": intervened_accuracy[plan.name]}
        if plan.name in why_not:
            row.update(status=why_not[plan.name], n_repeats=0, seed=settings.control_seed)
        else:
            row.update(summary.loc[plan.name].to_dict(), status="ran")
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows).reindex(columns=SUMMARY_COLUMNS).astype({"n_repeats": int, "seed": int})

    edited = {p.name: p.condition.heads for p in ran}
    mover_table = mover_readouts(head_table, settings.answer_role, settings.target_roles, BASELINE, edited, importance)
    spearman_table = mover_spearman(mover_table)
    if not movers:
        spearman_table = pd.DataFrame(
            [
                {"condition": p.name, "metric": "", "n_heads": 0, "rho": np.nan, "p_value": np.nan,
                 "status": f"skipped: no mover heads ({sets['movers'].note or 'empty set'})"}
                for p in ran
                if p.kind != "none"
            ],
            columns=spearman_table.columns,
        )  # fmt: skip
    return {
        "head_sets": head_sets_table(sets),
        "per_prompt": per_prompt,
        "accuracy": accuracy,
        "controls": controls,
        "controls_summary": summary,
        "movers": mover_table,
        "movers_spearman": spearman_table,
    }
