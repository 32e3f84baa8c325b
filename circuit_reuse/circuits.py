"""Circuits as data: heads selected stage by stage from path-patching score grids, with their roles.

A circuit file (JSON) holds the model, the task, how heads were selected, every stage (its receivers,
patch position, the layer its senders must lie below, and the heads it selected) and one entry per head
in the union (the first stage that selected it, its score there and its role).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_reuse.io import read_json, write_json

Head = tuple[int, int]


def head_name(head: Head) -> str:
    """A head as "layer.head", e.g. "12.3"."""
    return f"{head[0]}.{head[1]}"


def grid_from_table(table: pd.DataFrame, column: str = "score", shape: tuple[int, int] | None = None) -> np.ndarray:
    """A per-head table (columns layer, head and `column`) as a [n_layers, n_heads] array, NaN where the
    table has no row. `shape` defaults to the table's largest layer and head, plus one."""
    layers, heads = table["layer"].to_numpy(dtype=int), table["head"].to_numpy(dtype=int)
    if shape is None:
        shape = (int(layers.max()) + 1, int(heads.max()) + 1) if len(table) else (0, 0)
    grid = np.full(shape, np.nan)
    grid[layers, heads] = table[column].to_numpy(dtype=float)
    return grid


def heads_label(heads: Iterable[Head]) -> str:
    """Heads as one sortable string, e.g. "12.3,13.4,19.1" (empty for no heads)."""
    return ",".join(head_name(h) for h in sorted(heads))


def select_heads(
    scores: np.ndarray,
    top_percent: float | None = None,
    threshold: float | None = None,
    min_relative_score: float = 0.0,
) -> list[Head]:
    """Heads with the largest |score|: the top `top_percent`% of all heads, or every |score| >= `threshold`;
    of those, only the ones whose |score| is at least `min_relative_score` times the grid's largest (the
    score floor; 0 keeps the rule's choice).

    The count for top-p% is round(p/100 * n_layers * n_heads), at least one (2% of GPT-2 medium's 384
    heads is 8, the paper's "about 8"). NaN scores (heads outside the stage's sender set) and scores of
    exactly 0 (no effect at all, e.g. the authors' senders in a receiver layer that reach no receiver) are
    never selected. Ties are broken by (layer, head), so the selection is deterministic. Sorted by |score|,
    largest first.
    """
    if (top_percent is None) == (threshold is None):
        raise ValueError("give exactly one of top_percent and threshold")
    if not 0 <= min_relative_score <= 1:
        raise ValueError(f"min_relative_score must be in [0, 1], got {min_relative_score}")
    scores = np.asarray(scores, dtype=float)
    n_layers, n_heads = scores.shape
    magnitude = np.abs(scores)
    candidates = [
        (l, h) for l in range(n_layers) for h in range(n_heads) if not math.isnan(magnitude[l, h]) and magnitude[l, h]
    ]
    candidates.sort(key=lambda lh: (-magnitude[lh], lh))
    if threshold is not None:
        chosen = [lh for lh in candidates if magnitude[lh] >= threshold]
    elif not 0 < top_percent <= 100:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
    else:
        chosen = candidates[: max(1, round(top_percent / 100 * n_layers * n_heads))]
    floor = min_relative_score * magnitude[candidates[0]] if candidates else 0.0
    return [lh for lh in chosen if magnitude[lh] >= floor]


# Two exact implementations of path patching in float32 give scores that differ by up to about 4e-5 (the
# benchmark in the README, "How fast"). A selection whose margin is below this hangs on float noise: a
# rewrite of the arithmetic, or another device, may select other heads.
SCORE_NOISE = 1e-4


def selection_margin(
    scores: np.ndarray, top_percent: float | None = None, threshold: float | None = None
) -> float | None:
    """How far the selection of `select_heads` is from changing: for top-p%, |score| of the weakest selected
    head minus |score| of the strongest unselected one; for a threshold, the smallest distance of any |score|
    from it. None where nothing decides it (every selectable head selected, or none selectable). As in
    `select_heads`, a head is selectable when its score is finite and not exactly 0."""
    magnitude = np.abs(np.asarray(scores, dtype=float))
    finite = np.sort(magnitude[np.isfinite(magnitude) & (magnitude > 0)])[::-1]
    if threshold is not None:
        return float(np.min(np.abs(finite - threshold))) if finite.size else None
    count = len(select_heads(scores, top_percent=top_percent))
    if count >= finite.size:
        return None
    return float(finite[count - 1] - finite[count])


@dataclass
class HeadInfo:
    layer: int
    head: int
    stage: str
    score: float
    role: str
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass
class StageRecord:
    name: str
    receivers: str
    position: str
    below_layer: int
    heads: list[Head]
    margin: float | None = None  # selection_margin of the stage's scores
    near_tie: bool = False  # the margin is below SCORE_NOISE; set from the margin
    min_relative_score: float = 0.0  # the stage's score floor (select_heads)
    below_floor: list[Head] = field(default_factory=list)  # heads the rule chose and the floor dropped

    def __post_init__(self) -> None:
        self.near_tie = self.margin is not None and self.margin < SCORE_NOISE


@dataclass
class Circuit:
    model: str
    task: str
    selection: dict[str, Any]
    stages: list[StageRecord]
    head_infos: list[HeadInfo]
    n_layers: int
    n_heads: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def heads(self) -> set[Head]:
        return {(i.layer, i.head) for i in self.head_infos}

    def head_info(self, head: Head) -> HeadInfo | None:
        return next((i for i in self.head_infos if (i.layer, i.head) == tuple(head)), None)

    def heads_with_role(self, *roles: str) -> list[Head]:
        return [(i.layer, i.head) for i in self.head_infos if i.role in roles]

    def stage(self, name: str) -> StageRecord:
        for record in self.stages:
            if record.name == name:
                return record
        raise KeyError(f"circuit {self.model}/{self.task} has no stage {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "selection": self.selection,
            "stages": [
                {**asdict(s), "heads": [list(h) for h in s.heads], "below_floor": [list(h) for h in s.below_floor]}
                for s in self.stages
            ],
            "heads": [asdict(i) for i in self.head_infos],
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Circuit:
        return cls(
            model=data["model"],
            task=data["task"],
            n_layers=data["n_layers"],
            n_heads=data["n_heads"],
            selection=data["selection"],
            stages=[
                StageRecord(
                    **{
                        **s,
                        "heads": [tuple(h) for h in s["heads"]],
                        "below_floor": [tuple(h) for h in s.get("below_floor", [])],
                    }
                )
                for s in data["stages"]
            ],
            head_infos=[HeadInfo(**i) for i in data["heads"]],
            provenance=data.get("provenance", {}),
        )


def save_circuit(path: str | Path, circuit: Circuit) -> Path:
    return write_json(path, circuit.to_json())


def load_circuit(path: str | Path) -> Circuit:
    return Circuit.from_json(read_json(path))
