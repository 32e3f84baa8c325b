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
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_reuse import end_edits
from circuit_reuse.circuits import Head
from circuit_reuse.datasets.core import DatasetError, TaskDataset
from circuit_reuse.datasets.vocab import encode
from circuit_reuse.edits import Condition, EditError, heads_by_layer, role_positions
from circuit_reuse.patching import GPT2Weights
from circuit_reuse.readouts import head_rows, readout_hooks, readout_weights
from circuit_reuse.statistics import bootstrap_ci

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


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


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
def end_logits(
    model: Any, tokens: torch.Tensor, end: torch.Tensor, batch_size: int = 32, desc: str = "", progress=True
):
    """Logits at each prompt's END position, [n, d_vocab] float32 on the CPU, in batches with a progress bar."""
    from tqdm.auto import tqdm

    device = model_device(model)
    out = []
    starts = range(0, tokens.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        batch = tokens[start : start + batch_size]
        # Right padding: trim to this batch's longest prompt; causal attention keeps END blind to padding.
        width = int(end[start : start + batch_size].max()) + 1
        logits = model(batch[:, :width].to(device))
        rows = torch.arange(batch.shape[0], device=logits.device)
        out.append(logits[rows, end[start : start + batch_size].to(logits.device)].float().cpu())
    return torch.cat(out)


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
    metric = dataset.metric
    tokens, weights = dataset.metric_tokens, dataset.metric_weights
    tokenizer = getattr(model, "tokenizer", None)
    rows = torch.arange(len(dataset))
    frames = []
    for condition, prompts in (("clean", dataset.clean_tokens), ("corrupted", dataset.corrupted_tokens)):
        logits = end_logits(model, prompts, dataset.end, batch_size, f"{dataset.task} {condition}", progress)
        probs = torch.softmax(logits, dim=-1)
        targets = weights > 0 if condition == "clean" else weights < 0
        distractors = (weights != 0) & ~targets
        picked = logits.gather(1, tokens)
        logit_target = picked.masked_fill(~targets, -math.inf).max(dim=1).values
        logit_distractor = picked.masked_fill(~distractors, -math.inf).max(dim=1).values
        top = logits.argmax(dim=-1)
        frame = pd.DataFrame(
            {
                "task": dataset.task,
                "prompt": rows.numpy(),
                "condition": condition,
                "metric_name": metric.name,
                "answer": dataset.answer_tokens[:, 0].numpy(),
                "wrong": dataset.answer_tokens[:, 1].numpy(),
                "metric": metric(logits, tokens, weights).numpy(),
                "logit_target": logit_target.numpy(),
                "prob_target": (probs.gather(1, tokens) * targets).sum(dim=1).numpy(),
                "top_token": top.numpy(),
                "top_str": [tokenizer.decode([t]) for t in top.tolist()] if tokenizer is not None else None,
                "target_rank": (logits > logit_target[:, None]).sum(dim=-1).numpy(),
                "correct": ((tokens == top[:, None]) & targets).any(dim=1).numpy(),
                "beats_distractor": (logit_target > logit_distractor).numpy(),
            }
        )
        frame["text"] = [r.get(f"{condition}_text") for r in dataset.records] if dataset.records else None
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if dataset.records:
        for key, values in _scalar_fields(dataset.records, set(table.columns)).items():
            table[key] = values * len(CONDITIONS)
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


def _batches(dataset: TaskDataset, batch_size: int) -> Iterator[tuple[int, TaskDataset]]:
    for start in range(0, len(dataset), batch_size):
        yield start, dataset.subset(slice(start, start + batch_size))


ENGINES = ("auto", "fast", "hooks")


def choose_engine(model, dataset: TaskDataset, conditions: Sequence[Condition], engine: str = "auto") -> str:
    """How `run_conditions` computes: "fast" (`circuit_reuse.end_edits`) or "hooks" (the reference).

    "auto" takes the fast engine where it applies, a GPT-2 model with every edit at END; "fast" insists on
    it and says why it does not apply. Both give the same tables (tests/test_end_edits.py).
    """
    if engine not in ENGINES:
        raise EditError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "hooks":
        return engine
    why_not = None
    if not end_edits.supports(model):
        why_not = "the model is not a GPT-2 the fast engine implements"
    else:
        for condition in conditions:
            for edit in condition.edits:
                if not torch.equal(role_positions(dataset, edit.query_role), dataset.end):
                    why_not = f"condition {condition.name!r} edits attention at {edit.query_role}, not only at END"
    if why_not and engine == "fast":
        raise EditError(f"the fast engine does not apply: {why_not}")
    return "hooks" if why_not else "fast"


def _hooked_runs(model, batch: TaskDataset, conditions, readout_layers) -> Iterator[tuple]:
    """Per condition, one hooked forward pass: logits at END [batch, d_vocab] and the readouts seen."""
    device = model_device(model)
    end = batch.end.to(device)
    rows = torch.arange(len(batch), device=device)
    width = int(batch.end.max()) + 1  # right padding after the last END is never read
    tokens = batch.clean_tokens[:, :width].to(device)
    for condition in conditions:
        hooks = condition.hooks(batch)
        seen: dict[str, torch.Tensor] = {}
        if readout_layers:
            hooks += readout_hooks(readout_layers, rows, end, seen)
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        yield logits[rows, end], seen


def _fast_runs(
    weights: GPT2Weights, batch: TaskDataset, conditions, readout_layers
) -> Iterator[tuple[torch.Tensor, dict]]:
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
def _evaluate_conditions(
    model,
    dataset: TaskDataset,
    conditions: Sequence[Condition],
    batch_size: int,
    readout_heads: Sequence[Head],
    readout_roles: Sequence[str],
    progress: bool,
    engine: str,
    read: Collection[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tqdm.auto import tqdm

    device = model_device(model)
    readout_layers = heads_by_layer(readout_heads)
    weights = readout_weights(model) if readout_heads else None
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise EditError(f"condition names must be unique: {names}")
    if choose_engine(model, dataset, conditions, engine) == "fast":
        gpt2 = GPT2Weights(model)
        runs = lambda batch: _fast_runs(gpt2, batch, conditions, readout_layers)  # noqa: E731
    else:
        runs = lambda batch: _hooked_runs(model, batch, conditions, readout_layers)  # noqa: E731
    # Batches outer, conditions inner (the fast engine shares a batch's clean pass), tables condition-major.
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
            if readout_heads and (read is None or condition.name in read):
                head_parts[condition.name].append(
                    head_rows(batch, condition.name, prompts, readout_layers, readout_roles, seen, weights)
                )
    in_order = lambda parts: [part for name in names for part in parts[name]]  # noqa: E731
    return _concat(in_order(prompt_parts)), _concat(in_order(head_parts))


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


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
    `choose_engine`) says how the numbers are computed, not what they are.
    """
    return _evaluate_conditions(model, dataset, conditions, batch_size, (), (), progress, engine)[0]


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
    when None), prompt and readout head.

    Head columns: condition, prompt, layer, head, attn_{role} (attention from END to each readout role,
    after any edit), dla (direct logit attribution to logit(answer) - logit(wrong), see
    `head_logit_attribution`) and dla_answer (the same onto the answer's unembedding alone).
    """
    readout_heads = sorted({(int(layer), int(head)) for layer, head in readout_heads})
    return _evaluate_conditions(
        model, dataset, conditions, batch_size, readout_heads, tuple(readout_roles), progress, engine, read
    )
