import copy
from pathlib import Path

import pytest
import yaml

from circuit_reuse.config import ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [REPO / "config.yaml", *sorted((REPO / "workflow" / "configs").glob("*.yaml"))]


@pytest.fixture
def paper_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config["models"] and config["tasks"]


def test_paper_config_runs_gpt2_small_and_medium_on_the_paper_tasks_and_the_controls():
    config = load_config(REPO / "config.yaml")
    assert {m["hub_id"] for m in config["models"].values()} == {"gpt2", "gpt2-medium"}
    assert list(config["tasks"]) == ["ioi", "colored_objects", "greater_than", "world_capitals"]
    assert config["tasks"]["colored_objects"]["source"] == "paper"


def test_paper_shapes_config_is_the_paper_config_with_random_stand_ins_of_its_models(paper_config):
    shapes = yaml.safe_load((REPO / "workflow" / "configs" / "paper_shapes.yaml").read_text())
    assert {key: value for key, value in shapes.items() if key != "models"} == {
        key: value for key, value in paper_config.items() if key != "models"
    }
    assert list(shapes["models"]) == list(paper_config["models"])
    for name, model in shapes["models"].items():
        assert model["source"] == "random" and model["architecture"] == paper_config["models"][name]["hub_id"]


def test_defaults_are_filled_in(paper_config):
    del paper_config["device"]
    del paper_config["models"]["gpt2-small"]["revision"]
    config = validate_config(paper_config)
    assert config["device"] == "auto"
    assert config["models"]["gpt2-small"]["revision"] == "main"
    assert paper_config.get("device") is None, "the caller's dict is left unchanged"


def _reversed_keys(value):
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    return value


def test_reordered_keys_give_the_same_config_but_models_and_tasks_keep_their_order(paper_config):
    reordered = _reversed_keys(paper_config)
    original, shuffled = validate_config(paper_config), validate_config(reordered)
    assert list(original["tasks"]) == ["ioi", "colored_objects", "greater_than", "world_capitals"]
    assert list(shuffled["tasks"]) == ["world_capitals", "greater_than", "colored_objects", "ioi"]
    assert list(shuffled["models"]) == list(reversed(list(original["models"])))
    # Inside each model and task, and everywhere else, key order no longer depends on the file.
    assert repr(shuffled["models"]["gpt2-small"]) == repr(original["models"]["gpt2-small"])
    assert repr(shuffled["discovery"]) == repr(original["discovery"])
    assert list(shuffled) == list(original) == sorted(original)
    # The intervention's conditions run and are tabulated in config order.
    assert list(original["intervention"]["conditions"]) == ["inhibition", "negative_mover", "both"]


def _error(config) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    return str(raised.value)


def test_unknown_key_names_the_key_and_the_allowed_ones(paper_config):
    paper_config["modles"] = {}
    message = _error(paper_config)
    assert "'modles'" in message and "allowed keys:" in message and "models" in message


def test_unknown_nested_key(paper_config):
    paper_config["models"]["gpt2-small"]["hubid"] = "gpt2"
    message = _error(paper_config)
    assert "models.gpt2-small" in message and "'hubid'" in message and "hub_id" in message


def test_wrong_enum_value_lists_the_allowed_values(paper_config):
    paper_config["models"]["gpt2-small"]["source"] = "internet"
    message = _error(paper_config)
    assert "models.gpt2-small.source" in message and "allowed values: hub, local, random" in message


def test_wrong_type_names_the_key(paper_config):
    paper_config["tasks"]["ioi"]["n_prompts"] = "many"
    message = _error(paper_config)
    assert "tasks.ioi.n_prompts" in message and "integer" in message


def test_out_of_range_value(paper_config):
    paper_config["tasks"]["ioi"]["n_prompts"] = 0
    assert "tasks.ioi.n_prompts" in _error(paper_config)


def test_bad_device_explains_the_choices(paper_config):
    paper_config["device"] = "gpu"
    message = _error(paper_config)
    assert "device" in message and "auto" in message and "cuda:N" in message


def test_hub_model_without_hub_id(paper_config):
    del paper_config["models"]["gpt2-small"]["hub_id"]
    assert "'hub_id' is a required property" in _error(paper_config)


def test_every_problem_is_reported_at_once(paper_config):
    bad = copy.deepcopy(paper_config)
    bad["device"] = "tpu"
    bad["tasks"]["colored_objects"]["seed"] = -1
    message = _error(bad)
    assert "device" in message and "tasks.colored_objects.seed" in message


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")


def test_discovery_defaults_are_the_papers(paper_config):
    config = validate_config(paper_config)
    assert config["discovery"]["selection"] == {"top_percent": 2.0}
    assert [s["name"] for s in config["discovery"]["stages"]["ioi"]] == [
        "movers",
        "inhibition",
        "induction",
        "previous_token",
    ]
    assert config["discovery"]["stages"]["colored_objects"][1]["receivers"] == {"stage": "movers", "components": ["q"]}
    # The authors' path patching: their loop's senders, the mean of the scores of batches of 25 prompts.
    assert (config["discovery"]["senders"], config["discovery"]["averaging"]) == ("authors", "batch_mean")
    assert config["discovery"]["averaging_batch_size"] == 25
    without_discovery = {key: value for key, value in paper_config.items() if key != "discovery"}
    assert validate_config(without_discovery)["discovery"] == config["discovery"], "the schema's defaults agree"


def test_sender_set_and_averaging_are_checked(paper_config):
    paper_config["discovery"] = {"senders": "all", "averaging": "median", "averaging_batch_size": 0}
    message = _error(paper_config)
    for key in ("discovery.senders", "discovery.averaging", "discovery.averaging_batch_size"):
        assert key in message
    paper_config["discovery"] = {"stages": {"ioi": [{"name": "movers", "receivers": "logits", "senders": "all"}]}}
    assert "discovery.stages.ioi.0.senders" in _error(paper_config)


def test_selection_takes_exactly_one_rule(paper_config):
    paper_config["discovery"] = {"selection": {"top_percent": 2.0, "threshold": 0.1}}
    assert "discovery.selection" in _error(paper_config)
    paper_config["discovery"] = {"selection": {"top_percent": 0}}
    assert "discovery.selection" in _error(paper_config)


def test_stage_components_are_checked(paper_config):
    paper_config["discovery"] = {
        "stages": {"ioi": [{"name": "movers", "receivers": {"stage": "x", "components": ["o"]}}]}
    }
    assert "discovery.stages.ioi.0.receivers" in _error(paper_config)


def test_discovery_method_is_exact_by_default_and_checked(paper_config):
    config = validate_config(paper_config)
    assert (config["discovery"]["method"], config["discovery"]["ig_steps"]) == ("exact", 5)
    assert config["attribution"]["methods"] == ["exact", "eap", "eap_ig"]
    paper_config["discovery"] = {"method": "acdc", "ig_steps": 0}
    message = _error(paper_config)
    assert "discovery.method" in message and "eap_ig" in message
    assert "discovery.ig_steps" in message
    paper_config["discovery"] = {
        "stages": {"ioi": [{"name": "movers", "receivers": "logits", "method": "eap_ig", "ig_steps": 20}]}
    }
    assert validate_config(paper_config)["discovery"]["stages"]["ioi"][0]["method"] == "eap_ig"
    paper_config["discovery"]["stages"]["ioi"][0]["method"] = "ig"
    assert "discovery.stages.ioi.0.method" in _error(paper_config)
    paper_config["discovery"] = {}
    paper_config["attribution"] = {"methods": ["exact", "sampling"]}
    assert "attribution.methods.1" in _error(paper_config)
