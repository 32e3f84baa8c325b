"""The task registry: everything the workflow needs to know about a task, declared once in the task's module.

A task module (circuit_reuse/datasets/ioi.py, colored_objects.py, greater_than.py, world_capitals.py)
ends with

    TASK_SPEC = register(Task(name=..., label=..., generate=..., metric=..., options_schema=..., stages=...,
                              candidate_roles=..., intervention_heads=..., intervention_target=...))

and everything else reads the registry: the config schema's `tasks` section and default discovery stages
(`circuit_reuse.config`), dataset generation, evaluation (the metric), head labelling (the candidate
roles), the intervention (which task's circuit gives which head set, which task's prompts it runs on) and
the workflow's rules. Adding a task is one new module that registers itself, imported by
circuit_reuse/datasets/__init__.py (or by whoever uses it), and one entry under `tasks:` in the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from circuit_reuse.metrics import Metric


class TaskError(ValueError):
    """A task is unknown, or registered twice under one name."""


@dataclass(frozen=True)
class Task:
    """One task's declaration.

    name: the key under `tasks:` in the config and in every file name.
    label: how figures and tables print it ("Colored Objects").
    generate: (n, seed, tokenizer, **options) -> (records, meta), the records in the layout of
        `circuit_reuse.datasets.core.from_records`.
    metric: the number path patching, evaluation and every analysis read from the logits at END.
    options_schema: JSON-schema properties of the task's config section beside n_prompts and seed (they
        may refer to the config schema's $defs, e.g. "#/$defs/word"); each becomes a keyword of `generate`.
    default_seed: the seed when the config gives none.
    stages: the default `discovery.stages` entry (a list of stages in the config's format).
    candidate_roles: the dataset roles where the answer candidates sit; a query-stage head attending more to
        the task's question span than to these is a content gatherer, otherwise an inhibition head.
    roles: every position each prompt records (END included): what stages and the intervention may name.
    spans: every token range each prompt records (e.g. Colored Objects' "question").
    ablation_reference: the corruption whose prompts are the reference distribution of mean and resample
        ablation (Wang et al.'s ABC prompts for IOI); None: the task's default corruption.
    intervention_heads: the intervention's head sets this task's circuit supplies, as
        {set: ("role" or "stage", which)}, e.g. {"inhibition": ("role", "inhibition")}.
    intervention_target: whether the intervention runs on this task's prompts (its dataset has the roles
        the intervention's settings name).
    skeleton_roles: the roles whose tokens carry the answer; an organism's training may add these tokens
        alone, at their own positions, as a curriculum (`circuit_reuse.training`); () for none.
    """

    name: str
    label: str
    generate: Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]]
    metric: Metric
    options_schema: Mapping[str, Any]
    stages: tuple[Mapping[str, Any], ...]
    candidate_roles: tuple[str, ...]
    roles: tuple[str, ...]
    spans: tuple[str, ...] = ()
    ablation_reference: str | None = None
    default_seed: int = 0
    intervention_heads: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    intervention_target: bool = False
    skeleton_roles: tuple[str, ...] = ()

    def config_schema(self) -> dict[str, Any]:
        """The JSON schema of this task's section under `tasks:`."""
        return {
            "description": f"{self.label} ({self.generate.__module__}); null lists use the built-in ones",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "n_prompts": {"$ref": "#/$defs/n_prompts"},
                "seed": {
                    "description": "seed of the dataset generator",
                    "type": "integer",
                    "minimum": 0,
                    # seeds from 2**40 up are the organisms' training prompts (circuit_reuse.training)
                    "maximum": 2**40 - 1,
                    "default": self.default_seed,
                },
                **self.options_schema,
            },
        }


def word_list_option(description: str, minimum: int = 1) -> dict[str, Any]:
    """The schema of a vocabulary option: a list of distinct words, or null for the task's built-in list."""
    return {
        "description": description,
        "type": ["array", "null"],
        "minItems": minimum,
        "uniqueItems": True,
        "items": {"$ref": "#/$defs/word"},
        "default": None,
    }


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry and return it; a second, different task under the same name is an error."""
    known = _REGISTRY.get(task.name)
    if known is not None and known != task:
        raise TaskError(
            f"task {task.name!r} is registered twice (by {known.generate.__module__} and {task.generate.__module__})"
        )
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a task (tests that register a toy task clean up with this)."""
    _REGISTRY.pop(name, None)


def registered_tasks() -> dict[str, Task]:
    """Every registered task by name, the built-in ones first."""
    import circuit_reuse.datasets  # noqa: F401 (its task modules register themselves on import)

    return dict(_REGISTRY)


def get_task(name: str) -> Task:
    tasks = registered_tasks()
    if name not in tasks:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(tasks)}")
    return tasks[name]


def intervention_plan(task_names) -> tuple[str | None, dict[str, tuple[str, str, str]]]:
    """Which of `task_names` the intervention runs on, and where each head set comes from.

    Returns (target task or None, {head set: (task, "role" or "stage", which)}) over the given tasks only.
    """
    tasks = [get_task(name) for name in task_names]
    targets = [task.name for task in tasks if task.intervention_target]
    sources = {head_set: (task.name, *source) for task in tasks for head_set, source in task.intervention_heads.items()}
    return (targets[0] if targets else None), sources
