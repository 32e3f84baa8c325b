"""The config's task and evaluation sections: defaults are the paper's, and each bad value names its key."""

from pathlib import Path

import pytest
import yaml

from circuit_reuse.config import ConfigError, load_schema, validate_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def paper_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _error(config) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    return str(raised.value)


def test_task_and_evaluation_defaults(paper_config):
    paper_config["tasks"] = {"ioi": {}, "colored_objects": {}}
    config = validate_config(paper_config)
    ioi, co = config["tasks"]["ioi"], config["tasks"]["colored_objects"]
    assert (ioi["n_prompts"], ioi["seed"], co["n_prompts"], co["seed"]) == (1000, 0, 1000, 42)
    assert ioi["templates"] is ioi["names"] is co["colors"] is co["starts"] is None, "null: the built-in lists"
    assert ioi["drop_multi_token"] is co["drop_multi_token"] is False
    assert config["evaluation"] == {"batch_size": 32, "bootstrap_samples": 10000, "bootstrap_seed": 0, "ci_level": 0.95}


def test_every_task_and_evaluation_key_is_described():
    schema = load_schema()
    defs = schema["$defs"]
    tasks = schema["properties"]["tasks"]["properties"]
    assert set(tasks) >= {"ioi", "colored_objects"}, "the registry fills in every task's section"
    sections = [*tasks.values(), schema["properties"]["evaluation"]]
    for section in sections:
        for key, node in section["properties"].items():
            if "$ref" in node:
                node = defs[node["$ref"].rsplit("/", 1)[1]]
            assert node.get("description"), key


@pytest.mark.parametrize(
    "change, where, what",
    [
        (lambda c: c["tasks"]["ioi"].update(names=["Mary", "John"]), "tasks.ioi.names", "too short"),
        (lambda c: c["tasks"]["ioi"].update(names=["Mary", " John", "A", "B", "C"]), "tasks.ioi.names.1", "match"),
        (lambda c: c["tasks"]["ioi"].update(places="store"), "tasks.ioi.places", "not of type"),
        (lambda c: c["tasks"]["ioi"].update(objects=[]), "tasks.ioi.objects", "should be non-empty"),
        (lambda c: c["tasks"]["ioi"].update(templates=["When {N1} went to"]), "tasks.ioi.templates.0", "{S2}"),
        (lambda c: c["tasks"]["ioi"].update(drop_multi_token="yes"), "tasks.ioi.drop_multi_token", "boolean"),
        (lambda c: c["tasks"]["ioi"].update(colors=["red"]), "tasks.ioi", "'colors'"),
        (
            lambda c: c["tasks"]["colored_objects"].update(colors=["red"] * 6),
            "tasks.colored_objects.colors",
            "non-unique",
        ),
        (lambda c: c["tasks"]["colored_objects"].update(objects=["cup"]), "tasks.colored_objects.objects", "too short"),
        (lambda c: c["tasks"]["colored_objects"].update(surfaces=[""]), "tasks.colored_objects.surfaces.0", "match"),
        (lambda c: c["tasks"]["colored_objects"].update(starts=None, seed=-2), "tasks.colored_objects.seed", "minimum"),
        (lambda c: c["tasks"]["colored_objects"].update(templates=[]), "tasks.colored_objects", "'templates'"),
        (lambda c: c.update(evaluation={"batch_size": 0}), "evaluation.batch_size", "minimum"),
        (lambda c: c.update(evaluation={"bootstrap_samples": 10}), "evaluation.bootstrap_samples", "minimum"),
        (lambda c: c.update(evaluation={"bootstrap_seed": 1.5}), "evaluation.bootstrap_seed", "integer"),
        (lambda c: c.update(evaluation={"ci_level": 1}), "evaluation.ci_level", "maximum"),
        (lambda c: c.update(evaluation={"batchsize": 8}), "evaluation", "'batchsize'"),
    ],
)
def test_bad_value_names_its_key(paper_config, change, where, what):
    change(paper_config)
    message = _error(paper_config)
    assert f"{where}:" in message and what in message, message


def test_user_lists_are_accepted(paper_config):
    paper_config["tasks"]["ioi"].update(
        templates=["At dawn {N1} and {N2} left, so {S2} wrote to"], names=["A", "B", "C", "D", "E"], places=None
    )
    paper_config["tasks"]["colored_objects"].update(starts=["there are"], drop_multi_token=True)
    config = validate_config(paper_config)
    assert config["tasks"]["ioi"]["templates"] == ["At dawn {N1} and {N2} left, so {S2} wrote to"]
