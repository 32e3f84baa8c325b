"""Task datasets: the shared `TaskDataset` layout and one module per task, each registering itself in
`circuit_reuse.tasks` (generator, metric, discovery stages, labelling and intervention roles).

From a notebook:

    from circuit_reuse.datasets import make_dataset
    ioi = make_dataset("ioi", 100, seed=0, tokenizer="results/tokenizer")
    ioi.clean_tokens, ioi.positions["S2"], ioi.records[0]["clean_text"]
"""

from __future__ import annotations

from typing import Any

# Importing a task module registers it; the registry keeps this order (the paper's task, then its controls).
# isort: off
from circuit_reuse.datasets import ioi, colored_objects, greater_than, world_capitals  # noqa: F401

# isort: on
from circuit_reuse.datasets.core import (
    END,
    DatasetError,
    TaskDataset,
    from_records,
    load_dataset,
    meta_path,
    pad_tokens,
    save_dataset,
)
from circuit_reuse.datasets.vocab import as_tokenizer, tokenizer_info


def generate_records(
    task: str, n: int, seed: int, tokenizer: Any, **options: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate a task's prompts as (records, meta), ready for `save_dataset`.

    `tokenizer` is a Hugging Face tokenizer, a directory holding one, or a model carrying one. `options`
    are the task's config keys (see workflow/schemas/config.schema.yaml); None means the built-in value.
    meta holds the task, n, seed, the options actually used, the tokenizer's vocabulary fingerprint and
    pad token id, and the package versions.
    """
    from circuit_reuse.io import versions
    from circuit_reuse.tasks import TaskError, get_task

    try:
        spec = get_task(task)
    except TaskError as error:
        raise DatasetError(str(error)) from None
    tokenizer = as_tokenizer(tokenizer)
    options = {key: value for key, value in options.items() if value is not None}
    records, meta = spec.generate(n, seed, tokenizer, **options)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    meta = {
        **meta,
        "metric": spec.metric.name,
        "tokenizer": tokenizer_info(tokenizer),
        "pad_token_id": pad,
        "versions": versions(),
    }
    return records, meta


def make_dataset(task: str, n: int, seed: int, tokenizer: Any, **options: Any) -> TaskDataset:
    """Generate `n` prompts of a registered task (`circuit_reuse.tasks`) for `seed` as a TaskDataset.

    The same arguments give the same prompts; `dataset.records` and `dataset.meta` are what
    `save_dataset(path, dataset.records, dataset.meta)` writes.
    """
    records, meta = generate_records(task, n, seed, tokenizer, **options)
    return from_records(task, records, meta, meta["pad_token_id"])


__all__ = [
    "END",
    "DatasetError",
    "TaskDataset",
    "from_records",
    "generate_records",
    "load_dataset",
    "make_dataset",
    "meta_path",
    "pad_tokens",
    "save_dataset",
]
