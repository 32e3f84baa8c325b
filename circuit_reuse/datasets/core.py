"""The task dataset every stage consumes: prompts, their corruptions, answers and role positions.

On disk a dataset is a JSONL file (one prompt a line) with a `.meta.json` beside it holding the
generator's config, seed, tokenizer fingerprint and package versions. In memory it is a `TaskDataset` of
right-padded token tensors, ready for the model:

- `clean_tokens`, `corrupted_tokens`: LongTensor [n, seq], right-padded with `pad_token_id`.
- `answer_tokens`: LongTensor [n, 2], (correct, wrong): the answer and the corrupted prompt's answer.
- `metric_tokens` LongTensor [n, k], `metric_weights` float [n, k]: what the task's metric sums over
  (`circuit_reuse.metrics`); by default (answer, wrong) with weights (+1, -1), the logit difference's.
  A record may give its own `metric_tokens` and `metric_weights` (Greater-Than's year sets).
- `metric`: the task's metric, named by the meta's "metric" (the logit difference when none is named).
- `positions[role]`: LongTensor [n], the token index of a role in each prompt. "END", the last real
  token where the answer is predicted, is always present.
- `spans[name]`: LongTensor [n, 2], half-open [start, end) token ranges (e.g. the question's tokens).
- `corruptions[name]`: LongTensor [n, seq] for every corruption the task defines; `corrupted_tokens`
  is the task's default one, the one path patching uses.
- `records`: the per-prompt records as read from disk (text, template, answer strings, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuit_reuse.io import read_json, read_jsonl, write_json, write_jsonl
from circuit_reuse.metrics import Metric, metric_by_name, pair_tokens

END = "END"


class DatasetError(ValueError):
    """A dataset is malformed, or does not fit the tokenizer or model it is used with."""


@dataclass
class TaskDataset:
    task: str
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    answer_tokens: torch.Tensor
    positions: dict[str, torch.Tensor]
    spans: dict[str, torch.Tensor] = field(default_factory=dict)
    corruptions: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    pad_token_id: int = 50256
    metric_tokens: torch.Tensor | None = None
    metric_weights: torch.Tensor | None = None

    def __post_init__(self):
        if self.metric_tokens is None:
            self.metric_tokens, self.metric_weights = pair_tokens(self.answer_tokens)

    @property
    def metric(self) -> Metric:
        return metric_by_name(self.meta.get("metric", "logit_diff"))

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    @property
    def end(self) -> torch.Tensor:
        return self.positions[END]

    def subset(self, index: slice | Sequence[int] | torch.Tensor) -> TaskDataset:
        """The same dataset restricted to some prompts (a slice, indices or a boolean mask)."""
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        elif isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            rows = index.nonzero().flatten().tolist()
        else:
            rows = [int(i) for i in index]
        take = torch.tensor(rows, dtype=torch.long)
        return TaskDataset(
            task=self.task,
            clean_tokens=self.clean_tokens[take],
            corrupted_tokens=self.corrupted_tokens[take],
            answer_tokens=self.answer_tokens[take],
            positions={k: v[take] for k, v in self.positions.items()},
            spans={k: v[take] for k, v in self.spans.items()},
            corruptions={k: v[take] for k, v in self.corruptions.items()},
            records=[self.records[i] for i in rows] if self.records else [],
            meta=self.meta,
            pad_token_id=self.pad_token_id,
            metric_tokens=self.metric_tokens[take],
            metric_weights=self.metric_weights[take],
        )


def pad_tokens(rows: Sequence[Sequence[int]], pad_token_id: int) -> torch.Tensor:
    """Right-pad token lists into one LongTensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def from_records(
    task: str, records: list[dict[str, Any]], meta: dict[str, Any] | None = None, pad_token_id: int = 50256
) -> TaskDataset:
    """Build a TaskDataset from per-prompt records in the on-disk layout.

    A record holds `clean_tokens`, `corrupted_tokens` (lists of ids), `answer` and `wrong` (ids),
    `positions` ({role: index}), optionally `spans` ({name: [start, end]}) and `corruptions`
    ({name: token list}), `metric_tokens` and `metric_weights` (equal-length lists); any other keys are
    kept as they are.
    """
    if not records:
        raise DatasetError(f"{task}: the dataset holds no prompts")
    for i, record in enumerate(records):
        missing = {"clean_tokens", "corrupted_tokens", "answer", "wrong", "positions"} - set(record)
        if missing:
            raise DatasetError(f"{task}: prompt {i} lacks {', '.join(sorted(missing))}")
        if END not in record["positions"]:
            raise DatasetError(f"{task}: prompt {i} has no {END} position")
        if record["positions"][END] != len(record["clean_tokens"]) - 1:
            raise DatasetError(f"{task}: prompt {i}: {END} must be the last clean token")
    roles = set(records[0]["positions"])
    span_names = set(records[0].get("spans", {}))
    corruption_names = set(records[0].get("corruptions", {}))
    return TaskDataset(
        task=task,
        clean_tokens=pad_tokens([r["clean_tokens"] for r in records], pad_token_id),
        corrupted_tokens=pad_tokens([r["corrupted_tokens"] for r in records], pad_token_id),
        answer_tokens=torch.tensor([[r["answer"], r["wrong"]] for r in records], dtype=torch.long),
        positions={k: torch.tensor([r["positions"][k] for r in records], dtype=torch.long) for k in sorted(roles)},
        spans={k: torch.tensor([r["spans"][k] for r in records], dtype=torch.long) for k in sorted(span_names)},
        corruptions={
            k: pad_tokens([r["corruptions"][k] for r in records], pad_token_id) for k in sorted(corruption_names)
        },
        records=records,
        meta=meta or {},
        pad_token_id=pad_token_id,
        **_metric_tensors(task, records),
    )


def _metric_tensors(task: str, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Records' own metric tokens and weights, padded with weight 0 to one width; {} when they have none."""
    if "metric_tokens" not in records[0]:
        return {}
    for i, record in enumerate(records):
        if len(record.get("metric_tokens", ())) != len(record.get("metric_weights", [None])):
            raise DatasetError(f"{task}: prompt {i} needs metric_tokens and metric_weights of the same length")
    width = max(len(r["metric_tokens"]) for r in records)
    tokens = torch.zeros(len(records), width, dtype=torch.long)
    weights = torch.zeros(len(records), width, dtype=torch.float32)
    for i, record in enumerate(records):
        k = len(record["metric_tokens"])
        tokens[i, :k] = torch.tensor(record["metric_tokens"], dtype=torch.long)
        weights[i, :k] = torch.tensor(record["metric_weights"], dtype=torch.float32)
    return {"metric_tokens": tokens, "metric_weights": weights}


def save_dataset(path: str | Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write records as JSONL and `meta` (config, seed, tokenizer fingerprint, versions) beside it."""
    path = Path(path)
    from_records(meta.get("task", path.stem), records)  # refuse to write what could not be read back
    write_jsonl(path, records)
    write_json(meta_path(path), meta)
    return path


def load_dataset(path: str | Path) -> TaskDataset:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist (run the make_dataset rule)")
    meta = read_json(meta_path(path)) if meta_path(path).is_file() else {}
    return from_records(meta.get("task", path.stem), read_jsonl(path), meta, meta.get("pad_token_id", 50256))


def meta_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".meta.json")
