"""The config checks that the schema cannot express, made before any job runs.

Each function returns problems as lines that start with the config key they concern, in the style of the
schema's messages, so that a mistake the config alone reveals (a shape that cannot be built, a head
outside its model, a role no prompt has, a missing directory) stops the workflow at once rather than
inside a job, possibly hours later. `circuit_reuse.config.validate_config` runs the pure checks;
`path_problems` looks at the file system and is run by the workflow itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_reuse.families import FAMILIES, architectures, family_named, hub_architecture
from circuit_reuse.io import read_json
from circuit_reuse.models import TOKENIZER_ENV, ModelCacheError, resolve_tokenizer_dir
from circuit_reuse.tasks import get_task, intervention_plan

# A model's shape, whatever its family calls these fields (`Family.shape_fields`).
SHAPE_KEYS = ("n_layer", "n_head", "n_embd")
# The schema marks each model key that applies to some sources only with `x-sources`.
SOURCES_KEYWORD = "x-sources"
# The sources whose models are built here, with the tokenizer the config names.
BUILT_SOURCES = ("random", "trained", "checkpoint")


def source_keys(schema: Mapping[str, Any]) -> dict[str, list[str]]:
    """The model keys that apply to some sources only, with those sources."""
    properties = schema["$defs"]["model"]["properties"]
    return {key: sub[SOURCES_KEYWORD] for key, sub in properties.items() if SOURCES_KEYWORD in sub}


def source_key_problems(config: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Keys given for a model whose source ignores them (`path` on a random model, `seed` on a Hub one).

    Runs on the config as written, before the schema's defaults are filled in.
    """
    models = config.get("models")
    if not isinstance(models, Mapping):
        return []
    applies = source_keys(schema)
    problems = []
    for name, entry in models.items():
        if not isinstance(entry, Mapping):
            continue
        for key in entry:
            if key in applies and entry.get("source") not in applies[key]:
                problems.append(
                    f"models.{name}.{key}: does not apply to source {entry.get('source')!r} (only to "
                    f"{', '.join(applies[key])}); remove it"
                )
    return problems


def model_shape(entry: Mapping[str, Any]) -> dict[str, int] | None:
    """n_layer, n_head and n_embd of a model entry, where the config alone says them: a random stand-in's or
    an organism's, a released model's on the Hub, a local directory's config.json; None otherwise (another
    Hub model, a local model of a family circuit-reuse does not know)."""
    fields, family_name = _model_fields(entry)
    if fields is None or family_name not in FAMILIES:
        return None
    shape = dict(zip(SHAPE_KEYS, (fields.get(key) for key in FAMILIES[family_name].shape_fields), strict=True))
    return shape if all(type(value) is int for value in shape.values()) else None


def _model_fields(entry: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The config fields a model entry determines, with its family's name."""
    if entry["source"] in ("random", "trained"):
        record = architectures()[entry["architecture"]]
        return {**record["config"], **entry["overrides"]}, record["family"]
    if entry["source"] == "hub":
        name = hub_architecture(entry["hub_id"])
        return (None, None) if name is None else (architectures()[name]["config"], architectures()[name]["family"])
    if entry.get("path") and (Path(entry["path"]).expanduser() / "config.json").is_file():
        fields = read_json(Path(entry["path"]).expanduser() / "config.json")
        return fields, fields.get("model_type")
    return None, None


def _override_problems(config: Mapping[str, Any]) -> list[str]:
    """A stand-in's or an organism's overrides must be fields its family lets a stand-in change; an organism
    is a GPT-2."""
    problems = []
    for name, entry in config["models"].items():
        if entry["source"] not in ("random", "trained"):
            continue
        family = family_named(architectures()[entry["architecture"]]["family"])
        if entry["source"] == "trained" and family.name != "gpt2":
            problems.append(
                f"models.{name}.architecture: {entry['architecture']!r} is a {family.name} model; organisms "
                "(source: trained) are GPT-2 sizes"
            )
        for key in entry["overrides"]:
            if key not in family.override_fields:
                problems.append(
                    f"models.{name}.overrides.{key}: not a field a {entry['architecture']} stand-in may change; "
                    f"allowed: {', '.join(family.override_fields)}"
                )
    return problems


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Every cross-key problem of a schema-valid config with its defaults filled in."""
    checkpoint_problems = _checkpoint_problems(config)
    # A checkpoint has its organism's shape, which that organism's own entry is checked for.
    shapes = {name: model_shape(entry) for name, entry in config["models"].items() if entry["source"] != "checkpoint"}
    checks = [*_override_problems(config), *_shape_problems(config, shapes), *checkpoint_problems]
    if not checkpoint_problems:
        for name, entry in config["models"].items():
            if entry["source"] == "checkpoint":
                shapes[name] = shapes[entry["of"]]
    return [
        *checks,
        *_intervention_head_problems(config, shapes),
        *_role_problems(config),
        *_training_problems(config),
    ]


def _checkpoint_problems(config: Mapping[str, Any]) -> list[str]:
    """A checkpoint must name an organism of this config and a step its training reaches."""
    models = config["models"]
    organisms = [name for name, entry in models.items() if entry["source"] == "trained"]
    problems = []
    for name, entry in models.items():
        if entry["source"] != "checkpoint":
            continue
        if entry["of"] not in organisms:
            problems.append(
                f"models.{name}.of: {entry['of']!r} is not an organism of this config (a model of source: trained); "
                f"organisms: {', '.join(organisms) or 'none'}"
            )
        elif entry["step"] >= models[entry["of"]]["training"]["steps"]:
            steps = models[entry["of"]]["training"]["steps"]
            problems.append(
                f"models.{name}.step: {entry['step']} is not below {entry['of']}'s {steps} training steps "
                f"(the organism itself is its last step)"
            )
    return problems


def _training_problems(config: Mapping[str, Any]) -> list[str]:
    """What each organism's recipe refuses beyond the schema (a batch that starves a task, a skeleton
    curriculum for tasks that declare none), named under the model's key."""
    from circuit_reuse.training import TrainingError, TrainingRecipe

    problems = []
    for name, entry in config["models"].items():
        if entry["source"] != "trained":
            continue
        try:
            TrainingRecipe.from_config(entry["training"])
        except TrainingError as error:
            problems.append(f"models.{name}.{error}")
    return problems


def path_problems(config: Mapping[str, Any]) -> list[str]:
    """Directories the config names that do not hold what the workflow will read from them."""
    problems = []
    try:
        tokenizer = resolve_tokenizer_dir(config["tokenizer"])
    except ModelCacheError as error:
        where = "tokenizer" if config["tokenizer"] else f"${TOKENIZER_ENV} (tokenizer: null)"
        problems.append(f"{where}: {error}")
        tokenizer = None
    else:
        built = [name for name, entry in config["models"].items() if entry["source"] in BUILT_SOURCES]
        if tokenizer is None and built:
            problems.append(
                f"tokenizer: random stand-ins and organisms ({', '.join(built)}) come without a tokenizer; set "
                f"`tokenizer:` or ${TOKENIZER_ENV} to a directory holding the GPT-2 tokenizer files"
            )
    for name, entry in config["models"].items():
        if entry["source"] != "local":
            continue
        source = Path(entry["path"]).expanduser()
        if not source.is_dir():
            problems.append(f"models.{name}.path: {os.fspath(source)!r} is not a directory")
        elif not (source / "config.json").is_file():
            problems.append(
                f"models.{name}.path: {os.fspath(source)!r} holds no config.json (not a Hugging Face model)"
            )
    return problems


def _shape_problems(config: Mapping[str, Any], shapes: Mapping[str, dict[str, int] | None]) -> list[str]:
    problems = []
    for name, shape in shapes.items():
        if shape is None:
            continue
        entry = config["models"][name]
        built_here = entry["source"] in ("random", "trained")
        where = f"models.{name}.overrides" if built_here else f"models.{name}"
        family = FAMILIES[_model_fields(entry)[1]]
        _, heads, width = family.shape_fields
        for key, field in zip(SHAPE_KEYS, family.shape_fields, strict=True):
            if shape[key] < 1:
                problems.append(f"{where}.{field}: {shape[key]} must be at least 1")
        if shape["n_head"] >= 1 and shape["n_embd"] % shape["n_head"]:
            problems.append(
                f"{where}.{heads}: {shape['n_head']} heads do not divide {width} = {shape['n_embd']} "
                f"(each head gets {width} / {heads} dimensions)"
            )
        groups = _model_fields(entry)[0].get("num_key_value_heads")
        if type(groups) is int and (groups < 1 or shape["n_head"] % groups):
            problems.append(
                f"{where}.num_key_value_heads: {groups} key/value groups do not divide {heads} = {shape['n_head']}"
            )
    return problems


def _intervention_head_problems(config: Mapping[str, Any], shapes: Mapping[str, dict[str, int] | None]) -> list[str]:
    problems = []
    for model, sets in config["intervention"]["heads"].items():
        shape = shapes.get(model)
        if shape is None:
            continue  # an unknown model is the intervention rules' own error; an unknown shape, the job's
        for set_name, heads in sets.items():
            if heads == "auto":
                continue
            for i, (layer, head) in enumerate(heads):
                if layer >= shape["n_layer"] or head >= shape["n_head"]:
                    problems.append(
                        f"intervention.heads.{model}.{set_name}[{i}]: head {layer}.{head} is outside {model} "
                        f"({shape['n_layer']} layers x {shape['n_head']} heads, counted from 0)"
                    )
    return problems


def _role_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    stages = config["discovery"]["stages"]
    for task in config["tasks"]:
        roles = get_task(task).roles
        for i, stage in enumerate(stages.get(task, [])):
            if stage["position"] not in roles:
                problems.append(
                    f"discovery.stages.{task}[{i}].position: {stage['position']!r} is not a role of {task}; "
                    f"roles: {', '.join(roles)}"
                )
    task, _ = intervention_plan(config["tasks"])
    if task is None:
        return problems  # no task of the config is one the intervention runs on
    roles, spans = get_task(task).roles, get_task(task).spans
    section = config["intervention"]
    named = [("query_role", section["query_role"]), ("answer_role", section["answer_role"])]
    named += [(f"target_roles[{i}]", role) for i, role in enumerate(section["target_roles"])]
    for key, role in named:
        if role not in roles:
            problems.append(f"intervention.{key}: {role!r} is not a role of {task}; roles: {', '.join(roles)}")
    if section["block_span"] not in spans:
        problems.append(
            f"intervention.block_span: {section['block_span']!r} is not a span of {task}; spans: {', '.join(spans)}"
        )
    stage_names = [stage["name"] for stage in stages.get(task, [])]
    if section["mover_stage"] not in stage_names:
        problems.append(
            f"intervention.mover_stage: {section['mover_stage']!r} is not a discovery stage of {task}; "
            f"stages: {', '.join(stage_names)}"
        )
    return problems
