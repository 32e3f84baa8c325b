"""How much circuits share: intersection over union, each one's share in the other, a role-aligned
table, threshold sensitivity and a chance baseline, for two circuits or for every pair of a model's tasks
(`pairwise_overlap`, `pairwise_heads`, `pairwise_sensitivity`).

The paper's headline (25 of 32 heads shared in GPT-2 medium, 78%) is an intersection over union of the
two circuits' head sets; both directions of containment are reported beside it, because a small circuit
inside a large one has a low IoU but is fully reused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuit_reuse.circuits import Circuit, Head, select_heads
from circuit_reuse.statistics import percentile_interval

TOP_LOGIT_HEADS = 10  # the paper's appendix compares the top-10 heads of the logits stage in GPT-2 large and XL

Stage = tuple[int, int]  # (number of heads a stage selects, the layer they must lie below)


@dataclass(frozen=True)
class Overlap:
    size_a: int
    size_b: int
    shared: int
    union: int

    @property
    def iou(self) -> float:
        return self.shared / self.union if self.union else float("nan")

    @property
    def share_of_a_in_b(self) -> float:
        return self.shared / self.size_a if self.size_a else float("nan")

    @property
    def share_of_b_in_a(self) -> float:
        return self.shared / self.size_b if self.size_b else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {
            "size_a": self.size_a,
            "size_b": self.size_b,
            "shared": self.shared,
            "union": self.union,
            "iou": self.iou,
            "share_of_a_in_b": self.share_of_a_in_b,
            "share_of_b_in_a": self.share_of_b_in_a,
        }


def head_overlap(a: Iterable[Head], b: Iterable[Head]) -> Overlap:
    a, b = set(a), set(b)
    return Overlap(size_a=len(a), size_b=len(b), shared=len(a & b), union=len(a | b))


def role_aligned_table(a: Circuit, b: Circuit) -> pd.DataFrame:
    """One row per head in either circuit: its stage, role and score in each, and where it belongs."""
    rows = []
    for head in sorted(a.heads() | b.heads()):
        row = {"layer": head[0], "head": head[1], "name": f"{head[0]}.{head[1]}"}
        for label, circuit in (("a", a), ("b", b)):
            info = circuit.head_info(head)
            row[f"stage_{label}"] = info.stage if info else None
            row[f"role_{label}"] = info.role if info else None
            row[f"score_{label}"] = info.score if info else float("nan")
        in_a, in_b = head in a.heads(), head in b.heads()
        row["membership"] = "shared" if in_a and in_b else (f"{a.task} only" if in_a else f"{b.task} only")
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_sensitivity(
    grids_a: Mapping[str, np.ndarray],
    grids_b: Mapping[str, np.ndarray],
    top_percents: Sequence[float],
    limits_a: Mapping[str, int] | None = None,
    limits_b: Mapping[str, int] | None = None,
    repeats: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Overlap when every stage's grid is re-thresholded at each top-p%, with a chance band if asked.

    The grids are the stage scores computed with the circuit's own receivers; a different threshold would
    also change later stages' receivers, which re-selection on fixed grids does not capture. Rerunning
    discovery at one threshold gives the exact figure for it. With `limits_a` and `limits_b` (each
    stage's `below_layer`), each row also gets the chance baseline for circuits of that row's sizes.
    """
    rows = []
    for p in top_percents:
        selected_a = {name: select_heads(grid, top_percent=p) for name, grid in grids_a.items()}
        selected_b = {name: select_heads(grid, top_percent=p) for name, grid in grids_b.items()}
        overlap = head_overlap(
            {h for heads in selected_a.values() for h in heads}, {h for heads in selected_b.values() for h in heads}
        )
        row = {"top_percent": p, **overlap.as_dict()}
        if limits_a is not None and limits_b is not None:
            n_heads = next(iter(grids_a.values())).shape[1]
            chance = chance_overlap(
                [(len(heads), limits_a[name]) for name, heads in selected_a.items()],
                [(len(heads), limits_b[name]) for name, heads in selected_b.items()],
                n_heads,
                overlap.iou,
                repeats=repeats,
                seed=seed,
            )
            row.update({k: v for k, v in chance.items() if k != "observed_iou"})
        rows.append(row)
    return pd.DataFrame(rows)


def circuit_overlap(a: Circuit, b: Circuit, repeats: int = 10_000, seed: int = 0) -> dict[str, float]:
    """The two circuits' overlap with its chance baseline: random circuits with the same stage sizes."""
    overlap = head_overlap(a.heads(), b.heads())
    chance = chance_overlap(
        [(len(s.heads), s.below_layer) for s in a.stages],
        [(len(s.heads), s.below_layer) for s in b.stages],
        a.n_heads,
        overlap.iou,
        repeats=repeats,
        seed=seed,
    )
    return {"model": a.model, "task_a": a.task, "task_b": b.task, **overlap.as_dict(), **chance}


def random_circuit(stages: Sequence[Stage], n_heads: int, rng: np.random.Generator) -> set[Head]:
    """A random head set built like a circuit: per stage, that many distinct heads below its limit layer."""
    heads: set[Head] = set()
    for count, below_layer in stages:
        eligible = below_layer * n_heads
        if count > eligible:
            raise ValueError(f"cannot draw {count} heads from the {eligible} heads below layer {below_layer}")
        for flat in rng.choice(eligible, size=count, replace=False):
            heads.add((int(flat) // n_heads, int(flat) % n_heads))
    return heads


def chance_overlap(
    stages_a: Sequence[Stage],
    stages_b: Sequence[Stage],
    n_heads: int,
    observed_iou: float,
    repeats: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """The IoU of random circuits with the same per-stage sizes and layer limits as the real ones.

    Returns the mean, a 95% interval (2.5th and 97.5th percentiles) and a one-sided p-value for the
    observed IoU, (1 + #{random >= observed}) / (1 + repeats), which is never zero.
    """
    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            head_overlap(random_circuit(stages_a, n_heads, rng), random_circuit(stages_b, n_heads, rng)).iou
            for _ in range(repeats)
        ]
    )
    low, high = percentile_interval(draws, 0.95)
    return {
        "chance_iou_mean": float(draws.mean()),
        "chance_iou_low": float(low),
        "chance_iou_high": float(high),
        "observed_iou": float(observed_iou),
        "p_value": float((1 + np.sum(draws >= observed_iou)) / (1 + repeats)),
        "repeats": repeats,
        "seed": seed,
    }


def normalised_importance(grids: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each head's importance to a task on a 0-to-1 scale: the largest, over stages, of |score| / max |score|.

    Every stage's grid is divided by its own largest |score| (stages differ by orders of magnitude, since
    later stages measure a path through earlier heads), so the stage's top head gets 1; a head's importance
    is its best stage. NaN cells (heads that cannot reach a stage's receivers) and stages whose scores are
    all NaN or all zero contribute nothing; a head that no stage can score gets 0.
    """
    grids = [np.asarray(grid, dtype=float) for grid in grids.values()]
    if not grids:
        raise ValueError("no stage grids")
    importance = np.zeros_like(grids[0])
    for grid in grids:
        if grid.shape != importance.shape:
            raise ValueError(f"stage grids differ in shape: {grid.shape} and {importance.shape}")
        magnitude = np.abs(grid)
        if np.all(np.isnan(magnitude)):
            continue
        largest = np.nanmax(magnitude)
        if largest == 0:
            continue
        importance = np.fmax(importance, magnitude / largest)
    return importance


def importance_difference(grids_a: Mapping[str, np.ndarray], grids_b: Mapping[str, np.ndarray]) -> np.ndarray:
    """Normalised importance in task a minus that in task b, per head, in [-1, 1] (see normalised_importance).

    Positive: the head matters more to task a; negative: more to task b; near 0: equally (or not at all).
    """
    return normalised_importance(grids_a) - normalised_importance(grids_b)


def task_pairs(circuits: Sequence[Circuit]) -> list[tuple[Circuit, Circuit]]:
    """Every unordered pair of circuits, in the given (config) order: (0, 1), (0, 2), ..., (1, 2), ..."""
    return [(a, b) for i, a in enumerate(circuits) for b in circuits[i + 1 :]]


def logits_stage(circuit: Circuit) -> str:
    """The name of a circuit's first stage whose receivers are the logits."""
    names = [stage.name for stage in circuit.stages if stage.receivers == "logits"]
    if not names:
        raise ValueError(f"circuit {circuit.model}/{circuit.task} has no logits stage")
    return names[0]


def top_heads_shared(grid_a: np.ndarray, grid_b: np.ndarray, count: int = TOP_LOGIT_HEADS) -> int:
    """How many of the `count` heads with the largest |score| in one grid are among those of the other."""
    n_heads = grid_a.size
    top_a = set(select_heads(grid_a, top_percent=100 * count / n_heads)[:count])
    top_b = set(select_heads(grid_b, top_percent=100 * count / n_heads)[:count])
    return len(top_a & top_b)


def pairwise_overlap(
    circuits: Sequence[Circuit],
    grids: Mapping[str, Mapping[str, np.ndarray]],
    repeats: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per pair of tasks: `circuit_overlap` (IoU, both shares, chance baseline, p-value) and
    `top10_logits_shared`, the heads shared by the two tasks' top-10 heads of their logits stage.

    `grids[task][stage]` are each task's stage score grids.
    """
    rows = []
    for a, b in task_pairs(circuits):
        row = circuit_overlap(a, b, repeats=repeats, seed=seed)
        row["top10_logits_shared"] = top_heads_shared(grids[a.task][logits_stage(a)], grids[b.task][logits_stage(b)])
        rows.append(row)
    return pd.DataFrame(rows)


def pairwise_heads(circuits: Sequence[Circuit]) -> pd.DataFrame:
    """`role_aligned_table` of every pair, stacked, with the pair in columns task_a and task_b."""
    tables = []
    for a, b in task_pairs(circuits):
        table = role_aligned_table(a, b)
        table.insert(0, "task_b", b.task)
        table.insert(0, "task_a", a.task)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def pairwise_sensitivity(
    circuits: Sequence[Circuit],
    grids: Mapping[str, Mapping[str, np.ndarray]],
    top_percents: Sequence[float],
    repeats: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """`threshold_sensitivity` of every pair, stacked, with the pair in columns task_a and task_b."""
    tables = []
    for a, b in task_pairs(circuits):
        table = threshold_sensitivity(
            grids[a.task],
            grids[b.task],
            top_percents,
            limits_a={s.name: s.below_layer for s in a.stages},
            limits_b={s.name: s.below_layer for s in b.stages},
            repeats=repeats,
            seed=seed,
        )
        table.insert(0, "task_b", b.task)
        table.insert(0, "task_a", a.task)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
