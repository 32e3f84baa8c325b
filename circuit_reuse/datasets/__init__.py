"""Task datasets: the shared `TaskDataset` layout and one generator module per task."""

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

__all__ = [
    "END",
    "DatasetError",
    "TaskDataset",
    "from_records",
    "load_dataset",
    "meta_path",
    "pad_tokens",
    "save_dataset",
]
