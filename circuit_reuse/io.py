"""Reading and writing the workflow's files: JSON, JSONL and Parquet, each carrying its provenance.

Every file a stage writes says which config and which package versions produced it, and none of them
embeds a date, so that rerunning a stage on the same inputs gives byte-identical files.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

_TRACKED_PACKAGES = ("circuit-reuse", "torch", "transformers", "transformer-lens", "pandas", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages whose behaviour can change a result."""
    found = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def provenance(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The block stored beside every output: the config section that produced it and the versions."""
    return {"config": dict(config) if config is not None else None, "versions": versions()}


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def write_parquet(path: str | Path, table: pd.DataFrame, config: Mapping[str, Any] | None = None) -> Path:
    """Write a table as Parquet with its provenance in the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"circuit_reuse"] = json.dumps(provenance(config), sort_keys=True, default=_json_default).encode()
    pq.write_table(arrow.replace_schema_metadata(meta), path)
    return path


def read_parquet(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def read_parquet_provenance(path: str | Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"circuit_reuse", b"{}"))


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths turn up in configs and records; store them as plain JSON values.
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} as JSON")
