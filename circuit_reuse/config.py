"""Loading and validating the workflow config against `workflow/schemas/config.schema.yaml`.

Validation fills in the schema's defaults and turns every violation into one line that names the key and
what is allowed there, so a bad config fails before any job runs. A key given twice in a YAML file is an
error too (YAML's own rule, which PyYAML does not enforce: there the last value silently wins). The checks
across keys that the schema cannot express live in `circuit_reuse.config_checks`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from circuit_reuse.config_checks import config_problems, source_key_problems, source_keys

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The config breaks the schema; the message lists every problem, one per line."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config schema; its `tasks` section, each task's `discovery.stages` entry and the tasks an organism
    may train on come from the task registry."""
    from circuit_reuse.tasks import registered_tasks

    schema = yaml.safe_load(Path(path).read_text())
    tasks = registered_tasks()
    schema["properties"]["tasks"]["properties"] = {name: task.config_schema() for name, task in tasks.items()}
    stage_list = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/stage"}}
    schema["properties"]["discovery"]["properties"]["stages"]["properties"] = {name: stage_list for name in tasks}
    schema["$defs"]["training"]["properties"]["tasks"]["propertyNames"] = {"enum": list(tasks)}
    return schema


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that holds the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with `<<` may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(
                    f"duplicate key {key!r} on line {line} (first given on line {first_line[key]}); "
                    "YAML allows each key once per mapping: merge the two entries"
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML config file, without validating it; a duplicate key is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except ConfigError as error:
        raise ConfigError(f"invalid config:\n  {path}: {error}") from None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    return validate_config(read_config_file(path))


# Mappings whose order means something: the first task is `task_a` of the overlap; models, tasks and the
# intervention's conditions are run, tabulated and plotted in config order.
ORDERED_MAPPINGS = {("models",), ("tasks",), ("intervention", "conditions")}


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return a copy of `config` with defaults filled in and keys in canonical order, or raise ConfigError
    listing every problem.

    Keys are sorted everywhere except in ORDERED_MAPPINGS, so that a config
    whose keys were merely reordered (by hand, or by a YAML writer) gives rules the same parameters and
    reruns nothing.
    """
    schema = schema or load_schema()
    filled = copy.deepcopy(dict(config))
    _fill_defaults(filled, schema, schema)
    _drop_other_sources_defaults(filled, schema)
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: [str(p) for p in e.absolute_path])
    lines = [_describe(error) for error in errors] + source_key_problems(config, schema)
    if not lines:  # the checks across keys assume every key has the type the schema gives it
        _fill_task_stages(filled)
        lines = config_problems(filled)
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(dict.fromkeys(lines)))
    return _canonical_order(filled)


def _fill_task_stages(config: dict[str, Any]) -> None:
    """Give every configured task without `discovery.stages` its registered default; refuse stages of tasks not run."""
    from circuit_reuse.tasks import get_task

    stages = config.setdefault("discovery", {}).setdefault("stages", {})
    extra = sorted(set(stages) - set(config["tasks"]))
    if extra:
        raise ConfigError(
            f"invalid config:\n  discovery.stages: stages for task(s) not under tasks: {', '.join(extra)}"
        )
    for task in config["tasks"]:
        stages.setdefault(task, [dict(stage) for stage in get_task(task).stages])


def _canonical_order(value: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(value, dict):
        keys = list(value) if path in ORDERED_MAPPINGS else sorted(value)
        return {key: _canonical_order(value[key], (*path, key)) for key in keys}
    if isinstance(value, list):
        return [_canonical_order(item, (*path, "[]")) for item in value]
    return value


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local $ref; keywords beside it (a default, a description) win over the target's."""
    ref = node.get("$ref")
    if ref and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill_defaults(instance: Any, node: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    node = _resolve(node, root)
    if not isinstance(instance, dict):
        return
    for key, sub in node.get("properties", {}).items():
        # A default may sit beside a $ref (the property's own default) or in the referenced definition.
        for holder in (sub, _resolve(sub, root)):
            if key not in instance and "default" in holder:
                instance[key] = copy.deepcopy(holder["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
        if isinstance(instance.get(key), list) and isinstance(_resolve(sub, root).get("items"), dict):
            for item in instance[key]:
                _fill_defaults(item, _resolve(sub, root)["items"], root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in node.get("properties", {}):
                _fill_defaults(value, extra, root)


def _drop_other_sources_defaults(config: dict[str, Any], schema: Mapping[str, Any]) -> None:
    """Remove the defaults filled in for keys of other sources (a random model's `revision`), so that the
    validated config validates again when written out (scripts/run_replicates.py does)."""
    applies = source_keys(schema)
    models = config.get("models")
    for entry in models.values() if isinstance(models, dict) else ():
        if isinstance(entry, dict):
            for key in [k for k in entry if k in applies and entry.get("source") not in applies[k]]:
                del entry[key]


def _describe(error: ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; allowed values: {', '.join(map(str, schema['enum']))}"
    if error.validator == "propertyNames":
        return f"{where}: key {error.instance!r} is not allowed here ({error.message})"
    if error.validator == "required":
        return f"{where}: {error.message}"
    hint = f" ({schema['description']})" if "description" in schema else ""
    return f"{where}: {error.message}{hint}"
