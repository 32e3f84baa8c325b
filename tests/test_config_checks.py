"""Config mistakes that the config alone reveals, each stopped before any job with the key named."""

from pathlib import Path

import pytest
import yaml

from circuit_reuse.config import ConfigError, load_config, read_config_file, validate_config
from circuit_reuse.config_checks import model_shape, path_problems

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "workflow" / "configs" / "smoke.yaml"


@pytest.fixture
def smoke_config():
    return yaml.safe_load(SMOKE.read_text())


@pytest.fixture
def paper_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _error(config) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    return str(raised.value)


def test_a_repeated_key_names_the_key_and_both_lines(tmp_path):
    text = SMOKE.read_text() + "\nmodels:\n  big:\n    source: random\n"
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    first = 1 + SMOKE.read_text().splitlines().index("models:")
    second = 1 + text.splitlines().index("models:", first)
    with pytest.raises(ConfigError) as raised:
        read_config_file(path)
    message = str(raised.value)
    assert f"duplicate key 'models' on line {second} (first given on line {first})" in message
    assert str(path) in message
    with pytest.raises(ConfigError, match="duplicate key 'models'"):
        load_config(path)


def test_a_repeated_nested_key_is_caught_too(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text("models:\n  a:\n    source: random\n    seed: 1\n    seed: 2\ntasks: {ioi: {}}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'seed' on line 5 \(first given on line 4\)"):
        read_config_file(path)


def test_a_merge_key_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert read_config_file(path)["other"] == {"x": 1, "y": 3}


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("path", "/models/mine", "models.tiny-a.path: does not apply to source 'random' (only to local)"),
        ("revision", "main", "models.tiny-a.revision: does not apply to source 'random' (only to hub)"),
        ("hub_id", "gpt2", "models.tiny-a.hub_id: does not apply to source 'random' (only to hub)"),
    ],
)
def test_a_key_of_another_source_is_refused(smoke_config, key, value, message):
    smoke_config["models"]["tiny-a"][key] = value
    assert message in _error(smoke_config)


def test_a_hub_model_takes_no_seed(paper_config):
    paper_config["models"]["gpt2-small"]["seed"] = 3
    assert "models.gpt2-small.seed: does not apply to source 'hub' (only to random, trained)" in _error(paper_config)


def test_defaults_of_other_sources_are_not_filled_in(smoke_config, paper_config):
    assert "revision" not in validate_config(smoke_config)["models"]["tiny-a"]
    assert "seed" not in validate_config(paper_config)["models"]["gpt2-small"]
    # so a validated config, written out, validates again
    assert validate_config(validate_config(smoke_config)) == validate_config(smoke_config)


def test_heads_that_do_not_divide_the_width(smoke_config):
    smoke_config["models"]["tiny-a"]["overrides"]["n_head"] = 3
    message = _error(smoke_config)
    assert "models.tiny-a.overrides.n_head: 3 heads do not divide n_embd = 64" in message


def test_an_architecture_default_is_checked_with_the_overrides(smoke_config):
    # gpt2-medium has 16 heads of 64 dimensions; a width of 72 alone cannot be split into 16 heads
    smoke_config["models"]["tiny-b"]["overrides"] = {"n_layer": 2, "n_embd": 72}
    assert "models.tiny-b.overrides.n_head: 16 heads do not divide n_embd = 72" in _error(smoke_config)


def test_model_shapes_from_the_config_alone(tmp_path):
    assert model_shape({"source": "hub", "hub_id": "openai-community/gpt2-medium"}) == {
        "n_layer": 24,
        "n_head": 16,
        "n_embd": 1024,
    }
    assert model_shape({"source": "hub", "hub_id": "someone/other-model"}) is None
    assert model_shape({"source": "random", "architecture": "gpt2", "overrides": {"n_layer": 2}}) == {
        "n_layer": 2,
        "n_head": 12,
        "n_embd": 768,
    }
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 3, "n_head": 2, "n_embd": 8}')
    assert model_shape({"source": "local", "path": str(tmp_path)}) == {"n_layer": 3, "n_head": 2, "n_embd": 8}
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(
        '{"model_type": "llama", "num_hidden_layers": 5, "num_attention_heads": 3, "hidden_size": 12}'
    )
    assert model_shape({"source": "local", "path": str(llama)}) == {"n_layer": 5, "n_head": 3, "n_embd": 12}
    assert model_shape({"source": "local", "path": str(tmp_path / "absent")}) is None


def test_intervention_heads_outside_a_released_model(paper_config):
    paper_config["intervention"]["heads"]["gpt2-medium"]["inhibition"] = [[12, 3], [24, 0], [13, 16]]
    message = _error(paper_config)
    outside = "is outside gpt2-medium (24 layers x 16 heads, counted from 0)"
    assert f"intervention.heads.gpt2-medium.inhibition[1]: head 24.0 {outside}" in message
    assert "intervention.heads.gpt2-medium.inhibition[2]: head 13.16 is outside" in message
    assert "inhibition[0]" not in message


def test_intervention_heads_outside_a_random_model(smoke_config):
    smoke_config["intervention"]["heads"] = {"tiny-a": {"negative_mover": [[3, 4]]}}
    assert "intervention.heads.tiny-a.negative_mover[0]: head 3.4 is outside tiny-a (4 layers x 4 heads" in _error(
        smoke_config
    )


def test_a_stage_position_that_is_no_role_of_its_task(paper_config):
    paper_config["discovery"] = {
        "stages": {
            "ioi": [
                {"name": "movers", "receivers": "logits"},
                {"name": "inhibition", "receivers": {"stage": "movers", "components": ["q"]}, "position": "S3"},
            ],
            "colored_objects": [{"name": "movers", "receivers": "logits"}],
        }
    }
    message = _error(paper_config)
    assert "discovery.stages.ioi[1].position: 'S3' is not a role of ioi; roles: IO, S1, S1+1, S2, END" in message


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("query_role", "STOP", "intervention.query_role: 'STOP' is not a role of colored_objects"),
        ("answer_role", "IO", "intervention.answer_role: 'IO' is not a role of colored_objects"),
        ("target_roles", ["wrong_color_0", "wrong_colour_1"], "intervention.target_roles[1]: 'wrong_colour_1'"),
        ("block_span", "answer", "intervention.block_span: 'answer' is not a span of colored_objects; spans: question"),
        ("mover_stage", "gatherers", "intervention.mover_stage: 'gatherers' is not a discovery stage of"),
    ],
)
def test_intervention_roles_are_the_tasks(paper_config, key, value, message):
    paper_config["intervention"][key] = value
    assert message in _error(paper_config)


def test_intervention_roles_are_not_checked_when_it_does_not_run(paper_config):
    del paper_config["tasks"]["colored_objects"]
    paper_config["intervention"]["query_role"] = "STOP"
    paper_config["discovery"] = {"stages": {"ioi": [{"name": "movers", "receivers": "logits"}]}}
    validate_config(paper_config)


def test_every_problem_is_listed_at_once(smoke_config):
    smoke_config["models"]["tiny-a"]["overrides"]["n_head"] = 3
    smoke_config["intervention"]["answer_role"] = "IO"
    message = _error(smoke_config)
    assert "models.tiny-a.overrides.n_head" in message and "intervention.answer_role" in message


def test_paths(smoke_config, tmp_path, monkeypatch, tokenizer_dir):
    monkeypatch.delenv("CIRCUIT_REUSE_TOKENIZER", raising=False)
    config = validate_config(smoke_config)
    assert path_problems(config) == [
        "tokenizer: random stand-ins and organisms (tiny-a, tiny-b, tiny-llama, tiny-neox) come without a tokenizer; "
        "set `tokenizer:` or "
        "$CIRCUIT_REUSE_TOKENIZER to a directory holding the GPT-2 tokenizer files"
    ]
    config["tokenizer"] = str(tmp_path / "nowhere")
    [problem] = path_problems(config)
    assert problem.startswith(f"tokenizer: tokenizer directory {tmp_path / 'nowhere'} holds no GPT-2 tokenizer files")
    config["tokenizer"] = None
    monkeypatch.setenv("CIRCUIT_REUSE_TOKENIZER", str(tmp_path))
    [problem] = path_problems(config)
    assert problem.startswith("$CIRCUIT_REUSE_TOKENIZER (tokenizer: null): tokenizer directory")
    monkeypatch.setenv("CIRCUIT_REUSE_TOKENIZER", str(tokenizer_dir))
    assert path_problems(config) == []
    config["models"]["mine"] = {"source": "local", "path": str(tmp_path / "absent")}
    config["models"]["empty"] = {"source": "local", "path": str(tmp_path)}
    assert path_problems(config) == [
        f"models.mine.path: {str(tmp_path / 'absent')!r} is not a directory",
        f"models.empty.path: {str(tmp_path)!r} holds no config.json (not a Hugging Face model)",
    ]
