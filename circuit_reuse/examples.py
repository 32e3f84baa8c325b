"""The notebooks' example tables (`notebooks/example_data/`): which files of a run they are, copying them
from a fresh run, and checking that the committed ones still agree with one.

A notebook opened on its own reads these small tables, and the README shows the figures drawn from the
same run, so both must come from the current code: `scripts/refresh_examples.py` regenerates them with one
command, and `tests/test_workflow_end_to_end.py` fails when the committed tables drift from a fresh smoke
run beyond a numeric tolerance (a changed head selection, a moved score) instead of going stale unseen.
"""

from __future__ import annotations

import fnmatch
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_reuse.io import read_json, read_parquet

# Paths under a run's results/ that the notebooks' default parameters read.
EXAMPLE_PATTERNS = (
    "tables/baselines.parquet",
    "patching/*/*/*.parquet",
    "circuits/*/*.json",
    "overlap/*/summary.parquet",
    "overlap/*/heads.parquet",
    "overlap/*/sensitivity.parquet",
    *(
        f"intervention/*/{name}.parquet"
        for name in ("accuracy", "controls", "controls_summary", "movers", "movers_spearman")
    ),
    *(f"faithfulness/*/*.{name}.parquet" for name in ("summary", "curve", "prompts")),
    *(f"mechanisms/*/{name}.parquet" for name in ("attention", "copy_scores", "ov")),
    *(f"attribution/*/{name}.parquet" for name in ("scores", "summary", "times")),
)
# Example files that hold wall times measured by their job: copied like the others, but no two runs agree
# on them, so the drift check asks only that both sides have them.
MEASURED_EXAMPLES = ("attribution/*/times.parquet",)
# Scores are float32 sums; two exact implementations differ by up to 4e-5 (README, "How fast").
TOLERANCE = 1e-4


def example_files(results: str | Path) -> list[str]:
    """The example files a run's results/ directory holds, as paths relative to it."""
    results = Path(results)
    return sorted({p.relative_to(results).as_posix() for pattern in EXAMPLE_PATTERNS for p in results.glob(pattern)})


def copy_examples(results: str | Path, example_data: str | Path) -> list[str]:
    """Replace the example files of `example_data` with those of a run's `results`; return them. Files no
    pattern names (an organisms run's training curve) stay."""
    results, example_data = Path(results), Path(example_data)
    for name in example_files(example_data):
        (example_data / name).unlink()
    files = example_files(results)
    for name in files:
        (example_data / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results / name, example_data / name)
    return files


def readme_figures(figures: str | Path, model: str, task: str) -> list[str]:
    """The PNGs of a run's figures/ that the README shows: every whole-run figure, and one model's head
    grid (on `task`), overlap, movers, faithfulness, mechanisms and attribution comparison; as paths relative
    to `figures`. The training curves are among the whole-run figures when the config trains organisms."""
    names = ["baselines", "threshold_sensitivity", "intervention_accuracy", "paper_comparison", "overlap_matrix"]
    names += ["training_curves"]
    names += [f"head_grids/{model}.{task}", f"overlap/{model}", f"movers/{model}", f"faithfulness/{model}"]
    names += [f"mechanisms/{model}.attention", f"mechanisms/{model}.ov", f"attribution/{model}"]
    return [f"{name}.png" for name in names if (Path(figures) / f"{name}.png").is_file()]


def copy_readme_figures(figures: str | Path, dest: str | Path, model: str, task: str) -> list[str]:
    """Copy the README's figures of a run into `dest`, flattened (`head_grids/m.ioi.png` becomes
    `head_grids.m.ioi.png`), replacing what was there; return the new names."""
    figures, dest = Path(figures), Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    copied = []
    for name in readme_figures(figures, model, task):
        shutil.copyfile(figures / name, dest / name.replace("/", "."))
        copied.append(name.replace("/", "."))
    return copied


def example_drift(example_data: str | Path, results: str | Path, tolerance: float = TOLERANCE) -> list[str]:
    """Where the committed examples and a run's results differ: a file one side lacks, a column, a row
    count, a label or selected head, or a number further apart than `tolerance` (absolute, and relative to
    the number's size). Provenance (package versions, run times) is not compared."""
    example_data, results = Path(example_data), Path(results)
    committed, fresh = set(example_files(example_data)), set(example_files(results))
    problems = [f"{name}: only in the committed examples" for name in sorted(committed - fresh)]
    problems += [f"{name}: missing from the committed examples" for name in sorted(fresh - committed)]
    for name in sorted(committed & fresh):
        if any(fnmatch.fnmatch(name, pattern) for pattern in MEASURED_EXAMPLES):
            continue
        if name.endswith(".parquet"):
            problems += _table_drift(name, read_parquet(example_data / name), read_parquet(results / name), tolerance)
        else:
            a, b = read_json(example_data / name), read_json(results / name)
            a.pop("provenance", None), b.pop("provenance", None)
            problems += [f"{name}: {where}" for where in _value_drift(a, b, tolerance, "")]
    return problems


def _table_drift(name: str, a: pd.DataFrame, b: pd.DataFrame, tolerance: float) -> list[str]:
    if list(a.columns) != list(b.columns):
        return [f"{name}: columns {list(a.columns)} != {list(b.columns)}"]
    if len(a) != len(b):
        return [f"{name}: {len(a)} rows != {len(b)} rows"]
    problems = []
    for column in a.columns:
        x, y = a[column].reset_index(drop=True), b[column].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(x):
            x, y = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
            bad = ~np.isclose(x, y, atol=tolerance, rtol=tolerance, equal_nan=True)
            if bad.any():
                row = int(np.argmax(bad))
                problems.append(
                    f"{name}: column {column!r} differs in {int(bad.sum())} rows (row {row}: {x[row]} vs {y[row]})"
                )
        elif not x.astype(str).equals(y.astype(str)):
            row = int(np.argmax((x.astype(str) != y.astype(str)).to_numpy()))
            problems.append(f"{name}: column {column!r} differs (row {row}: {x[row]} vs {y[row]})")
    return problems


def _value_drift(a: Any, b: Any, tolerance: float, where: str) -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            yield f"{where or 'top level'}: keys {sorted(a)} != {sorted(b)}"
            return
        for key in a:
            yield from _value_drift(a[key], b[key], tolerance, f"{where}.{key}" if where else key)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: {len(a)} items != {len(b)} items"
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _value_drift(x, y, tolerance, f"{where}[{i}]")
    elif isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        if not math.isclose(a, b, abs_tol=tolerance, rel_tol=tolerance) and not (math.isnan(a) and math.isnan(b)):
            yield f"{where}: {a!r} vs {b!r}"
    elif a != b:
        yield f"{where}: {a!r} vs {b!r}"
