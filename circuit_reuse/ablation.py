"""Head-output ablation's reference values: what every head outside a kept set is replaced by.

The hooks that replace them are `circuit_reuse.edits.ablation_hooks`; this module computes the replacements.

A head's output is its `hook_z` ([batch, pos, head, d_head], the per-head attention result before W_O).
For a set of heads kept, every other head's output at every position is replaced by one of:

- "mean": the mean of that head's output over a reference distribution, taken position by position *by
  role*. Each token of a prompt gets a key: the role name at a role position (e.g. "S2", "END"), otherwise
  the name of the nearest role before it and the offset from it ("IO+3"; "^+2" before the first role).
  The replacement at a token is the reference mean over every reference token with the same key, so prompts
  of different templates and lengths are compared by what they hold, not by absolute index.
- "resample": the output of one reference prompt drawn at random (seeded) among those with the same key
  sequence as the prompt, so positions correspond one to one.
- "zero": zero.

The reference distribution is one of the dataset's own corruptions (prompt i's corrupted version has the
same length and role positions as prompt i, hence the same keys): Wang et al.'s ABC prompts for IOI, the
default corruption for a task without such a distribution. Every key of a prompt therefore has a mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from circuit_reuse.datasets import TaskDataset
from circuit_reuse.edits import EditError
from circuit_reuse.hook_names import head_output
from circuit_reuse.models import model_device

ABLATIONS = ("mean", "resample", "zero")


class AblationError(EditError):
    """An ablation was asked for with inputs that do not define it (unknown kind, no reference distribution)."""


def position_keys(dataset: TaskDataset) -> list[list[str]]:
    """Each prompt's token keys (see the module doc), up to and including END; positions after END are padding."""
    roles = sorted(dataset.positions)
    keys = []
    for i in range(len(dataset)):
        at: dict[int, str] = {}
        for role in roles:  # where two roles share a token, the first name in sorted order labels it
            at.setdefault(int(dataset.positions[role][i]), role)
        row, previous, offset = [], "^", 0
        for pos in range(int(dataset.end[i]) + 1):
            if pos in at:
                previous, offset = at[pos], 0
                row.append(previous)
            else:
                offset += 1
                row.append(f"{previous}+{offset}")
        keys.append(row)
    return keys


@dataclass
class ReferenceOutputs:
    """What one ablation kind replaces head outputs with, for one dataset, served batch by batch."""

    kind: str
    reference: torch.Tensor  # [n, seq] reference prompts, aligned with the dataset's prompts
    key_ids: torch.Tensor  # [n, seq] each token's key as an index into `means` (0 after END)
    means: torch.Tensor | None = None  # [n_keys, n_layers, n_heads, d_head], for "mean"
    donors: torch.Tensor | None = None  # [n] the reference prompt each prompt resamples from, for "resample"


@torch.no_grad()
def head_outputs(model, tokens: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Every head's output at every position up to the batch's last END: [batch, pos, n_layers, n_heads, d_head]."""
    width = int(end.max()) + 1
    names = [head_output(layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens[:, :width].to(model_device(model)), names_filter=lambda n: n in names)
    return torch.stack([cache[name] for name in names], dim=2)


def reference_outputs(
    model, dataset: TaskDataset, kind: str, corruption: str | None, batch_size: int = 32, seed: int = 0
) -> ReferenceOutputs:
    """Prepare `kind` ablation of `dataset`, its reference distribution being the corruption named `corruption`.

    "mean" runs the model once over every reference prompt and keeps per-key means; "resample" draws each
    prompt's donor among the prompts with its key sequence (seeded); "zero" needs no reference.
    """
    if kind not in ABLATIONS:
        raise AblationError(f"unknown ablation {kind!r}; known: {', '.join(ABLATIONS)}")
    keys = position_keys(dataset)
    vocabulary = {key: index for index, key in enumerate(dict.fromkeys(k for row in keys for k in row))}
    key_ids = torch.zeros(dataset.clean_tokens.shape, dtype=torch.long)
    for i, row in enumerate(keys):
        key_ids[i, : len(row)] = torch.tensor([vocabulary[k] for k in row])
    if kind == "zero":
        return ReferenceOutputs(kind, dataset.clean_tokens, key_ids)
    reference = _reference_tokens(dataset, corruption)
    if kind == "resample":
        return ReferenceOutputs(kind, reference, key_ids, donors=_draw_donors(keys, seed))
    cfg = model.cfg
    sums = torch.zeros(len(vocabulary), cfg.n_layers * cfg.n_heads * cfg.d_head, dtype=torch.float64)
    counts = torch.zeros(len(vocabulary), dtype=torch.float64)
    for start in range(0, len(dataset), batch_size):
        end = dataset.end[start : start + batch_size]
        outputs = head_outputs(model, reference[start : start + batch_size], end).double().cpu()
        real = torch.arange(outputs.shape[1])[None, :] <= end[:, None]  # [batch, pos]: not padding
        ids = key_ids[start : start + batch_size, : outputs.shape[1]][real]
        sums.index_add_(0, ids, outputs[real].flatten(1))
        counts.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
    means = (sums / counts[:, None]).float().view(len(vocabulary), cfg.n_layers, cfg.n_heads, cfg.d_head)
    return ReferenceOutputs(kind, reference, key_ids, means=means)


def _reference_tokens(dataset: TaskDataset, corruption: str | None) -> torch.Tensor:
    if corruption is None:
        raise AblationError(f"{dataset.task}: mean and resample ablation need a reference distribution; none is set")
    if corruption not in dataset.corruptions:
        known = ", ".join(sorted(dataset.corruptions)) or "none"
        raise AblationError(
            f"{dataset.task}: no corruption {corruption!r} to serve as the reference distribution "
            f"(the dataset has: {known})"
        )
    reference = dataset.corruptions[corruption]
    if reference.shape != dataset.clean_tokens.shape:
        raise AblationError(
            f"{dataset.task}: corruption {corruption!r} is not aligned with the clean prompts "
            f"({tuple(reference.shape)} vs {tuple(dataset.clean_tokens.shape)})"
        )
    return reference


def _draw_donors(keys: Sequence[Sequence[str]], seed: int) -> torch.Tensor:
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, prompt_keys in enumerate(keys):
        groups.setdefault(tuple(prompt_keys), []).append(i)
    rng = np.random.default_rng(seed)
    donors = np.empty(len(keys), dtype=np.int64)
    for members in groups.values():  # first-appearance order, so the draw depends on the seed alone
        donors[members] = rng.choice(members, size=len(members), replace=True)
    return torch.from_numpy(donors)


def replacement_outputs(model, prepared: ReferenceOutputs, rows: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Replacement head outputs for the prompts `rows`: [batch, pos, n_layers, n_heads, d_head], on the model."""
    cfg = model.cfg
    width = int(end.max()) + 1
    if prepared.kind == "zero":
        return torch.zeros(len(rows), width, cfg.n_layers, cfg.n_heads, cfg.d_head, device=model_device(model))
    if prepared.kind == "resample":
        return head_outputs(model, prepared.reference[prepared.donors[rows]], end)
    return prepared.means[prepared.key_ids[rows, :width]].to(model_device(model))
