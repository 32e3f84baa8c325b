"""Evaluation at END: how well a model does a task, on clean and corrupted prompts and under edits.

`evaluate` runs the model on every prompt of a TaskDataset and returns one row per prompt and condition;
`summarize` turns that into one row per condition. Everything is read at the END position, over the
whole vocabulary, from the dataset's metric tokens and weights (`circuit_reuse.metrics`): the tokens with
positive weight answer the clean prompt (IOI: the IO name; Greater-Than: every year after the start
year), those with negative weight the corrupted one (IOI flip: the S name; Colored Objects: the colour of
the object the corrupted question asks about).

- `metric`: the task's metric (named in `metric_name`) in BOTH conditions, the number path patching
  normalises between: for the logit difference logit(answer) - logit(wrong), for Greater-Than's
  probability difference P(later years) - P(earlier years). For a model that does the task it is larger on
  clean than on corrupted prompts (the logit difference turns negative).
- targets: the condition's own answers, the positive-weight tokens on clean prompts and the
  negative-weight ones on corrupted prompts; distractors: the others.
- `correct`: the argmax over the vocabulary is a target (accuracy).
- `prob_target`: the softmax probability of the targets together (the "answer probability").
- `logit_target`: the largest logit among the targets; `beats_distractor`: it exceeds every distractor's.
- `target_rank`: how many vocabulary tokens have a strictly higher logit than the best target (0 = top).

`answer` and `wrong` are the dataset's (answer, wrong) pair, for error analysis.

`run_conditions` runs the clean prompts under each of several conditions (attention edits,
`circuit_reuse.edits`) and `run_conditions_with_readouts` also reads chosen heads at END
(`circuit_reuse.readouts`) from the same passes. Two engines compute them (`choose_engine`): hooked
forward passes of the bridge, one per condition and batch (the reference, for any model and edit), and,
for a GPT-2 with every edit at END, `circuit_reuse.end_edits`: one clean pass per batch, then END alone
per condition from its lowest edited layer up; the tables are the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_reuse import end_edits
from circuit_reuse.circuits import Head
from circuit_reuse.datasets.core import DatasetError, TaskDataset
from circuit_reuse.datasets.vocab import encode
from circuit_reuse.edits import Condition, EditError, Hook, heads_by_layer, role_positions
from circuit_reuse.models import model_device
from circuit_reuse.readouts import head_rows, readout_hooks, readout_weights
from circuit_reuse.statistics import bootstrap_ci
from circuit_reuse.weights import ModelWeights

CONDITIONS = ("clean", "corrupted")
SUMMARY_COLUMNS = [
    "model",
    "task",
    "condition",
    "n",
    "metric_name",
    "accuracy",
    "metric_mean",
    "metric_ci_low",
    "metric_ci_high",
    "prob_target_mean",
    "beats_distractor_rate",
]


def check_tokenizer(model: Any, dataset: TaskDataset, n_check: int = 8) -> None:
    """Raise DatasetError unless the model's own tokenizer encodes the dataset's prompts to its tokens.

    Checks `n_check` prompts spread over the dataset (their `clean_text` against their `clean_tokens`),
    and that every token id fits the model's vocabulary and every prompt its context.
    """
    cfg = getattr(model, "cfg", None)
    d_vocab = getattr(cfg, "d_vocab", None)
    n_ctx = getattr(cfg, "n_ctx", None)
    if d_vocab is not None:
        top = int(
            max(
                dataset.clean_tokens.max(),
                dataset.corrupted_tokens.max(),
                dataset.answer_tokens.max(),
                dataset.metric_tokens.max(),
            )
        )
        if top >= d_vocab:
            raise DatasetError(f"{dataset.task}: token id {top} is outside the model's vocabulary of {d_vocab}")
    if n_ctx is not None and dataset.clean_tokens.shape[1] > n_ctx:
        raise DatasetError(
            f"{dataset.task}: prompts of {dataset.clean_tokens.shape[1]} tokens exceed the model's context of {n_ctx}"
        )
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not dataset.records:
        return
    rows = sorted({round(i * (len(dataset) - 1) / max(n_check - 1, 1)) for i in range(min(n_check, len(dataset)))})
    for i in rows:
        record = dataset.records[i]
        if "clean_text" not in record:
            return
        if encode(tokenizer, record["clean_text"]) != list(record["clean_tokens"]):
            raise DatasetError(
                f"{dataset.task}: the model's tokenizer encodes prompt {i} ({record['clean_text']!r}) differently "
                "from the dataset; the dataset was built with another tokenizer: rebuild it with this model's"
            )


@torch.no_grad()
def end_logits(model: Any, tokens: torch.Tensor, end: torch.Tensor, hooks: Sequence[Hook] = ()) -> torch.Tensor:
    """One batch's logits at each prompt's END under `hooks`: [batch, d_vocab], float64, on the model's device.

    Prompts are right-padded; the batch is trimmed to its longest prompt, and causal attention keeps END
    blind to the padding after it.
    """
    width = int(end.max()) + 1
    logits = model.run_with_hooks(tokens[:, :width].to(model_device(model)), fwd_hooks=list(hooks))
    rows = torch.arange(tokens.shape[0], device=logits.device)
    return logits[rows, end.to(logits.device)].double()


def task_metric(logits_at_end: torch.Tensor, batch: TaskDataset) -> torch.Tensor:
    """The dataset's own metric of each prompt from its logits at END."""
    device = logits_at_end.device
    return batch.metric(logits_at_end, batch.metric_tokens.to(device), batch.metric_weights.to(device))


def end_columns(logits: torch.Tensor, batch: TaskDataset, prompts: str, tokenizer: Any = None) -> dict[str, Any]:
    """The per-prompt columns of the module doc, from one batch's logits at END ([batch, d_vocab]).

    `prompts` says which prompts ran: "clean" (the positive-weight metric tokens are the targets) or
    "corrupted" (the negative-weight ones are).
    """
    if prompts not in CONDITIONS:
        raise ValueError(f"prompts must be one of {CONDITIONS}, not {prompts!r}")
    logits = logits.double()
    tokens = batch.metric_tokens.to(logits.device)
    weights = batch.metric_weights.to(logits.device)
    targets = weights > 0 if prompts == "clean" else weights < 0
    distractors = (weights != 0) & ~targets
    picked = logits.gather(1, tokens)
    logit_target = picked.masked_fill(~targets, -math.inf).max(dim=1).values
    logit_distractor = picked.masked_fill(~distractors, -math.inf).max(dim=1).values
    probs = torch.softmax(logits, dim=-1)
    top = logits.argmax(dim=-1)
    return {
        "answer": batch.answer_tokens[:, 0].numpy(),
        "wrong": batch.answer_tokens[:, 1].numpy(),
        "metric": task_metric(logits, batch).cpu().numpy(),
        "logit_target": logit_target.cpu().numpy(),
        "prob_target": (probs.gather(1, tokens) * targets).sum(dim=1).cpu().numpy(),
        "top_token": top.cpu().numpy(),
        "top_str": [tokenizer.decode([t]) for t in top.tolist()] if tokenizer is not None else None,
        "target_rank": (logits > logit_target[:, None]).sum(dim=-1).cpu().numpy(),
        "correct": ((tokens == top[:, None]) & targets).any(dim=1).cpu().numpy(),
        "beats_distractor": (logit_target > logit_distractor).cpu().numpy(),
    }


def _end_tables(
    model: Any,
    dataset: TaskDataset,
    runs: Sequence[tuple[str, str, Callable[[TaskDataset], list[Hook]]]],
    batch_size: int,
    progress: bool,
    after_batch: Callable[[str, TaskDataset, np.ndarray], None] | None = None,
    batch_logits: Callable[[TaskDataset], Iterator[torch.Tensor]] | None = None,
) -> pd.DataFrame:
    """The evaluator every table of this module comes from: for each run (condition name, which prompts,
    the hooks for a batch), every prompt in batches, one row per prompt: task, prompt, condition,
    metric_name and `end_columns`. `after_batch(condition, batch, prompt indices)` is called after each
    run's forward pass on a batch (readouts collect what the hooks recorded). `batch_logits(batch)`, when
    given, replaces the hooked passes: it yields every run's logits at END for the batch, in run order
    (the END-only engine, `circuit_reuse.end_edits`). Batches are the outer loop, so such an engine shares
    work between runs; the table is run-major all the same."""
    from tqdm.auto import tqdm

    tokenizer = getattr(model, "tokenizer", None)

    def hooked(batch: TaskDataset) -> Iterator[torch.Tensor]:
        for _, prompts, hooks in runs:
            tokens = batch.clean_tokens if prompts == "clean" else batch.corrupted_tokens
            yield end_logits(model, tokens, batch.end, hooks(batch))

    frames: list[list[pd.DataFrame]] = [[] for _ in runs]
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc=dataset.task, unit="batch", disable=not progress):
        batch = dataset.subset(slice(start, start + batch_size))
        index = np.arange(start, start + len(batch))
        for i, logits in enumerate((batch_logits or hooked)(batch)):
            condition, prompts, _ = runs[i]
            columns = {"task": dataset.task, "prompt": index, "condition": condition, "metric_name": batch.metric.name}
            frames[i].append(pd.DataFrame({**columns, **end_columns(logits, batch, prompts, tokenizer)}))
            if after_batch is not None:
                after_batch(condition, batch, index)
    ordered = [frame for run in frames for frame in run]
    return pd.concat(ordered, ignore_index=True) if ordered else pd.DataFrame()


def evaluate(
    model: Any, dataset: TaskDataset, batch_size: int = 32, progress: bool = True, check: bool = True
) -> pd.DataFrame:
    """Run `model` on every clean and corrupted prompt; one row per prompt and condition (see module doc).

    Columns: task, prompt (index in the dataset), condition, metric_name, answer, wrong (token ids),
    metric, logit_target, prob_target, top_token, top_str, target_rank, correct, beats_distractor, text (the
    prompt of this condition), and the record's other scalar fields (e.g. IOI template and order, Colored
    Objects answer_index) for error analysis.
    """
    if check:
        check_tokenizer(model, dataset)
    table = _end_tables(model, dataset, [(c, c, lambda batch: []) for c in CONDITIONS], batch_size, progress)
    if dataset.records:
        table["text"] = [r.get(f"{c}_text") for c in CONDITIONS for r in dataset.records]
        for key, values in _scalar_fields(dataset.records, set(table.columns)).items():
            table[key] = values * len(CONDITIONS)
    else:
        table["text"] = None
    return table


def _scalar_fields(records: list[dict[str, Any]], taken: set[str]) -> dict[str, list[Any]]:
    keys = [
        k
        for k, v in records[0].items()
        if k not in taken and not k.endswith("_text") and isinstance(v, str | int | float | bool)
    ]
    return {k: [r.get(k) for r in records] for k in keys}


def summarize(
    per_prompt: pd.DataFrame,
    model: str | None = None,
    n_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (task, condition) of `evaluate`'s table: the columns of SUMMARY_COLUMNS.

    accuracy = mean `correct`; metric_mean (the task's metric, named by metric_name) with a percentile
    bootstrap interval (`level`,
    `n_resamples` resamples of the prompts, seeded); prob_target_mean = mean probability of the
    condition's own answer; beats_distractor_rate = mean `beats_distractor`.
    """
    rows = []
    for (task, condition), group in per_prompt.groupby(["task", "condition"], sort=False):
        low, high = bootstrap_ci(group["metric"].to_numpy(), n_resamples, level, seed)
        rows.append(
            {
                "model": model,
                "task": task,
                "condition": condition,
                "n": len(group),
                "metric_name": group["metric_name"].iloc[0],
                "accuracy": float(group["correct"].mean()),
                "metric_mean": float(group["metric"].mean()),
                "metric_ci_low": low,
                "metric_ci_high": high,
                "prob_target_mean": float(group["prob_target"].mean()),
                "beats_distractor_rate": float(group["beats_distractor"].mean()),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------------------------------
# Prompts under attention edits (circuit_reuse.edits), with optional per-head readouts


ENGINES = ("auto", "fast", "hooks")


def choose_engine(model, dataset: TaskDataset, conditions: Sequence[Condition], engine: str = "auto") -> str:
    """How `run_conditions` computes: "fast" (`circuit_reuse.end_edits`) or "hooks" (the reference).

    "auto" takes the fast engine where it applies, a model whose family it implements (`end_edits.supports`)
    with every edit at END; "fast" insists on it and says why it does not apply.
    Both give the same tables (tests/test_end_edits.py).
    """
    if engine not in ENGINES:
        raise EditError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "hooks":
        return engine
    why_not = None
    if not end_edits.supports(model):
        why_not = "the fast engine does not implement this model's family or config (circuit_reuse.families)"
    else:
        for condition in conditions:
            for edit in condition.edits:
                if not torch.equal(role_positions(dataset, edit.query_role), dataset.end):
                    why_not = f"condition {condition.name!r} edits attention at {edit.query_role}, not only at END"
    if why_not and engine == "fast":
        raise EditError(f"the fast engine does not apply: {why_not}")
    return "hooks" if why_not else "fast"


def _end_only_logits(model, conditions: Sequence[Condition], readout_layers, seen: dict):
    """`_end_tables`' batch_logits for the END-only engine: one clean pass per batch, then END alone per
    condition; before each condition's logits are yielded, `seen` holds its readouts as `readout_hooks`
    would have recorded them."""
    weights = ModelWeights(model)

    def batch_logits(batch: TaskDataset) -> Iterator[torch.Tensor]:
        device = model_device(model)
        tokens = batch.clean_tokens[:, : int(batch.end.max()) + 1].to(device)
        edit_sets = [condition.end_edits(batch) for condition in conditions]
        run = end_edits.run_end_edits(weights, tokens, batch.end.to(device), edit_sets, readout_layers)
        for i in range(len(conditions)):
            seen.clear()
            if readout_layers:
                seen["scale"] = end_edits.final_scale(weights, run.final[i])
                for layer in readout_layers:
                    seen[f"pattern.{layer}"], seen[f"z.{layer}"] = run.patterns[layer][i], run.z[layer][i]
            yield end_edits.final_logits(weights, run.final[i]).double()

    return batch_logits


@torch.no_grad()
def _run_conditions(
    model,
    dataset: TaskDataset,
    conditions: Sequence[Condition],
    batch_size: int,
    readout_heads: Sequence[Head],
    readout_roles: Sequence[str],
    progress: bool,
    engine: str = "auto",
    read: Collection[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise EditError(f"condition names must be unique: {names}")
    readout_layers = heads_by_layer(readout_heads)
    weights = readout_weights(model) if readout_heads else None
    device = model_device(model)
    seen: dict[str, torch.Tensor] = {}
    head_parts: dict[str, list[pd.DataFrame]] = {name: [] for name in names}

    def hooks_for(condition: Condition) -> Callable[[TaskDataset], list[Hook]]:
        def hooks(batch: TaskDataset) -> list[Hook]:
            edits = condition.hooks(batch)
            if not readout_heads:
                return edits
            seen.clear()
            rows = torch.arange(len(batch), device=device)
            # Readers go after the edits, so they see the pattern the head actually used.
            return edits + readout_hooks(readout_layers, rows, batch.end.to(device), seen)

        return hooks

    def collect(condition: str, batch: TaskDataset, prompts: np.ndarray) -> None:
        if read is None or condition in read:
            head_parts[condition].append(
                head_rows(batch, condition, prompts, readout_layers, readout_roles, seen, weights)
            )

    fast = choose_engine(model, dataset, conditions, engine) == "fast"
    batch_logits = _end_only_logits(model, conditions, readout_layers, seen) if fast else None
    runs = [(c.name, "clean", hooks_for(c)) for c in conditions]
    prompt_table = _end_tables(
        model, dataset, runs, batch_size, progress, collect if readout_heads else None, batch_logits
    )
    ordered = [part for name in names for part in head_parts[name]]
    head_table = pd.concat(ordered, ignore_index=True) if ordered else pd.DataFrame()
    return prompt_table, head_table


def run_conditions(
    model,
    dataset: TaskDataset,
    conditions: Sequence[Condition],
    *,
    batch_size: int = 50,
    progress: bool = True,
    engine: str = "auto",
) -> pd.DataFrame:
    """One row per condition and prompt: the clean prompt at END under that condition's edits.

    Columns: task, prompt (index in the dataset), condition (its name), metric_name, answer, wrong, metric,
    logit_target, prob_target, top_token, top_str, target_rank, correct, beats_distractor: `evaluate`'s,
    from the same code.
    """
    return _run_conditions(model, dataset, conditions, batch_size, (), (), progress, engine)[0]


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
    read: Collection[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`run_conditions` plus, from the same runs, one row per condition (those named in `read`, every one
    when None), prompt and readout head. `engine`: see `choose_engine`.

    Head columns: condition, prompt, layer, head, attn_{role} (attention from END to each readout role,
    after any edit), dla (direct logit attribution to logit(answer) - logit(wrong), see
    `head_logit_attribution`) and dla_answer (the same onto the answer's unembedding alone).
    """
    readout_heads = sorted({(int(layer), int(head)) for layer, head in readout_heads})
    return _run_conditions(
        model, dataset, conditions, batch_size, readout_heads, tuple(readout_roles), progress, engine, read
    )
