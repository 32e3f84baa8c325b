"""The Colored Objects intervention experiment: overwrite some heads' attention and see what the model
and its movers do.

The paper "repairs" Colored Objects in GPT-2 medium by making the IOI circuit's inhibition heads (12.3,
13.4, 13.13) and negative mover (19.1) attend, at END, half to each of the query's two wrong colours,
as they would attend to the subject in IOI. This module holds that experiment, written for any task whose
dataset names the roles involved; the edits are `circuit_reuse.edits`, the forward passes
`circuit_reuse.evaluation.run_conditions_with_readouts`, the mover readouts `circuit_reuse.readouts`:

- `resolve_head_sets`: the head sets (inhibition, negative mover, content gatherers, movers) from the
  config or from the discovered circuits.
- `InterventionSettings` and `plan_conditions`: the config section, and the conditions it asks for (the
  baseline, the overrides, the content gatherers' block), skipped or shrunk where head sets are empty.
- `accuracy_table`: accuracy with paired percentile-bootstrap intervals, and the errors each condition
  fixes and introduces relative to the baseline.
- `random_head_sets` / `random_head_conditions` / `random_head_controls`: the same edit on random heads
  matched by count and layer range, seeded, summarised per repeat by `control_rows`.
- `intervention_experiment`: the whole experiment as tidy tables, every condition and random control in
  one evaluation (so the END-only engine makes one clean pass per batch for all of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from circuit_reuse.circuits import Head, heads_label
from circuit_reuse.datasets import END, TaskDataset
from circuit_reuse.edits import BASELINE, Block, Condition, EditError, Override, check_heads
from circuit_reuse.evaluation import run_conditions, run_conditions_with_readouts
from circuit_reuse.paper import PAPER_CONDITIONS
from circuit_reuse.readouts import mover_readouts, mover_spearman
from circuit_reuse.statistics import bootstrap_means, keyed_rng, percentile_interval
from circuit_reuse.tasks import intervention_plan, registered_tasks

BLOCK_CONDITION = "content_gatherers_blocked"
HEAD_SETS = ("inhibition", "negative_mover", "content_gatherers", "movers")


class InterventionError(EditError):
    """The experiment cannot be set up: a bad setting, an unknown head set, too few heads for a control, ..."""


# --------------------------------------------------------------------------------------------------
# Accuracy, bootstrap intervals, fixed and introduced errors


def _correct_matrix(per_prompt: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    order = list(dict.fromkeys(per_prompt["condition"]))
    wide = per_prompt.pivot(index="prompt", columns="condition", values="correct")
    if wide.isna().any().any():
        raise InterventionError("every condition must cover the same prompts to be compared prompt by prompt")
    return order, wide[order].to_numpy(dtype=float).T  # [conditions, prompts]


def prompt_changes(per_prompt: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """The per-prompt table with baseline_correct and change, prompt by prompt against `baseline`:
    "fixed" (wrong there, right here), "introduced" (right there, wrong here), "still_correct",
    "still_wrong"; None where the baseline did not run."""
    base = per_prompt.loc[per_prompt["condition"] == baseline, ["prompt", "correct"]]
    out = per_prompt.merge(base.rename(columns={"correct": "baseline_correct"}), on="prompt", how="left")
    labels = {
        (False, True): "fixed",
        (True, False): "introduced",
        (True, True): "still_correct",
        (False, False): "still_wrong",
    }
    out["change"] = [
        None if pd.isna(before) else labels[(bool(before), bool(now))]
        for before, now in zip(out["baseline_correct"], out["correct"], strict=True)
    ]
    return out


def accuracy_table(
    per_prompt: pd.DataFrame, n_boot: int = 10000, seed: int = 0, baseline: str = BASELINE, level: float = 0.95
) -> pd.DataFrame:
    """One row per condition: accuracy with a percentile-bootstrap interval, and the change from `baseline`.

    Columns: condition, n_prompts, accuracy, ci_low, ci_high, mean_metric (the task's metric),
    mean_answer_prob (mean `prob_target`, the probability of the condition's answers), fixed
    (wrong under the baseline, right here), introduced (right under the baseline, wrong here),
    delta_accuracy (= (fixed - introduced) / n_prompts), delta_ci_low, delta_ci_high (paired bootstrap),
    n_boot, boot_seed. Without a baseline condition the change columns are NaN.
    """
    order, correct = _correct_matrix(per_prompt)
    n = correct.shape[1]
    draws = bootstrap_means(correct, n_boot, seed)
    has_base = baseline in order
    base = order.index(baseline) if has_base else None
    means = per_prompt.groupby("condition")[["metric", "prob_target"]].mean()
    rows = []
    for i, name in enumerate(order):
        low, high = percentile_interval(draws[i], level)
        row = {
            "condition": name,
            "n_prompts": n,
            "accuracy": correct[i].mean(),
            "ci_low": low,
            "ci_high": high,
            "mean_metric": means.loc[name, "metric"],
            "mean_answer_prob": means.loc[name, "prob_target"],
        }
        if has_base:
            before, now = correct[base].astype(bool), correct[i].astype(bool)
            delta_low, delta_high = percentile_interval(draws[i] - draws[base], level)
            row.update(
                fixed=int((~before & now).sum()),
                introduced=int((before & ~now).sum()),
                delta_accuracy=(now.sum() - before.sum()) / n,
                delta_ci_low=delta_low,
                delta_ci_high=delta_high,
            )
        else:
            row.update(
                fixed=np.nan, introduced=np.nan, delta_accuracy=np.nan, delta_ci_low=np.nan, delta_ci_high=np.nan
            )
        row.update(n_boot=n_boot, boot_seed=seed)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Random-head controls


def random_head_sets(
    n_heads: int,
    heads: Sequence[Head],
    repeats: int,
    seed: int,
    exclude: Iterable[Head] = (),
    key: str = "",
) -> list[list[Head]]:
    """`repeats` random head sets matched to `heads`: as many heads, drawn uniformly without replacement
    from the layers min..max of `heads` (inclusive), never one of `heads` or of `exclude`.

    Repeat r draws from a generator seeded by (seed, crc32(key), r), so a repeat's heads depend only on the
    seed, the key (e.g. the condition's name) and r, not on which other controls run. Sorted.
    """
    heads = sorted({(int(layer), int(head)) for layer, head in heads})
    if not heads:
        raise InterventionError("random heads are matched to a head set, and this one is empty")
    low, high = heads[0][0], max(layer for layer, _ in heads)
    excluded = set(heads) | {(int(layer), int(head)) for layer, head in exclude}
    pool = [(layer, head) for layer in range(low, high + 1) for head in range(n_heads) if (layer, head) not in excluded]
    if len(pool) < len(heads):
        raise InterventionError(
            f"only {len(pool)} heads in layers {low}-{high} are not intervened on; {len(heads)} random heads are needed"
        )
    sets = []
    for repeat in range(repeats):
        rng = keyed_rng(seed, key, repeat)
        pick = rng.choice(len(pool), size=len(heads), replace=False)
        sets.append(sorted(pool[i] for i in pick))
    return sets


def random_head_conditions(
    model, condition: Condition, repeats: int, seed: int, exclude: Iterable[Head] = ()
) -> list[Condition]:
    """The condition's edits on random heads (see `random_head_sets`), named "{condition}/random{repeat}"."""
    sets = random_head_sets(model.cfg.n_heads, condition.heads, repeats, seed, exclude, key=condition.name)
    return [
        condition.remap(dict(zip(condition.heads, chosen, strict=True)), name=f"{condition.name}/random{repeat}")
        for repeat, chosen in enumerate(sets)
    ]


def control_rows(
    condition: Condition,
    controls: Sequence[Condition],
    seed: int,
    per_prompt: pd.DataFrame,
    baseline_correct: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per random-head control of `condition` (`random_head_conditions`), from the per-prompt table
    of a run that included them.

    Columns: condition, repeat, seed, heads, n_heads, layer_min, layer_max, accuracy, mean_metric,
    mean_answer_prob, and, given the baseline's per-prompt correctness, fixed and introduced.
    """
    rows = []
    for repeat, control in enumerate(controls):
        table = per_prompt[per_prompt["condition"] == control.name]
        correct = table.sort_values("prompt")["correct"].to_numpy(dtype=bool)
        chosen = control.heads
        row = {
            "condition": condition.name,
            "repeat": repeat,
            "seed": seed,
            "heads": heads_label(chosen),
            "n_heads": len(chosen),
            "layer_min": chosen[0][0],
            "layer_max": max(layer for layer, _ in chosen),
            "accuracy": correct.mean(),
            "mean_metric": table["metric"].mean(),
            "mean_answer_prob": table["prob_target"].mean(),
            "fixed": np.nan,
            "introduced": np.nan,
        }
        if baseline_correct is not None:
            before = np.asarray(baseline_correct, dtype=bool)
            row.update(fixed=int((~before & correct).sum()), introduced=int((before & ~correct).sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def random_head_controls(
    model,
    dataset: TaskDataset,
    condition: Condition,
    repeats: int,
    seed: int,
    exclude: Iterable[Head] = (),
    baseline_correct: np.ndarray | None = None,
    *,
    batch_size: int = 50,
    progress: bool = True,
    engine: str = "auto",
) -> pd.DataFrame:
    """The condition's edits on random heads, all repeats in one run, one row per repeat (`control_rows`)."""
    controls = random_head_conditions(model, condition, repeats, seed, exclude)
    table = run_conditions(model, dataset, controls, batch_size=batch_size, progress=progress, engine=engine)
    return control_rows(condition, controls, seed, table, baseline_correct)


def controls_summary(
    controls: pd.DataFrame, intervened_accuracy: Mapping[str, float], level: float = 0.95
) -> pd.DataFrame:
    """Per condition: the intervened accuracy beside the random heads' mean, std and percentile interval.

    frac_random_at_least is the share of random repeats whose accuracy reaches the intervened one.
    """
    rows = []
    for name, group in controls.groupby("condition", sort=False):
        acc = group["accuracy"].to_numpy(dtype=float)
        target = intervened_accuracy.get(name, np.nan)
        low, high = percentile_interval(acc, level)
        rows.append(
            {
                "condition": name,
                "intervened_accuracy": target,
                "n_repeats": len(acc),
                "seed": int(group["seed"].iloc[0]),
                "random_mean": acc.mean(),
                "random_std": acc.std(ddof=1) if len(acc) > 1 else np.nan,
                "random_low": low,
                "random_high": high,
                "frac_random_at_least": float((acc >= target).mean()) if not math.isnan(target) else np.nan,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Which heads: from the config or from the discovered circuits


@dataclass
class HeadSet:
    name: str
    heads: list[Head]
    source: str  # "config", or "circuit:{task}:{role|stage}={name}"
    note: str = ""


def heads_from_circuit(circuit: Mapping[str, Any], role: str | None = None, stage: str | None = None) -> list[Head]:
    """Heads of a circuit JSON with a role (its `heads` entries) or selected at a stage; sorted."""
    if (role is None) == (stage is None):
        raise ValueError("give exactly one of role and stage")
    if role is not None:
        return sorted({(int(e["layer"]), int(e["head"])) for e in circuit.get("heads", []) if e.get("role") == role})
    for record in circuit.get("stages", []):
        if record.get("name") == stage:
            return sorted({(int(layer), int(head)) for layer, head in record.get("heads", [])})
    return []


def resolve_head_sets(
    spec: Mapping[str, Any],
    circuits: Mapping[str, Mapping[str, Any] | None],
    n_layers: int,
    n_heads: int,
    mover_stage: str = "movers",
    where: str = "intervention.heads",
) -> dict[str, HeadSet]:
    """Every head set (inhibition, negative_mover, content_gatherers, movers) from config or circuits.

    `spec[name]` is a list of [layer, head] pairs, or "auto" (also when missing): then the heads come from
    the circuit of the task that declares the set in its `intervention_heads` (`circuits[task]`, a circuit
    JSON; circuit_reuse.tasks). The movers' stage is the setting `mover_stage`. An empty auto set is kept,
    with a note saying where nothing was found, so the experiment can run what it can.
    """
    _, auto_sources = intervention_plan(registered_tasks())
    sets = {}
    for name in HEAD_SETS:
        value = spec.get(name, "auto")
        if value != "auto":
            sets[name] = HeadSet(name, check_heads(value, n_layers, n_heads, f"{where}.{name}"), "config")
            if not sets[name].heads:
                sets[name].note = "the config lists no heads"
            continue
        task, kind, key = auto_sources[name]
        if kind == "stage":
            key = mover_stage
        source = f"circuit:{task}:{kind}={key}"
        circuit = circuits.get(task)
        if circuit is None:
            sets[name] = HeadSet(name, [], source, f"no {task} circuit was given")
            continue
        found = heads_from_circuit(circuit, **{kind: key})
        heads = check_heads(found, n_layers, n_heads, f"{task} circuit, {kind} {key}")
        note = "" if heads else f"the {task} circuit has no heads with {kind} {key!r}"
        sets[name] = HeadSet(name, heads, source, note)
    return sets


def head_sets_table(sets: Mapping[str, HeadSet]) -> pd.DataFrame:
    """One row per head set, empty ones included: set, source, n_heads, heads, note."""
    return pd.DataFrame(
        [
            {"set": s.name, "source": s.source, "n_heads": len(s.heads), "heads": heads_label(s.heads), "note": s.note}
            for s in sets.values()
        ],
        columns=["set", "source", "n_heads", "heads", "note"],
    )


# --------------------------------------------------------------------------------------------------
# The whole experiment


@dataclass
class InterventionSettings:
    """The `intervention` config section, less the per-model head lists (see the config schema)."""

    conditions: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(PAPER_CONDITIONS))
    query_role: str = END
    target_roles: tuple[str, ...] = ("wrong_color_0", "wrong_color_1")
    target_weights: tuple[float, ...] | None = None
    answer_role: str = "answer_color"
    block_span: str = "question"
    mover_stage: str = "movers"
    repeats: int = 10
    control_seed: int = 0
    n_boot: int = 10000
    boot_seed: int = 0
    batch_size: int = 50
    n_prompts: int | None = None

    def __post_init__(self) -> None:
        if self.target_weights is not None:
            if len(self.target_weights) != len(self.target_roles):
                raise InterventionError(
                    f"intervention.target_weights: {len(self.target_weights)} weights for "
                    f"{len(self.target_roles)} target roles {list(self.target_roles)}"
                )
            if min(self.target_weights) < 0 or not math.isclose(sum(self.target_weights), 1.0, abs_tol=1e-6):
                raise InterventionError(
                    f"intervention.target_weights: {list(self.target_weights)} must be non-negative and sum to 1"
                )
        for name in self.conditions:
            if name in (BASELINE, BLOCK_CONDITION):
                raise InterventionError(f"intervention.conditions: the name {name!r} is reserved")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> InterventionSettings:
        weights = section.get("target_weights")
        return cls(
            conditions={k: tuple(v) for k, v in section.get("conditions", PAPER_CONDITIONS).items()},
            query_role=section.get("query_role", END),
            target_roles=tuple(section.get("target_roles", cls.target_roles)),
            target_weights=tuple(weights) if weights is not None else None,
            answer_role=section.get("answer_role", cls.answer_role),
            block_span=section.get("block_span", cls.block_span),
            mover_stage=section.get("mover_stage", cls.mover_stage),
            repeats=section.get("random_controls", {}).get("repeats", cls.repeats),
            control_seed=section.get("random_controls", {}).get("seed", cls.control_seed),
            n_boot=section.get("bootstrap", {}).get("n", cls.n_boot),
            boot_seed=section.get("bootstrap", {}).get("seed", cls.boot_seed),
            batch_size=section.get("batch_size", cls.batch_size),
            n_prompts=section.get("n_prompts"),
        )


def model_section(section: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The `intervention` config section for one model: `heads` becomes that model's head sets, each a list
    of [layer, head] pairs or "auto" (also for a model or set the config does not list)."""
    configured = section.get("heads", {}).get(model, {})
    heads = {name: configured.get(name, "auto") for name in HEAD_SETS}
    return {**{k: v for k, v in section.items() if k != "heads"}, "heads": heads}


@dataclass
class PlannedCondition:
    name: str
    kind: str  # "none", "override" or "block"
    sets: tuple[str, ...]
    condition: Condition | None  # None: skipped, see note
    note: str = ""


def plan_conditions(sets: Mapping[str, HeadSet], settings: InterventionSettings) -> list[PlannedCondition]:
    """The baseline, one override per configured condition, and the content gatherers' block.

    A condition whose head sets are all empty is skipped; one with some empty sets runs on the others.
    Both are said in the note.
    """
    plans = [PlannedCondition(BASELINE, "none", (), Condition(BASELINE))]
    for name, set_names in settings.conditions.items():
        if name in (BASELINE, BLOCK_CONDITION):
            raise InterventionError(f"intervention.conditions: the name {name!r} is reserved")
        unknown = [s for s in set_names if s not in sets]
        if unknown:
            raise InterventionError(f"intervention.conditions.{name}: unknown head sets {unknown}; known: {list(sets)}")
        empty = [s for s in set_names if not sets[s].heads]
        edits = tuple(
            Override(tuple(sets[s].heads), settings.target_roles, settings.target_weights, settings.query_role)
            for s in set_names
            if sets[s].heads
        )
        if not edits:
            plans.append(
                PlannedCondition(name, "override", set_names, None, f"skipped: no heads in {', '.join(empty)}")
            )
            continue
        note = f"ran without {', '.join(empty)} (no heads)" if empty else ""
        plans.append(PlannedCondition(name, "override", set_names, Condition(name, edits), note))
    gatherers = sets["content_gatherers"].heads
    if gatherers:
        block = Condition(BLOCK_CONDITION, (Block(tuple(gatherers), settings.block_span, settings.query_role),))
        plans.append(PlannedCondition(BLOCK_CONDITION, "block", ("content_gatherers",), block))
    else:
        plans.append(
            PlannedCondition(
                BLOCK_CONDITION, "block", ("content_gatherers",), None, "skipped: no content_gatherers heads"
            )
        )
    return plans


ACCURACY_COLUMNS = [
    "condition", "kind", "sets", "heads", "n_heads", "status", "note", "n_prompts", "accuracy", "ci_low",
    "ci_high", "mean_metric", "mean_answer_prob", "fixed", "introduced", "delta_accuracy", "delta_ci_low",
    "delta_ci_high", "n_boot", "boot_seed",
]  # fmt: skip
CONTROL_COLUMNS = [
    "condition", "repeat", "seed", "heads", "n_heads", "layer_min", "layer_max", "accuracy", "mean_metric",
    "mean_answer_prob", "fixed", "introduced",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "condition", "kind", "status", "intervened_accuracy", "n_repeats", "seed", "random_mean", "random_std",
    "random_low", "random_high", "frac_random_at_least",
]  # fmt: skip


def intervention_experiment(
    model,
    dataset: TaskDataset,
    sets: Mapping[str, HeadSet],
    settings: InterventionSettings,
    importance: Mapping[Head, float] | None = None,
    *,
    progress: bool = True,
    engine: str = "auto",
) -> dict[str, pd.DataFrame]:
    """Run every condition, the random-head controls and the mover readouts; return the tidy tables.

    Tables: head_sets, per_prompt, accuracy, controls, controls_summary, movers, movers_spearman. Every
    planned condition has a row in accuracy and (but the baseline) in controls_summary, with a status
    saying whether it ran and why not. `engine` (`circuit_reuse.evaluation.choose_engine`) does not change
    the tables.
    """
    if settings.n_prompts:
        dataset = dataset.subset(slice(0, settings.n_prompts))
    plans = plan_conditions(sets, settings)
    ran = [p for p in plans if p.condition is not None]
    # Random heads never include a head that any condition intervenes on.
    intervened = {h for p in ran for h in p.condition.heads}
    controls_of, why_not = {}, {}
    for plan in plans:
        if plan.kind == "none":
            continue
        if plan.condition is None:
            why_not[plan.name] = plan.note
        elif settings.repeats == 0:
            why_not[plan.name] = "skipped: random_controls.repeats is 0"
        else:
            try:
                controls_of[plan.name] = random_head_conditions(
                    model, plan.condition, settings.repeats, settings.control_seed, intervened
                )
            except InterventionError as error:
                why_not[plan.name] = f"skipped: {error}"
    # One run for the conditions and every control: the END-only engine shares each batch's clean pass
    # among them all. The movers are read out under the conditions alone.
    movers = sets["movers"].heads
    shown = [p.condition.name for p in ran]
    every_prompt, head_table = run_conditions_with_readouts(
        model,
        dataset,
        [p.condition for p in ran] + [c for controls in controls_of.values() for c in controls],
        movers,
        (settings.answer_role, *settings.target_roles),
        batch_size=settings.batch_size,
        progress=progress,
        engine=engine,
        read=shown,
    )
    per_prompt = every_prompt[every_prompt["condition"].isin(shown)].reset_index(drop=True)
    per_prompt = prompt_changes(per_prompt)

    stats = accuracy_table(per_prompt, settings.n_boot, settings.boot_seed).set_index("condition")
    accuracy_rows = []
    for plan in plans:
        heads = plan.condition.heads if plan.condition else []
        row = {"condition": plan.name, "kind": plan.kind, "sets": "+".join(plan.sets), "heads": heads_label(heads)}
        row.update(n_heads=len(heads), status="ran" if plan.condition else "skipped", note=plan.note)
        if plan.condition:
            row.update(stats.loc[plan.name].to_dict())
        accuracy_rows.append(row)
    accuracy = pd.DataFrame(accuracy_rows).reindex(columns=ACCURACY_COLUMNS)
    accuracy["n_boot"], accuracy["boot_seed"] = settings.n_boot, settings.boot_seed
    accuracy = accuracy.astype({"n_prompts": "Int64", "fixed": "Int64", "introduced": "Int64"})

    baseline_correct = per_prompt[per_prompt["condition"] == BASELINE].sort_values("prompt")["correct"].to_numpy()
    control_parts = [
        control_rows(p.condition, controls_of[p.name], settings.control_seed, every_prompt, baseline_correct)
        for p in ran
        if p.name in controls_of
    ]
    controls = pd.concat(control_parts, ignore_index=True) if control_parts else pd.DataFrame(columns=CONTROL_COLUMNS)
    intervened_accuracy = dict(zip(accuracy["condition"], accuracy["accuracy"], strict=True))
    summary = controls_summary(controls, intervened_accuracy).set_index("condition") if len(controls) else None
    summary_rows = []
    for plan in plans:
        if plan.kind == "none":
            continue
        row = {"condition": plan.name, "kind": plan.kind, "intervened_accuracy": intervened_accuracy[plan.name]}
        if plan.name in why_not:
            row.update(status=why_not[plan.name], n_repeats=0, seed=settings.control_seed)
        else:
            row.update(summary.loc[plan.name].to_dict(), status="ran")
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows).reindex(columns=SUMMARY_COLUMNS).astype({"n_repeats": int, "seed": int})

    edited = {p.name: p.condition.heads for p in ran}
    mover_table = mover_readouts(head_table, settings.answer_role, settings.target_roles, BASELINE, edited, importance)
    spearman_table = mover_spearman(mover_table)
    if not movers:
        spearman_table = pd.DataFrame(
            [
                {"condition": p.name, "metric": "", "n_heads": 0, "rho": np.nan, "p_value": np.nan,
                 "status": f"skipped: no mover heads ({sets['movers'].note or 'empty set'})"}
                for p in ran
                if p.kind != "none"
            ],
            columns=spearman_table.columns,
        )  # fmt: skip
    return {
        "head_sets": head_sets_table(sets),
        "per_prompt": per_prompt,
        "accuracy": accuracy,
        "controls": controls,
        "controls_summary": summary,
        "movers": mover_table,
        "movers_spearman": spearman_table,
    }
